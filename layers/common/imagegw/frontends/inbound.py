"""What a client may send: pure checks that whatever the gateway accepts can be forwarded
faithfully (re-encoded as UTF-8 JSON for a provider, stored in a job, put in a header).

Python accepts more than the wire can carry: `json.loads` turns `"\\ud800"` into a lone surrogate
(not text: encoding it as UTF-8 fails later, deep inside a provider call), `NaN`, `Infinity` and
`1e400` into floats no JSON encoder may write, 400-digit integers into ints that `float()` cannot
take, and 100,000 nested brackets into a RecursionError. Starlette decodes headers as latin-1, so
a non-ASCII header reaches the routes as text httpx cannot send. `imagegw.frontends.web` runs
every body and header the routes read through these checks, so the rest of the gateway only ever
sees values that survive the trip; each refusal is a 400 naming the field (`param`) where one can
be named.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from imagegw.errors import AuthenticationError, InvalidRequestError
from imagegw.infra.spans import Apart

#: deepest JSON nesting accepted (the body object is level 1). Chat bodies need ~6 levels,
#: tool schemas in a pass-through body rarely 20; the bound keeps every later walk cheap.
MAX_JSON_DEPTH: Final = 64
#: integers must fit 64 bits (signed or unsigned): what providers parse, and what float() takes
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**64 - 1
#: the client's key: printable ASCII without spaces, at most this many characters. No minimum:
#: self-hosted OpenAI-compatible servers take any key, and their users send "EMPTY" (vLLM) or
#: "ollama"; provider keys are 35-170 characters, JWT-style tokens a few hundred, and anything
#: past 1024 is not a key (the bound keeps what is hashed, sealed and redacted small).
MAX_KEY_CHARS: Final = 1024

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
#: a header value the routes read: visible ASCII, spaces and tabs
_HEADER_TEXT: Final = re.compile(r"[\t\x20-\x7e]*")
_KEY: Final = re.compile(r"[\x21-\x7e]+")


def parse_json(raw: bytes, *, what: str = "The request body") -> Any:
    """`raw` as JSON (UTF-8, an optional BOM), checked by `check_value`. Raises a 400."""
    return parse_json_text(json_text(raw, what=what), what=what)


def parse_apart(apart: Apart, *, what: str = "The request body") -> Any:
    """The JSON value of a body read by `apart` (its long plain strings held apart as they
    came: a client's data URI is not in the text `json.loads` parses), as `parse_json` gives it
    of the whole body: the same value, the same refusals in the same words (a text refused is
    read again whole for them). The text's bytes are dropped once it is decoded."""
    raw = apart.text()
    if not apart.held:
        text = json_text(raw, what=what)
        # the body's bytes dropped before it is parsed: its text and the value are alive
        # together, not the bytes too
        del raw
        return parse_json_text(text, what=what)
    try:
        value = parse_json(raw, what=what)
    except InvalidRequestError:
        return parse_json(apart.whole(raw), what=what)  # the whole text's refusal
    return apart.restored(value)


def json_text(raw: bytes, *, what: str = "The request body") -> str:
    """`raw`, a JSON body, as text: UTF-8 with an optional BOM. Raises a 400."""
    try:
        # what "utf-8-sig" does (a BOM dropped, the rest strict: no surrogates smuggled as
        # CESU-8 bytes, an error's offset counted after the BOM), with the C codec
        return raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"{what} is not valid UTF-8 (byte {exc.start}).", code="invalid_encoding"
        ) from None


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
        raise InvalidRequestError(
            f"{what} is nested more than {MAX_JSON_DEPTH} levels deep.", code="too_deep"
        ) from None
    check_value(value)
    return value


def check_value(value: Any) -> None:
    """Refuse a parsed JSON value that cannot be sent on as it is: nesting deeper than
    MAX_JSON_DEPTH, a string (or key) holding a lone surrogate, a non-finite float, an integer
    outside 64 bits. Raises a 400 naming where (`param`).

    One level at a time, without recursion and without building paths (a 6 MB body of a
    million tiny arrays costs a fraction of a second); the path of a refused value is found
    afterwards, by `_param_of`.
    """
    if not isinstance(value, dict | list):
        if problem := _problem(value):
            raise _refusal(None, problem)
        return
    level: list[Any] = [value]
    depth = 0
    while level:
        deeper: list[Any] = []
        push = deeper.append
        for container in level:
            if type(container) is dict:
                for key in container:
                    if not key.isascii() and (problem := _problem(key)):
                        raise _refusal(_param_of(value, container, key), problem)
                items: Any = container.values()
            else:
                items = container
            for item in items:
                kind = type(item)
                # the common, valid cases first and inline: this loop sees every value
                if kind is str:
                    if item.isascii():
                        continue
                elif kind is int:
                    if MIN_INT <= item <= MAX_INT:
                        continue
                elif kind is float:
                    if math.isfinite(item):
                        continue
                elif kind is dict or kind is list:
                    push(item)
                    continue
                else:  # None, True, False
                    continue
                if problem := _problem(item):
                    raise _refusal(_param_of(value, container, _key_of(container, item)), problem)
        depth += 1
        if deeper and depth >= MAX_JSON_DEPTH:
            raise InvalidRequestError(
                f"The JSON is nested more than {MAX_JSON_DEPTH} levels deep.",
                param=_param_of(value, deeper[0], None),
                code="too_deep",
            )
        level = deeper


def check_text(text: str, param: str | None) -> None:
    """Refuse a string that is not Unicode text: one holding a lone UTF-16 surrogate."""
    if not text.isascii() and (problem := _problem(text)):
        raise _refusal(param, problem)


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
    if not (len(token) <= MAX_KEY_CHARS and _KEY.fullmatch(token)):
        raise AuthenticationError(
            f"Invalid API key: a key is at most {MAX_KEY_CHARS} printable ASCII characters, "
            "without spaces. Send your provider key as 'Bearer <key>'.",
            code="invalid_api_key",
        )
    return token


#: what is wrong with a value, and the error code that says it
_Problem = tuple[str, str]


def _problem(item: Any) -> _Problem | None:
    """What makes a string or number impossible to send on, if anything."""
    if isinstance(item, str) and _SURROGATE.search(item):
        return (
            "holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is "
            "not text and cannot be sent on.",
            "invalid_text",
        )
    if isinstance(item, float) and not math.isfinite(item):
        return (
            f"is {item!r}: JSON numbers must be finite (NaN, Infinity and numbers beyond "
            "1e308 cannot be sent on).",
            "invalid_number",
        )
    if isinstance(item, int) and not isinstance(item, bool) and not MIN_INT <= item <= MAX_INT:
        return "is an integer beyond 64 bits.", "invalid_number"
    return None


def _refusal(param: str | None, problem: _Problem) -> InvalidRequestError:
    what, code = problem
    where = f"'{param}'" if param else "A value in the request body"
    return InvalidRequestError(f"{where} {what}", param=param, code=code)


def _key_of(container: Any, item: Any) -> str | int | None:
    """The key (or index) under which `container` holds `item` (the very object)."""
    return next((key for key, value in _pairs(container) if value is item), None)


#: containers `_param_of` visits at most looking for a refused value's path
LOCATE_LIMIT: Final = 100_000


def _param_of(root: Any, container: Any, key: str | int | None) -> str | None:
    """The `param` naming `container[key]` (or `container` itself if `key` is None) inside
    `root`, such as `messages.0.content`; None for the body itself, or if not found within
    LOCATE_LIMIT containers. A depth-first search holding one iterator a level (no copies of
    big containers), run only to word an error."""
    path: list[str | int] = []
    levels = [iter(_pairs(root))]
    found = root is container
    visited = 0
    while levels and not found and visited < LOCATE_LIMIT:
        for name, child in levels[-1]:
            if isinstance(child, dict | list):
                visited += 1
                path.append(name)
                found = child is container
                levels.append(iter(_pairs(child)))
                break
        else:
            levels.pop()
            if path:
                path.pop()
    if not found:
        return None
    parts = [*path, key] if key is not None else path
    # keys cut short and cleaned: a hostile key is never echoed at length nor breaks the answer
    joined = ".".join(str(part)[:64] for part in parts)
    return _SURROGATE.sub("\ufffd", joined) or None


def _pairs(container: Any) -> Any:
    return container.items() if isinstance(container, dict) else enumerate(container)
