"""Runners: what drives a job's lifecycle (`imagegw.core.lifecycle`), doing the I/O and keeping
the time. `inprocess` runs a job inside the request (with `pipeline` for its inputs and links),
`stepfunctions.steps` as a durable job's task functions; `gateway` builds every runner's
dependencies and `quota` settles a job's reservation."""
