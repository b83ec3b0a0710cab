"""JSON texts written as a `json.JSONEncoder`'s `encode` writes them, to the byte, without the
Python work it does at each call: `encode` goes through `iterencode`, which builds the C
encoder anew every time (~2 us a call for a small dict, or for a lone `None`, against ~0.8 us).
The gateway encodes a dozen small values a streamed answer (its SSE frames, its log lines and
its metric lines): `encoder_of` gives the C encoder's work alone."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

#: the C encoder's factory (absent where `_json` is: the pure-Python encoder is used then)
_make: Any = getattr(json.encoder, "c_make_encoder", None)


def encoder_of(reference: json.JSONEncoder, *, own_values: bool = False) -> Callable[[Any], str]:
    """`reference.encode`, to the byte. With `own_values` (values the gateway builds: dicts and
    lists of text and numbers, which never hold themselves) the C encoder is built once;
    otherwise once a call, with the fresh markers `encode` gives it (a value that holds itself
    is the same `ValueError`; the markers of a failed call are never met again). An indented
    text, or no C encoder, is `reference.encode` itself."""
    indent: object = reference.indent  # (None unless indented, whatever typeshed says)
    if _make is None or indent is not None:
        return reference.encode
    text = (
        json.encoder.encode_basestring_ascii
        if reference.ensure_ascii
        else json.encoder.encode_basestring
    )
    settings = (
        reference.default,
        text,
        None,  # indent
        reference.key_separator,
        reference.item_separator,
        reference.sort_keys,
        reference.skipkeys,
        reference.allow_nan,
    )
    if own_values or not reference.check_circular:
        once = _make(None, *settings)

        def encode_own(value: Any) -> str:
            if isinstance(value, str):  # as `encode` does: the text alone
                return text(value)
            return "".join(once(value, 0))

        return encode_own

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return text(value)
        return "".join(_make({}, *settings)(value, 0))

    return encode
