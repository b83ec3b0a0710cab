"""A 1,000-item batch on the batch state machine (statemachine/image_batch.asl.json) under moto,
in this process: moto's Step Functions runs the Distributed Map and each item's job states,
the Lambda tasks dispatched to the real handlers (`functional.machine`), the provider the fake
ModelScope on loopback (tasks of 0.2 s, one poll each).

Figures: wall time; the most provider tasks running at once (cap: BATCH_CONCURRENCY = 8); per
item the Lambda invocations and state transitions counted from what ran (task calls by
function, the Choice states each implies, the Wait states recorded); and the cost per 1,000
batch images (Standard transitions, Lambda at the template's memory and measured durations,
S3 requests), beside the durable-job path's for one image (the same job states without
Prepare, Skip and Record).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from typing import Any, Final

import anyio
import pytest
from pydantic import SecretStr

from bench.common import Report, Table, fmt_s, quiet_gateway_logs

ITEMS: Final = int(os.environ.get("BENCH_BATCH_ITEMS", "1000"))
CONCURRENCY: Final = 8
#: us-east-1 list prices (2026): Standard transitions; Lambda arm64 per GB-s and per request;
#: S3 PUT/LIST and GET per request
TRANSITION: Final = 0.000025
LAMBDA_GB_S: Final = 0.0000133334
LAMBDA_REQUEST: Final = 0.0000002
S3_PUT: Final = 0.000005
S3_GET: Final = 0.0000004
#: the template's memory per task function (MB)
MEMORY: Final = {"job_submit": 256, "job_poll": 256, "job_store": 512, "batch_step": 512}


def run() -> Report:
    from fakes.aws import mocked_aws
    from fakes.modelscope import FakeModelScope
    from fakes.server import ServerThread
    from functional.machine import make_world
    from imagegw.core.estimates import MemoryEstimates
    from imagegw.frontends.batches import Batches
    from imagegw.frontends.local import BATCH_ASL_FILE, state_machine_definition
    from imagegw.infra.batchstore import BatchStore
    from imagegw.infra.executions import StepFunctionsRunner
    from imagegw.infra.sealer import KeySealer
    from imagegw.infra.storage import ImageStore
    from imagegw.runners.gateway import Gateway
    from imagegw.runners.stepfunctions import steps
    from imagegw.runners.stepfunctions.service import owner_of

    token = "ms-test-token"  # noqa: S105 (the fake provider's test token)
    with quiet_gateway_logs(), pytest.MonkeyPatch.context() as patch, mocked_aws() as aws:
        fake = FakeModelScope(task_duration=0.2, pending_seconds=0.05)
        with ServerThread(fake) as server:
            for name, value in {
                "BUCKET": aws.bucket,
                "AWS_REGION": aws.region,
                "MODELSCOPE_BASE_URL": f"{server.url}/v1",
                "JOB_KEY_ID": aws.key_id,
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": "ERROR",
            }.items():
                patch.setenv(name, value)
            fake.base_url = f"{server.url}/v1"  # type: ignore[attr-defined]
            world = make_world(aws, patch, fake)(job_poll_interval=0)
            patch.setattr(steps, "ESTIMATES", MemoryEstimates())
            # the Lambda tasks timed as they run (the cost's GB-s)
            durations: dict[str, list[float]] = {}
            invoke = world.lambdas.invoke

            def timed(function_arn: str, payload: Any) -> dict[str, Any]:
                began = time.perf_counter()
                try:
                    return invoke(function_arn, payload)
                finally:
                    folder = function_arn.rsplit("image-gateway-", 1)[-1]
                    durations.setdefault(folder, []).append(time.perf_counter() - began)

            patch.setattr(world.lambdas, "invoke", timed)
            machine = world.sfn.create_state_machine(
                name="image-batches-bench",
                definition=state_machine_definition(
                    {**world.arns, "BatchBucket": aws.bucket}, BATCH_ASL_FILE
                ),
                roleArn="arn:aws:iam::123456789012:role/image-batch",
                type="STANDARD",
            )
            settings = world.settings.model_copy(
                update={
                    "batch_state_machine_arn": machine["stateMachineArn"],
                    "batch_concurrency": CONCURRENCY,
                }
            )
            store = BatchStore(ImageStore(settings))
            batches = Batches(
                settings,
                store,
                runner=StepFunctionsRunner(machine["stateMachineArn"], aws.region),
                sealer=KeySealer(aws.key_id, aws.region),
            )
            owner = owner_of(token)
            lines = [
                json.dumps(
                    {
                        "custom_id": f"item-{i}",
                        "method": "POST",
                        "url": "/v1/images/generations",
                        "body": {"model": "Qwen/Qwen-Image", "prompt": f"a product shot {i}"},
                    }
                )
                for i in range(ITEMS)
            ]
            content = ("\n".join(lines) + "\n").encode()
            meta = {"id": "file-" + "0" * 24, "created_at": 0}
            anyio.run(store.save_file, owner, meta, content)
            began = time.perf_counter()

            async def create() -> dict[str, Any]:
                return await batches.create(
                    {"input_file_id": meta["id"], "endpoint": "/v1/images/generations"},
                    owner=owner,
                    provider=Gateway(settings).provider("modelscope"),
                    api_key=SecretStr(token),
                    key_ref=None,
                    base_url="https://gateway.example",
                )

            created = anyio.run(create)
            validated = time.perf_counter() - began
            while True:
                view = anyio.run(batches.get, owner, created["id"])
                if view["status"] in ("completed", "failed", "expired", "cancelled"):
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - began
            calls = Counter(arn.rsplit("image-gateway-", 1)[-1] for arn, _ in world.lambdas.calls)
            waits = len(world.waits)
            tasks = list(fake.tasks.values())
    peak = _peak([(task.created, task.finishes_at) for task in tasks])
    polls = calls["job_poll"]
    # each state entered is a transition: the task states run, the Choice states each implies
    # (Skip once an item; Check after Submit and after each Poll), the Wait states recorded;
    # Finalize once a batch
    entered = sum(calls.values()) + ITEMS + calls["job_submit"] + polls + waits
    item_transitions = entered / ITEMS
    # a durable job runs the same states but Prepare, Skip and Record, and ends in Done
    job_transitions = item_transitions - 3 + 1
    job_names = ("job_submit", "job_poll", "job_store")
    lambda_job = sum(_lambda_cost(name, durations[name]) for name in job_names) / ITEMS
    lambda_batch = sum(_lambda_cost(n, t) for n, t in durations.items()) / ITEMS
    # S3 requests per item: the result object put and read back by Finalize, and its line in
    # the output file (the image copy is the same on both paths: not counted)
    batch_cost = 1000 * (item_transitions * TRANSITION + lambda_batch + S3_PUT + S3_GET)
    job_cost = 1000 * (job_transitions * TRANSITION + lambda_job)
    rows = [
        ["items", f"{ITEMS:,}"],
        ["status", str(view["status"])],
        [
            "completed / failed",
            f"{view['request_counts']['completed']} / {view['request_counts']['failed']}",
        ],
        ["create (answers validating: the run checks the lines)", fmt_s(validated)],
        ["wall time to completed", fmt_s(wall)],
        ["most provider tasks at once", f"{peak} (cap {CONCURRENCY})"],
        ["Lambda invocations / item", f"{sum(calls.values()) / ITEMS:.2f}"],
        [
            "state transitions / item (durable job: same run)",
            f"{item_transitions:.2f} ({job_transitions:.2f})",
        ],
        [
            "median step time (ms)",
            ", ".join(
                f"{k} {statistics.median(v) * 1000:.0f}" for k, v in sorted(durations.items())
            ),
        ],
        ["cost / 1,000 batch images", f"${batch_cost:.3f}"],
        ["cost / 1,000 durable-job images", f"${job_cost:.3f}"],
    ]
    return Report(
        name="batches",
        title=f"a {ITEMS:,}-item batch on the Distributed Map (moto, fake provider)",
        tables=[Table("1,000-item batch", ["figure", "value"], rows)],
        notes=[
            "moto runs the map in one process: wall time is moto's and this machine's, not "
            "AWS's; the concurrency cap and the counts are the figures to read.",
            "Cost: Standard transitions $0.025/1,000, Lambda arm64 at the template's memory "
            "and the measured step times, S3 requests; the provider's own price is not in it.",
        ],
        data={
            "items": ITEMS,
            "wall_s": wall,
            "peak_tasks": peak,
            "calls": dict(calls),
            "waits": waits,
            "transitions_per_item": item_transitions,
            "cost_per_1000": batch_cost,
            "job_cost_per_1000": job_cost,
        },
        summary=[
            ("1,000-item batch: wall time (moto)", fmt_s(wall), ""),
            ("1,000-item batch: most tasks at once", str(peak), f"≤ {CONCURRENCY}"),
            ("batch: cost / 1,000 images", f"${batch_cost:.3f}", f"≤ ${job_cost:.3f} (jobs)"),
        ],
    )


def _lambda_cost(name: str, times: list[float]) -> float:
    """Lambda's price of these invocations of function `name` at the template's memory."""
    return len(times) * LAMBDA_REQUEST + sum(times) * MEMORY.get(name, 256) / 1024 * LAMBDA_GB_S


def _peak(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak
