"""imagegw.infra.jsontext: the encoders of the SSE frames, log lines and metric lines write what
`json.JSONEncoder.encode` writes, to the byte, for every kind of value and every setting."""

from __future__ import annotations

import datetime as dt
import json
import math
from enum import StrEnum
from typing import Any

import pytest

from imagegw.infra.jsontext import encoder_of


class Colour(StrEnum):
    RED = "red"


class Ordered(dict[str, Any]):
    pass


VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    1.5,
    -0.0,
    1e300,
    0.1 + 0.2,
    math.inf,
    -math.inf,
    math.nan,
    "",
    'quote " backslash \\ newline \n tab \t nul \x00 del \x7f',
    "café ✓ 𝄞 \u2028 \ud800",
    Colour.RED,
    [],
    {},
    ("a", 1, None),
    [[[{"deep": [1, {"x": None}]}]]],
    {"b": 1, "a": [1.0, "two", None, False], "c": {"nested": {"": ""}}},
    {1: "int key", 2.5: "float key", False: "bool key", None: "none key"},
    Ordered(z=1, y=[Colour.RED]),
    {"reasoning_content": "queued at ModelScope · 0.3 s of about 3.0 s\n"},
]

SETTINGS: list[dict[str, Any]] = [
    {"separators": (",", ":")},
    {"separators": (",", ":"), "ensure_ascii": False},
    {"separators": (", ", ": "), "sort_keys": True},
    {"ensure_ascii": False, "check_circular": False},
    {"default": str, "ensure_ascii": False, "separators": (",", ":")},
]


@pytest.mark.parametrize("own_values", [False, True])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(sorted(s)))
def test_the_text_is_json_encoder_s_own(settings: dict[str, Any], own_values: bool) -> None:
    reference = json.JSONEncoder(**settings)
    encode = encoder_of(reference, own_values=own_values)
    for value in VALUES:
        assert outcome(encode, value) == outcome(reference.encode, value), value


def outcome(encode: Any, value: Any) -> str:
    """The text, or the error (sorting keys of mixed types fails in both)."""
    try:
        return str(encode(value))
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_values_it_cannot_write_fail_as_json_encoder_s_do() -> None:
    reference = json.JSONEncoder(separators=(",", ":"))
    encode = encoder_of(reference)
    strict = encoder_of(json.JSONEncoder(allow_nan=False))
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"when": dt.date(2026, 1, 1)})
    with pytest.raises(TypeError, match="keys must be str"):
        encode({("a", "b"): 1})
    with pytest.raises(ValueError, match="Out of range float"):
        strict([math.nan])
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular reference"):
        encode({"loop": loop})
    # a failure leaves nothing behind: the same containers are written after it
    shared = {"a": [1, 2]}
    with pytest.raises(TypeError):
        encode([shared, dt.date(2026, 1, 1)])
    assert encode([shared, shared]) == '[{"a":[1,2]},{"a":[1,2]}]'


def test_skipped_keys_and_a_default_as_json_encoder_s() -> None:
    reference = json.JSONEncoder(skipkeys=True, default=lambda value: f"<{type(value).__name__}>")
    encode = encoder_of(reference)
    value = {("tuple",): 1, "kept": dt.date(2026, 1, 1)}
    assert encode(value) == reference.encode(value) == '{"kept": "<date>"}'


def test_an_indented_text_is_json_encoder_s_own_encode() -> None:
    reference = json.JSONEncoder(indent=2)
    assert encoder_of(reference) == reference.encode
