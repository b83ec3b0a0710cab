"""The job core: one lifecycle of an image job, written once, driven by every runner.

- `plan`: any front end's input -> a checked `GenerationRequest`; refusals that depend on the
  front end (how many input images a model takes) travel as data
  (`imagegw.providers.refusals.ImageCount`) and each front end words them its own way;
- `advance`: one provider answer (to a `start` or a `check`) -> the task's outcome, failures
  as typed errors;
- `lifecycle`: a job's whole life as data and decisions (the task book, failed polls and the
  deadline, the final error, the progress summary, the next poll, quota settlement);
- `deliver`: result images -> what the client gets (stored copies, links or bytes), a paid
  result never lost to a failing link or bucket;
- `schedule` and `estimates`: when to poll next, predicted from how long the model's tasks take.

Pure where it decides: the runners (`imagegw.runners.inprocess` in the request, the Step
Functions task functions `imagegw.runners.stepfunctions.steps`) do the I/O and keep the time;
neither re-implements a decision. The core imports no higher layer: what it needs of one (a
token's fail-over) is a Protocol here.
"""
