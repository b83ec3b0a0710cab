"""The owner commands (`imagegw.frontends.admin`): what `make tokens` shows of the pools."""

from __future__ import annotations

from typing import Any, cast

from imagegw.access.gatekeys import token_id
from imagegw.access.secret import Pools
from imagegw.access.table import AccessTable
from imagegw.frontends.admin import Target, list_tokens

NOON = 1_764_504_000  # 2025-11-30 12:00:00 UTC
# two ModelScope tokens that differ only in their middle and end, as real ones do
FIRST = "ms-0a1b2c3d-4e5f-6789-abcd-ef0123451111"
SECOND = "ms-0a1b2c3d-4e5f-6789-abcd-ef0123452222"
THIRD = "ms-0a1b2c3d-4e5f-6789-abcd-ef0123453333"


class _Table:
    def __init__(self, asides: dict[str, dict[str, float]]) -> None:
        self.found = asides

    def asides(self, provider: str) -> dict[str, float]:
        return dict(self.found.get(provider, {}))


class _Secrets:
    def __init__(self, pools: Pools) -> None:
        self.value = pools.dump()

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:
        return {"SecretString": self.value}


def test_tokens_are_told_apart_with_their_set_aside_state_and_never_shown_whole() -> None:
    # Given a pool of three tokens: one in use, one out of quota until 16:00 UTC, one refused
    pools = Pools("pepper", {"modelscope": (FIRST, SECOND, THIRD), "siliconflow": ()})
    asides = {"modelscope": {token_id(SECOND): NOON + 4 * 3600, token_id(THIRD): NOON + 10**9}}
    where = Target(cast("AccessTable", _Table(asides)), "secret", _Secrets(pools))

    # When the owner lists the pools
    lines = list_tokens(where, now=NOON)

    # Then each token has its own line, told apart by its last characters
    text = "\n".join(lines)
    assert lines[0] == "modelscope: 3 token(s)"
    first, second, third = lines[1:4]
    assert "ms-0...1111" in first and "in use" in first
    assert "ms-0...2222" in second and "set aside until 2025-11-30T16:00:00Z (in 4.0 h)" in second
    assert "ms-0...3333" in third and "until you change it" in third
    assert lines[4] == "siliconflow: 0 token(s): (none)"
    # and no token appears whole, nor any 8 of its characters in a row
    for token in (FIRST, SECOND, THIRD):
        assert not any(token[i : i + 8] in text for i in range(len(token) - 7))
