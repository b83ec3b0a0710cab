"""`python -m bench.s3stand BUCKET`: the benchmarks' S3 stand-in in a process of its own.

moto's S3 server on loopback (`imagegw.frontends.local.start_s3_stand_in`) with one bucket (its
DynamoDB and Secrets Manager hold bench versus' access tables: `bench.common.access_stand_in`). It
prints the environment that points at it as one JSON line, then serves until its stdin closes.
A process of its own, as S3 is a service of its own: moto's work for each upload (a few ms of
CPU) then does not share the interpreter lock of the bench process, where the client reading
the streams and the fake provider run, which would slow the gateway's side only (the
reference stores nothing). Started by `bench.common.s3_stand_in`.
"""

from __future__ import annotations

import json
import signal
import sys

from imagegw.frontends.local import serialize_dynamodb_writes, start_s3_stand_in


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the bench stops us (stdin closes)
    server, env = start_s3_stand_in(sys.argv[1])
    # the access tables of bench versus' gateways (`bench.common.access_stand_in`) live here too
    serialize_dynamodb_writes()
    print(json.dumps(env), flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
