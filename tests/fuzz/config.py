"""Constants of the fuzz suite: the test key, the gateway's limits under fuzz, and the
hypothesis settings every fuzz test shares.

Hypothesis runs deterministically (`derandomize`, no example database) with no deadline, so CI
sees the same examples every run. `FUZZ_SCALE=N` multiplies every test's examples for a longer
local hunt; `FUZZ_SURVEY=path` records every broken property instead of failing, and writes
them (grouped by property, with a request that broke each) to `path` at the end.
"""

from __future__ import annotations

import os
import secrets
import string

from hypothesis import HealthCheck, settings

#: the client's key in every request: distinctive, so a leak of any 8 of its characters shows
FUZZ_KEY = "sk-FUZZ-" + "".join(
    secrets.choice(string.ascii_letters + string.digits) for _ in range(24)
)
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
SURVEY = os.environ.get("FUZZ_SURVEY", "")
#: small limits, so that "too large" costs little to reach
MAX_IMAGE_BYTES = 64 * 1024
MAX_BODY_BYTES = 512 * 1024
#: seconds a client may take to send its body (short: the stalled-body cases wait for it)
BODY_TIMEOUT = 1.0

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


def examples(count: int) -> int:
    """`count` examples, times FUZZ_SCALE."""
    return count * SCALE
