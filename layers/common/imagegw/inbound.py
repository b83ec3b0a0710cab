"""What a client may send: pure checks that whatever the gateway accepts can be forwarded
faithfully (re-encoded as UTF-8 JSON for a provider, stored in a job, put in a header).

Python accepts more than the wire can carry: `json.loads` turns `"\\ud800"` into a lone
surrogate (not text: encoding it as UTF-8 fails later, deep inside a provider call), `NaN`,
`Infinity` and `1e400` into floats no JSON encoder may write, 400-digit integers into ints that
`float()` cannot take, and 100,000 nested brackets into a RecursionError. Starlette decodes
headers as latin-1, so a non-ASCII header reaches the routes as text httpx cannot send.
`imagegw.web` runs every body and header the routes read through these checks, so the rest of
the gateway only ever sees values that survive the trip; each refusal is a 400 naming the
field (`param`) where one can be named.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from imagegw.errors import AuthenticationError, InvalidRequestError

#: deepest JSON nesting accepted (the body object is level 1). Chat bodies need ~6 levels,
#: tool schemas in a pass-through body rarely 20; the bound keeps every later walk cheap.
MAX_JSON_DEPTH: Final = 64
#: integers must fit 64 bits (signed or unsigned): what providers parse, and what float() takes
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
#: the client's key: printable ASCII without spaces, this many characters. At least 8 because
#: shorter keys cannot be redacted reliably (redaction hides any 8-character run of the key)
#: and no provider issues them; at most 1024: provider keys are 35-170 characters, JWT-style
#: tokens of self-hosted servers a few hundred, and anything longer is not a key.
MIN_KEY_CHARS: Final = 8
MAX_KEY_CHARS: Final = 1024

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
#: a header value the routes read: visible ASCII, spaces and tabs
_HEADER_TEXT: Final = re.compile(r"[\t\x20-\x7e]*")
_KEY: Final = re.compile(r"[\x21-\x7e]+")


def parse_json(raw: bytes, *, what: str = "The request body") -> Any:
    """`raw` as JSON (UTF-8, an optional BOM), checked by `check_value`. Raises a 400."""
    try:
        text = raw.decode("utf-8-sig")  # strict: no surrogates smuggled as CESU-8 bytes
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{what} is not valid UTF-8 (byte {exc.start}).", code="invalid_encoding"
        ) from None
    return parse_json_text(text, what=what)


def parse_json_text(text: str, *, what: str = "The request body") -> Any:
    """`text` as JSON, checked by `check_value`. Raises a 400."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
            code="invalid_json",
        ) from None
    except ValueError:  # Python's digit limit on int(): a number of thousands of digits
        raise InvalidRequestError(
            f"{what} holds a number too long to read.", code="invalid_number"
        ) from None
    except RecursionError:  # the C decoder's own guard, far deeper than MAX_JSON_DEPTH
        raise _too_deep(None) from None
    check_value(value)
    return value


def check_value(value: Any) -> None:
    """Refuse a parsed JSON value that cannot be sent on as it is: nesting deeper than
    MAX_JSON_DEPTH, a string (or key) holding a lone surrogate, a non-finite float, an integer
    outside 64 bits. Iterative, so no value is too deep to check. Raises a 400 naming where."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            if len(path) >= MAX_JSON_DEPTH:
                raise _too_deep(path)
            for key, child in item.items():
                check_text(key, _param((*path, key)))
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            if len(path) >= MAX_JSON_DEPTH:
                raise _too_deep(path)
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
        elif isinstance(item, str):
            check_text(item, _param(path))
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequestError(
                f"{_where(path)} is {item!r}: JSON numbers must be finite "
                "(NaN, Infinity and numbers beyond 1e308 cannot be sent on).",
                param=_param(path),
                code="invalid_number",
            )
        elif isinstance(item, int) and not MIN_INT <= item <= MAX_INT:
            raise InvalidRequestError(
                f"{_where(path)} is an integer beyond 64 bits.",
                param=_param(path),
                code="invalid_number",
            )


def check_text(text: str, param: str | None) -> None:
    """Refuse a string that is not Unicode text: one holding a lone UTF-16 surrogate."""
    if not text.isascii() and _SURROGATE.search(text):
        raise InvalidRequestError(
            f"{_where_param(param)} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
            "escape), which is not text and cannot be sent on.",
            param=param,
            code="invalid_text",
        )


def check_header(value: str, name: str) -> str:
    """A header value the routes read: printable ASCII (Starlette decodes headers as latin-1,
    so other bytes arrive as text that cannot be sent on). Raises a 400 naming the header."""
    if not _HEADER_TEXT.fullmatch(value):
        raise InvalidRequestError(
            f"The '{name}' header must be printable ASCII.", param=name, code="invalid_header"
        )
    return value


def check_key(token: str) -> str:
    """The client's key, if it has the shape of one; else a 401 that never repeats it."""
    if not (MIN_KEY_CHARS <= len(token) <= MAX_KEY_CHARS and _KEY.fullmatch(token)):
        raise AuthenticationError(
            f"Invalid API key: a key is {MIN_KEY_CHARS} to {MAX_KEY_CHARS} printable ASCII "
            "characters without spaces. Send your provider key as 'Bearer <key>'.",
            code="invalid_api_key",
        )
    return token


def _too_deep(path: tuple[str | int, ...] | None) -> InvalidRequestError:
    return InvalidRequestError(
        f"The JSON is nested more than {MAX_JSON_DEPTH} levels deep.",
        param=_param(path) if path else None,
        code="too_deep",
    )


def _param(path: tuple[str | int, ...]) -> str | None:
    """A JSON path as a `param` (`messages.0.content`); None for the whole body. Keys are cut
    short, so a hostile key is never echoed at length."""
    joined = ".".join(str(part)[:64] for part in path)
    return _SURROGATE.sub("\ufffd", joined) or None


def _where(path: tuple[str | int, ...]) -> str:
    return _where_param(_param(path))


def _where_param(param: str | None) -> str:
    return f"'{param}'" if param else "The request body"
