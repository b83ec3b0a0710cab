"""Durable image jobs: `POST /v1/images/...` with `Prefer: respond-async` runs as a Step Functions
execution instead of on the client's connection (README "Async jobs").

- `schema`: the execution's input, the steps' payloads and output (pydantic; what crosses the
  state machine), and how a failure travels as a Step Functions error and cause;
- `keys`: the provider key sealed with KMS, bound to the job id (never in plain text in the
  execution's input, output or history);
- `runner`: `JobRunner`, the execution store the API reads and writes (Step Functions; on
  `make run` the same code against the embedded stand-in, see `imagegw.local`);
- `service`: `Jobs`, submit and status for the API function (ids, idempotency, rendering);
- `steps`: the work of the state machine's task functions (`functions/job_*`).
"""
