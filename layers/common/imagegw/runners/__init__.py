"""The runners layer: what drives a job through its life, doing the I/O and the waiting that
the core (`imagegw.core`) decides on.

- `gateway`: the one place the dependencies are built (settings, store, fetchers, the shared
  provider client, access, estimates) and handed to every runner;
- `generation`: the in-process runner (asyncio: start, poll, store, client-gone aware), and
  `pipeline`, its events as the front ends read them; `meter`: its quota settlement;
- `stepfunctions`: the durable-job runner (the state machine's steps, its data, the service
  the API submits and reads jobs through).
"""
