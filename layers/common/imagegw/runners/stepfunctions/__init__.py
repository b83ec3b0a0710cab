"""Durable jobs on AWS Step Functions: the runner of a job that outlives a request.

- `schema`: the data the state machine carries (the job's input, its tasks' progress, its
  output), typed;
- `steps`: the task functions (Submit, Poll, Store) the state machine calls, thin drivers of
  the core (`imagegw.core`);
- `machine`: `StateMachineService`, what `Jobs` and the batches' service share (the machine's ARN
  from the settings, its runner, the sealer);
- `service`: `Jobs`, how the API submits a job (quota held, inputs staged, provider key sealed)
  and reads one back (`JobView`); the front ends render it (`imagegw.frontends.job_answers`).
"""
