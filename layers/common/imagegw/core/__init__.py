"""The job core: one lifecycle of an image job, written once, driven by the runners.

- `plan`: any front end's input -> a checked `GenerationRequest`; refusals that depend on the
  front end (how many input images a model takes) travel as data
  (`imagegw.providers.refusals.ImageCount`) and each front end words them its own way;
- `advance`: one provider answer (to a `start` or a `check`) -> the task's next state, failures
  as typed errors;
- `deliver`: result images -> what the client gets (stored copies, links or bytes), a paid
  result never lost to a failing link or bucket;
- `schedule` and `estimates`: when to poll next, predicted from how long the model's tasks take.

The in-process runner (`imagegw.runners.generation`) and the Step Functions task functions
(`imagegw.runners.stepfunctions.steps`) are thin drivers of these; neither re-implements them.
The core imports no higher layer: what it needs of one (a token's fail-over) is a Protocol here.
"""
