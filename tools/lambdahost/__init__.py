"""The `sam build` output run the way Lambda runs it, on this host, without Docker.

`make invoke` (`invoke.py`), `make events` (`samples.py`) and `make env-json` (`stack.py`) use it,
and so do the tests: `events` (Lambda HTTP events and the Web Adapter's requests, both ways),
`runtime` (Lambda's Python bootstrap as a host process) and `process` (its caller's side),
`adapter` (the Web Adapter's job), `build` (the built template, its environment, a clean
runtime Python), `standins` (`make run`'s AWS stand-ins). `events`, `runtime`, `process` and
`adapter` use the standard library only: the emulator level runs them on the Lambda runtime's
Python and in its own virtualenv.
"""
