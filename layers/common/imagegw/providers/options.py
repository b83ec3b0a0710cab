"""Generation options from request fields: common names, aliases and checked values.

Chat clients (Cherry Studio's "custom parameters") put options as extra fields of the request
body. The gateway's common names are `negative_prompt`, `size`, `seed`, `steps`, `guidance`,
`loras` and `n`; aliases are accepted. Providers map the common names to their own and check
ranges with the helpers below, so every range error names the field and its range.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from imagegw.errors import InvalidRequestError

COMMON: frozenset[str] = frozenset(
    {"negative_prompt", "size", "seed", "steps", "guidance", "loras", "n"}
)
#: alias -> common name
ALIASES: dict[str, str] = {
    "image_size": "size",
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "cfg": "guidance",
}
MAX_N = 10
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*$")


def common_options(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The common options found in `fields` (under their names or an alias), as given.

    A field set to null counts as absent. A common name and an alias that disagree are a 400.
    """
    found: dict[str, tuple[str, Any]] = {}
    for name in sorted(fields, key=lambda k: k in ALIASES):  # common names first
        common = name if name in COMMON else ALIASES.get(name)
        value = fields[name]
        if common is None or value is None:
            continue
        if common in found and found[common][1] != value:
            raise InvalidRequestError(
                f"'{found[common][0]}' and '{name}' give different values for the same option; "
                "send one of them.",
                param=name,
            )
        found.setdefault(common, (name, value))
    return {common: value for common, (_, value) in found.items()}


def option_names(fields: Mapping[str, Any]) -> dict[str, str]:
    """Common name -> the name the request used for it (for errors that name the field sent)."""
    names: dict[str, str] = {}
    for name in sorted(fields, key=lambda k: k in ALIASES):  # common names first
        common = name if name in COMMON else ALIASES.get(name)
        if common is not None and fields[name] is not None:
            names.setdefault(common, name)
    return names


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_int(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; numeric strings are accepted (custom parameters are often text)."""
    number: Any = value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,30}\s*", value):
        number = int(value)
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if not (_is_number(number) and isinstance(number, int)) or not lo <= number <= hi:
        raise InvalidRequestError(
            f"'{name}' must be an integer from {lo} to {hi}; got {value!r}.", param=name
        )
    return number


def as_float(name: str, value: Any, lo: float, hi: float) -> float:
    """A number in [lo, hi]; numeric strings are accepted."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if not _is_number(number) or not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidRequestError(
            f"'{name}' must be a number from {lo:g} to {hi:g}; got {value!r}.", param=name
        )
    return float(number)


def as_text(name: str, value: Any, max_chars: int) -> str:
    """A string shorter than `max_chars` characters."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{name}' must be a string.", param=name)
    if len(value) >= max_chars:
        raise InvalidRequestError(
            f"'{name}' must be shorter than {max_chars} characters; it has {len(value)}.",
            param=name,
        )
    return value


def parse_size(name: str, value: Any, lo: int, hi: int) -> tuple[int, int]:
    """A `"WxH"` size with both sides in [lo, hi]."""
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequestError(
            f"'{name}' must be WIDTHxHEIGHT, for example 1024x1024; got {value!r}.", param=name
        )
    width, height = int(match.group(1)), int(match.group(2))
    if not (lo <= width <= hi and lo <= height <= hi):
        raise InvalidRequestError(
            f"'{name}' must be from {lo}x{lo} to {hi}x{hi} for this model; got {value!r}.",
            param=name,
        )
    return width, height


def image_count(value: Any) -> int:
    """The number of images asked for (`n`), 1 to MAX_N; absent means 1."""
    return 1 if value is None else as_int("n", value, 1, MAX_N)
