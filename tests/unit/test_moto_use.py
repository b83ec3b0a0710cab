"""Tests share one process with moto's S3 stand-in: a test that starts `moto.mock_aws()` itself
wipes every moto backend when it starts and stops, the stand-in's bucket included, so a later
test that stores an image fails with NoSuchBucket depending on the order tests run in. They use
`fakes.aws.mocked_aws` or `fakes.aws.mocked_account` instead (both keep the backends)."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ALLOWED = {TESTS / "fakes" / "aws.py"}
STARTS_MOTO = re.compile(r"\bmock_aws\(")


def test_no_test_starts_moto_on_its_own() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{number}"
        for path in sorted(TESTS.rglob("*.py"))
        if path not in ALLOWED and path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if STARTS_MOTO.search(line)
    ]
    assert offenders == [], f"use fakes.aws.mocked_account() instead of mock_aws(): {offenders}"
