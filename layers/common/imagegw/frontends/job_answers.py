"""A durable job as `GET /v1/jobs/{id}` answers it, in the shape of the front end that
submitted it (`JobView.api`).

A running or failed job is its summary (with `progress`, or the OpenAI-shaped `error`). A
finished Images API job carries the `data` the synchronous call gives: lasting links to the
copies in the bucket, or for `b64_json` the copies' bytes read back (a 503
`storage_unavailable`, retryable, while the bucket cannot be read). A finished chat job is the
`chat.completion` the synchronous chat call gives (markdown images linking the copies, a line
per failed task), under the job's id and time, with `status` as on every job. A job with a
`webhook_url` shows its delivery too (`webhook: {status, attempts, last_status_code}`).
"""

from __future__ import annotations

from typing import Any

from imagegw.core.deliver import deliver
from imagegw.frontends.schemas import Completion, images_response
from imagegw.frontends.streaming import markdown_of
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.spans import Around
from imagegw.runners.stepfunctions.schema import JobOutput
from imagegw.runners.stepfunctions.service import Jobs, JobView


async def render(
    jobs: Jobs, view: JobView, *, base_url: str, fetcher: Fetcher, around: Around | None = None
) -> dict[str, Any]:
    """The job resource: its summary, with `data` when it succeeded (as the synchronous
    Images API answers; `b64_json` payloads as `around`'s marks when given) or `error` when it
    failed; a chat job that succeeded is the `chat.completion` the synchronous chat call
    answers (`_completion`)."""
    if view.api == "chat" and view.output is not None:
        return await _completion(jobs, view, view.output, base_url=base_url, fetcher=fetcher)
    body = {**view.summary(), "model": view.model}
    if view.progress is not None:
        body["progress"] = view.progress
    if view.output is not None:
        images = await deliver(
            [ref.ref for ref in view.output.images[: view.n]],
            settings=jobs.settings,
            store=jobs.store,
            fetcher=fetcher,
            base_url=base_url,
            mode="data" if view.response_format == "b64_json" else "as_is",
        )
        body["data"] = images_response(images, view.response_format, view.created, around)["data"]
    if view.error is not None:
        body["error"] = view.error.get("error", view.error)
    if view.webhook is not None:  # a job with a `webhook_url`: its delivery
        body["webhook"] = view.webhook
    return body


async def _completion(
    jobs: Jobs, view: JobView, output: JobOutput, *, base_url: str, fetcher: Fetcher
) -> dict[str, Any]:
    """A chat job's answer: the synchronous call's `chat.completion` (markdown images linking
    the copies the job stored, a line per failed task, `finish_reason: "stop"`), under the
    job's id and time, with `status` as on every job."""
    links = await deliver(
        [ref.ref for ref in output.images[: view.n]],
        settings=jobs.settings,
        store=jobs.store,
        fetcher=fetcher,
        base_url=base_url,
        mode="as_is",
    )
    completion = Completion(view.model, completion_id=view.id, created=view.created)
    body = {**completion.message(markdown_of(links, output.failures)), "status": view.status}
    if view.webhook is not None:
        body["webhook"] = view.webhook
    return body
