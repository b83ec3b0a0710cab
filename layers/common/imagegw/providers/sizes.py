"""The size parameters clients send -> one `size` the model takes.

Clients ask for a picture's size in different ways: the gateway's own `size` / `image_size`
(`"1024x768"`), LobeChat's `width` + `height`, an aspect ratio (`aspect_ratio` or
`aspectRatio`, `"16:9"`), and OpenAI's named sizes (`1024x1024`, `1536x1024`, `1024x1536`,
`1792x1024`, `1024x1792`, `256x256`, `512x512`, `auto`). `resolve` turns them into the one common
`size` option before the provider checks it (`imagegw.core.plan`):

| sent | becomes |
| --- | --- |
| `size` / `image_size` `"WxH"` (not an OpenAI name) | as sent; outside the model's range: 400 |
| `size` an OpenAI name | the same shape, fitted into the model's range (*) |
| `size: "auto"` | nothing: the model's default size |
| `width` + `height` | that shape, fitted into the model's range |
| `aspect_ratio` / `aspectRatio` `"W:H"` | the model's default area in that shape, fitted |
| `quality` | OpenAI's own models only; ignored (and named as such) elsewhere |

(*) OpenAI's own models get a name they list as sent, another their listed size nearest in
shape.

"Fitted" keeps the shape: a side above the model's largest is scaled down, a side below its
smallest scaled up, sides rounded to multiples of 16 (a size already in range is kept as is).
A model with a fixed list of sizes (OpenAI's own) gets the listed size of the nearest shape.
`size` wins over `width`/`height` (both given and different: 400), which win over an aspect
ratio. A model that takes no size (SiliconFlow's edit models) gets none, but a malformed
value is still a 400.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from imagegw.errors import InvalidRequestError
from imagegw.providers.options import as_int

#: OpenAI's named sizes (what the OpenAI SDK and most clients send by default)
OPENAI_SIZES: Final = frozenset(
    {"256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792"}
)
AUTO: Final = "auto"
#: the size fields `resolve` reads (and takes out of the fields)
SIZE_FIELDS: Final = frozenset({"width", "height", "aspect_ratio", "aspectRatio"})
#: sides are rounded to multiples of this when the gateway picks them
STEP: Final = 16
#: the largest side a client may name in `width`/`height` before fitting (a sanity bound)
MAX_SIDE: Final = 16_384
_RATIO: Final = re.compile(r"^\s*(\d{1,5}(?:\.\d{1,4})?)\s*[:/xX×]\s*(\d{1,5}(?:\.\d{1,4})?)\s*$")
_WXH: Final = re.compile(r"^\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*$")


@dataclass(frozen=True)
class SizeLimits:
    """The sizes a model takes: sides from `lo` to `hi`, or only the listed `choices`."""

    lo: int
    hi: int
    #: the size the model makes when none is asked for (its area is an aspect ratio's area)
    default: tuple[int, int] = (1024, 1024)
    #: a fixed list of sizes (OpenAI's own models); empty: any size in range
    choices: tuple[tuple[int, int], ...] = ()


def ratio_of(name: str, value: Any) -> float:
    """An aspect ratio `"W:H"` (also `"W/H"`, `"WxH"`) as W/H; a 400 when malformed."""
    match = _RATIO.match(value) if isinstance(value, str) else None
    width = float(match.group(1)) if match else 0.0
    height = float(match.group(2)) if match else 0.0
    if not (width > 0 and height > 0 and 1 / 16 <= width / height <= 16):
        raise InvalidRequestError(
            f"'{name}' must be an aspect ratio such as 16:9 (from 1:16 to 16:1); got {value!r}.",
            param=name,
        )
    return width / height


def _round(side: float) -> int:
    return max(STEP, round(side / STEP) * STEP)


def fit(width: float, height: float, limits: SizeLimits) -> tuple[int, int]:
    """The size the model takes nearest to `width` x `height`, keeping its shape."""
    if limits.choices:
        shape = math.log(width / height)
        return min(
            limits.choices,
            key=lambda c: (abs(math.log(c[0] / c[1]) - shape), abs(c[0] * c[1] - width * height)),
        )
    if (
        width == int(width)
        and height == int(height)
        and limits.lo <= min(width, height)
        and max(width, height) <= limits.hi
    ):
        return int(width), int(height)
    scale = min(1.0, limits.hi / max(width, height))
    scale = max(scale, limits.lo / min(width, height))
    sides = [_round(width * scale), _round(height * scale)]
    # rounding (or a shape too long for the range) may step outside: clamp each side
    return (
        min(limits.hi, max(limits.lo, sides[0])),
        min(limits.hi, max(limits.lo, sides[1])),
    )


def _named(fields: Mapping[str, Any]) -> str | None:
    """`size` when it is one of OpenAI's names (or `auto`), lower-cased."""
    size = fields.get("size")
    if isinstance(size, str) and (size.strip().lower() in OPENAI_SIZES | {AUTO}):
        return size.strip().lower()
    return None


def _sides(fields: Mapping[str, Any]) -> tuple[int, int] | None:
    width, height = fields.get("width"), fields.get("height")
    if width is None and height is None:
        return None
    if width is None or height is None:
        missing = "height" if height is None else "width"
        raise InvalidRequestError(
            f"Send both 'width' and 'height' (or 'size'); '{missing}' is missing.",
            param=missing,
        )
    return as_int("width", width, 1, MAX_SIDE), as_int("height", height, 1, MAX_SIDE)


def resolve(
    fields: Mapping[str, Any], limits: SizeLimits | None, *, passes_named: bool = False
) -> dict[str, Any]:
    """`fields` with the size parameters replaced by one common `size` (see the module's
    table). `limits` None: the model takes no size (none is set). `passes_named`: the model
    takes OpenAI's names itself (`size` as sent, `auto` included)."""
    out = {name: value for name, value in fields.items() if name not in SIZE_FIELDS}
    named = _named(fields)
    sides = _sides(fields)
    ratio_name = next(
        (n for n in ("aspect_ratio", "aspectRatio") if fields.get(n) is not None), None
    )
    ratio = None if ratio_name is None else ratio_of(ratio_name, fields[ratio_name])
    explicit = fields.get("size") is not None and named is None
    if explicit:
        match = _WXH.match(fields["size"]) if isinstance(fields["size"], str) else None
        if sides is not None and match and (int(match[1]), int(match[2])) != sides:
            raise InvalidRequestError(
                "'size' and 'width'/'height' give different sizes; send one of them.",
                param="size",
            )
        return out  # the provider checks it against the model's range
    if (
        passes_named
        and named is not None
        and sides is None
        and ratio is None
        and _listed(named, limits)
    ):
        return out  # the model takes this OpenAI name as it is
    out.pop("size", None)
    if limits is None:
        return out
    if sides is not None:
        out["size"] = _wxh(fit(*sides, limits))
    elif ratio is not None:
        area = limits.default[0] * limits.default[1]
        out["size"] = _wxh(fit(math.sqrt(area * ratio), math.sqrt(area / ratio), limits))
    elif named is not None and named != AUTO:
        out["size"] = _wxh(fit(*_pair(named), limits))
    return out


def _listed(named: str, limits: SizeLimits | None) -> bool:
    """Whether a model with `limits` takes the OpenAI name `named` as it is."""
    return limits is None or not limits.choices or named == AUTO or _pair(named) in limits.choices


def _pair(named: str) -> tuple[int, int]:
    width, _, height = named.partition("x")
    return int(width), int(height)


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
