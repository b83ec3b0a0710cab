"""A 1,000-item batch on the batch state machine (statemachine/image_batch.asl.json) under moto,
in this process: moto's Step Functions runs the Distributed Map and each item's job states,
the Lambda tasks dispatched to the real handlers (`functional.machine`), the provider the fake
ModelScope on loopback (tasks of 0.2 s, one poll each). Then, in the same run and measured
the same way, durable jobs of the same task on the job state machine.

Figures: wall time; the most provider tasks running at once (cap: BATCH_CONCURRENCY = 8); per
image, for the batch and for the durable job: the state transitions (each state entered, in
the executions and in the map's child workflows), the Lambda invocations and GB-s (the
template's memory times the measured step times), the S3 requests of the batch's own objects
(the image copies are the same on both paths); and the cost per 1,000 images of each.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import anyio
import pytest
from pydantic import SecretStr

from bench.common import Report, Table, fmt_s, quiet_gateway_logs

T = TypeVar("T")
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


#: sample of durable jobs of the same task, measured in the same run
JOBS: Final = min(ITEMS, int(os.environ.get("BENCH_BATCH_JOBS", "50")))
#: the batch's own S3 requests, by `BatchStore` method (S3 request class): each item's cancel
#: look, its marker while it submits, its result written and read back by Finalize
S3_CALLS: Final = {"_put": "PUT", "_get": "GET", "_delete": "DELETE", "_keys": "LIST"}


@dataclass
class Measured:
    """What one path ran, per image."""

    images: int
    transitions: int = 0
    durations: dict[str, list[float]] = field(default_factory=dict)
    s3: Counter[str] = field(default_factory=Counter)

    @property
    def invocations(self) -> float:
        return sum(len(times) for times in self.durations.values()) / self.images

    @property
    def gb_s(self) -> float:
        return (
            sum(sum(t) * MEMORY.get(name, 256) / 1024 for name, t in self.durations.items())
            / self.images
        )

    def cost(self) -> float:
        """Per 1,000 images: transitions, Lambda (GB-s and requests), S3 requests."""
        lambda_cost = self.gb_s * LAMBDA_GB_S + self.invocations * LAMBDA_REQUEST
        s3 = (self.s3["PUT"] + self.s3["LIST"]) * S3_PUT + self.s3["GET"] * S3_GET
        per_image = self.transitions / self.images * TRANSITION + lambda_cost
        return 1000 * (per_image + s3 / self.images)


def run() -> Report:
    from fakes.aws import mocked_aws
    from fakes.modelscope import FakeModelScope
    from fakes.server import ServerThread
    from functional.machine import entered_states, make_world
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
    batch = Measured(ITEMS)
    jobs = Measured(JOBS)
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
            entered = entered_states(patch)
            # the path being measured: its Lambda tasks timed as they run, its S3 requests
            measuring = [batch]
            invoke = world.lambdas.invoke

            def timed(function_arn: str, payload: Any) -> dict[str, Any]:
                began = time.perf_counter()
                step = IN_STEP.set(True)
                try:
                    return invoke(function_arn, payload)
                finally:
                    IN_STEP.reset(step)
                    folder = function_arn.rsplit("image-gateway-", 1)[-1]
                    times = measuring[0].durations.setdefault(folder, [])
                    times.append(time.perf_counter() - began)

            patch.setattr(world.lambdas, "invoke", timed)
            for method, kind in S3_CALLS.items():
                patch.setattr(BatchStore, method, _counted(getattr(BatchStore, method), kind))
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
            S3_COUNTS.clear()
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
            # the batch's states entered (its own Items and Finalize too) and its steps' S3
            # requests (not the status reads above: the API's, as a job's status reads are)
            batch.transitions = len(entered)
            batch.s3 = Counter(S3_COUNTS)
            tasks = list(fake.tasks.values())
            # Then durable jobs of the same task, measured the same way
            entered.clear()
            measuring[0] = jobs
            job_ids = [world.submit(prompt=f"a product shot {i}") for i in range(JOBS)]
            for job_id in job_ids:
                assert world.wait(job_id, timeout=600)["status"] == "SUCCEEDED"
            jobs.transitions = len(entered)
    peak = _peak([(task.created, task.finishes_at) for task in tasks])
    counts = view["request_counts"]
    s3_item = ", ".join(f"{kind} {n / ITEMS:.2f}" for kind, n in sorted(batch.s3.items()))
    rows = [
        ["items", f"{ITEMS:,}"],
        ["status", str(view["status"])],
        ["completed / failed", f"{counts['completed']} / {counts['failed']}"],
        ["create (answers validating: the run checks the lines)", fmt_s(validated)],
        ["wall time to completed", fmt_s(wall)],
        ["most provider tasks at once", f"{peak} (cap {CONCURRENCY})"],
        [
            "state transitions / image: batch (durable job)",
            f"{batch.transitions / ITEMS:.2f} ({jobs.transitions / JOBS:.2f})",
        ],
        [
            "Lambda invocations / image: batch (durable job)",
            f"{batch.invocations:.2f} ({jobs.invocations:.2f})",
        ],
        ["Lambda GB-s / image: batch (durable job)", f"{batch.gb_s:.3f} ({jobs.gb_s:.3f})"],
        ["batch S3 requests / image (its steps')", s3_item],
        [
            "median step time (ms)",
            ", ".join(
                f"{k} {statistics.median(v) * 1000:.0f}" for k, v in sorted(batch.durations.items())
            ),
        ],
        ["cost / 1,000 batch images", f"${batch.cost():.3f}"],
        [f"cost / 1,000 durable-job images ({JOBS} jobs)", f"${jobs.cost():.3f}"],
    ]
    return Report(
        name="batches",
        title=f"a {ITEMS:,}-item batch on the Distributed Map (moto, fake provider)",
        tables=[Table("1,000-item batch", ["figure", "value"], rows)],
        notes=[
            "moto runs the map in one process: wall time is moto's and this machine's, not "
            "AWS's; the concurrency cap and the counts are the figures to read.",
            "Cost: Standard transitions $0.025/1,000, Lambda arm64 at the template's memory "
            "and the measured step times, S3 requests of the batch's own objects; the image "
            "copies, KMS and the API function's requests are left out of both (a batch makes "
            "one API request; a job a submission and status reads per image); the provider's "
            "own price is not in it.",
        ],
        data={
            "items": ITEMS,
            "jobs": JOBS,
            "wall_s": wall,
            "peak_tasks": peak,
            "lambda_calls": {k: len(v) for k, v in batch.durations.items()},
            "transitions_per_item": batch.transitions / ITEMS,
            "transitions_per_job": jobs.transitions / JOBS,
            "gb_s_per_item": batch.gb_s,
            "gb_s_per_job": jobs.gb_s,
            "s3_per_item": {k: n / ITEMS for k, n in batch.s3.items()},
            "cost_per_1000": batch.cost(),
            "job_cost_per_1000": jobs.cost(),
        },
        summary=[
            ("1,000-item batch: wall time (moto)", fmt_s(wall), ""),
            ("1,000-item batch: most tasks at once", str(peak), f"≤ {CONCURRENCY}"),
            ("batch: cost / 1,000 images", f"${batch.cost():.3f}", f"≤ ${jobs.cost():.3f} (jobs)"),
        ],
    )


#: the batch steps' S3 requests by class, as `_counted` saw them
S3_COUNTS: Counter[str] = Counter()


#: whether a Lambda step runs in this context (its worker threads' too): the API's own S3
#: reads (status) are not counted
IN_STEP: ContextVar[bool] = ContextVar("IN_STEP", default=False)


def _counted(method: Callable[..., T], kind: str) -> Callable[..., T]:
    def counted(*args: Any) -> T:
        if IN_STEP.get():
            S3_COUNTS[kind] += 1
        return method(*args)

    return counted


def _peak(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak
