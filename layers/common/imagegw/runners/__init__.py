"""The runners layer: what drives a job through its life (`imagegw.core.lifecycle`), doing the
I/O and keeping the time that the core decides on.

- `gateway`: the one place the dependencies are built (settings, store, fetchers, the provider
  client, sealer, access, estimates, providers, the clock) and handed to every runner;
- `inprocess`: the in-process runner (asyncio: start, poll, client-gone aware), and `pipeline`,
  its inputs staged and its results delivered as the front ends read them;
- `quota`: a job's quota reservation settled, the one place every runner calls;
- `stepfunctions`: the durable-job runner (the state machine's steps, its data, the service
  the API submits and reads jobs through).
"""
