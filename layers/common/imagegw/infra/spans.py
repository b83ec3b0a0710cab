"""JSON around large payloads: a JSON value that carries a few large texts (images' base64) is
written as the text between them and each payload made a part at a time as it is sent, never
as one JSON text (nor its bytes) holding the payloads.

Both ways the gateway writes such JSON go through here:

- answers carrying images (`b64_json`, inline data URIs; `imagegw.frontends.spans`): each
  payload an image's base64, made from its bytes half a megabyte at a time
  (`imagegw.infra.media.DataUri`);
- a provider request carrying a client's data URIs (`spliced`, used by
  `imagegw.infra.clients.JsonTemplate`): each payload the URI as the client sent it
  (`AsciiText`), its ASCII bytes half a megabyte at a time.

How: the value is encoded by `json.dumps` with a mark in each payload's place (`Around`: a
mark new for each value, no text a client can guess or send), the text is cut at the marks
(`Around.cut`), and the pieces, texts and payloads, are written in order (`encoded`), their
length counted first (`size`). The bytes are those `json.dumps(..., ensure_ascii=False,
separators=(",", ":"))` writes of the value with each payload in its place: a payload is text
JSON takes as it is (plain base64, or an ASCII text holding nothing JSON escapes).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

#: characters of a payload's text written at a time (512 KiB: a piece holds no more)
TEXT_PART: Final = 512 * 1024
#: a str value this long of a request body that holds images is a payload of its own when it
#: is a data URI that is its own JSON text (`spliced`)
SPLICE_AT: Final = 64 * 1024
#: what JSON escapes in a str (`ensure_ascii=False`): a text holding none is its JSON as it is
_ESCAPED: Final = '"\\' + "".join(map(chr, range(0x20)))


class Payload(Protocol):
    """A large text a JSON value carries, written a part at a time."""

    def payload_size(self) -> int:
        """The bytes `payload` yields."""
        ...

    def payload(self) -> Iterator[bytes]:
        """The payload's bytes, a part at a time."""
        ...


class Headed(Payload, Protocol):
    """A payload that is the end of a text shown whole: a data URI's base64 after its `head`."""

    @property
    def head(self) -> str: ...


#: a piece of a value's JSON: text, or a payload that goes there (`Around.cut`)
Piece = str | Payload
#: a piece to send: a piece, or a text's bytes (made once for a body that may be sent again)
Sent = Piece | bytes


def text_parts(text: str, start: int = 0) -> Iterator[bytes]:
    """The ASCII bytes of `text[start:]`, TEXT_PART characters at a time (no slice of it whole)."""
    for at in range(start, len(text), TEXT_PART):
        yield text[at : at + TEXT_PART].encode("ascii")


class AsciiText:
    """A long ASCII text that is its own JSON (a client's data URI passed on) as a payload."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def payload_size(self) -> int:
        return len(self.text)

    def payload(self) -> Iterator[bytes]:
        return text_parts(self.text)


class Around:
    """A JSON value written around the payloads it carries: `payload(p)` is what to put in the
    value where `p` goes (a mark, unique to this value and no text a client can guess);
    `pieces(value)` is the value's JSON text, each mark's place its payload."""

    __slots__ = ("mark", "payloads")

    def __init__(self) -> None:
        self.mark = f"\ue000{secrets.token_hex(8)}:"
        self.payloads: list[Payload] = []

    def payload(self, payload: Payload) -> str:
        """The mark of `payload`, kept for its place."""
        self.payloads.append(payload)
        return f"{self.mark}{len(self.payloads) - 1}\ue000"

    @classmethod
    def of(cls, images: Sequence[str | Headed]) -> Around | None:
        """An `Around` for a text that links `images`, or None when none is a data URI (links
        alone: the text is written as it is)."""
        for image in images:  # (a loop: no generator for the one link most answers carry)
            if not isinstance(image, str):
                return cls()
        return None

    def uri(self, image: str | Headed) -> str:
        """`image` as a text carrying it shows it: a data URI with its payload as the mark
        (`payload`); a link as it is."""
        return image if isinstance(image, str) else f"{image.head}{self.payload(image)}"

    def pieces(self, value: Any) -> list[Piece]:
        """The JSON text of `value` as JSONResponse writes it, as pieces: the text between the
        payloads, and each payload."""
        return self.cut(
            json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        )

    def cut(self, text: str) -> list[Piece]:
        """`text`, which holds each mark once, in order (a JSON text of a value holding them,
        and what comes with it), as pieces: the text between the payloads, and each payload.
        The last piece is text. A ValueError when a mark is missing or found more than once."""
        if text.count(self.mark) != len(self.payloads):
            raise ValueError("the marks are not each once in the text")
        rest = text
        pieces: list[Piece] = []
        for index, payload in enumerate(self.payloads):
            before, found, rest = rest.partition(f"{self.mark}{index}\ue000")
            if not found:
                raise ValueError(f"payload {index} is not in the value")
            pieces += [before, payload]
        pieces.append(rest)
        return pieces


def encoded(pieces: Iterable[Sent]) -> Iterator[bytes]:
    """The UTF-8 bytes of `pieces`, a payload a part at a time."""
    for piece in pieces:
        if isinstance(piece, str):
            yield piece.encode()
        elif isinstance(piece, bytes):
            yield piece
        else:
            yield from piece.payload()


def size(pieces: Iterable[Sent]) -> int:
    """How many bytes `encoded(pieces)` yields."""
    return sum(
        len(piece.encode())
        if isinstance(piece, str)
        else len(piece)
        if isinstance(piece, bytes)
        else piece.payload_size()
        for piece in pieces
    )


def spliceable(value: str) -> bool:
    """A long data URI that is its own JSON text (ASCII, nothing JSON escapes)."""
    return (
        len(value) >= SPLICE_AT
        and value.startswith("data:")
        and value.isascii()
        and not any(c in value for c in _ESCAPED)
    )


def _marked(value: Any, around: Around) -> Any:
    """`value` with each long data URI in it made its mark (`spliceable`, `Around.payload`),
    its containers copied, its values not. (A function of the module, not a closure: a nested
    function that calls itself is a reference cycle, which would hold the URIs until the
    collector ran, or for good once frozen: `imagegw.infra.collector`.)"""
    if isinstance(value, str):
        return around.payload(AsciiText(value)) if spliceable(value) else value
    if isinstance(value, dict):
        return {key: _marked(item, around) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_marked(item, around) for item in value]
    return value


def spliced(body: Any) -> list[Sent] | None:
    """`body`'s JSON as pieces (`Around`): its long data URIs (`spliceable`) the payloads, the
    text around them made bytes once (a request may be sent again). None when it holds none."""
    around = Around()
    marked = _marked(body, around)
    if not around.payloads:
        return None
    text = json.dumps(marked, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        pieces = around.cut(text)
    except ValueError:  # a mark elsewhere too (a key: never by chance): encoded whole
        return None
    return [piece.encode() if isinstance(piece, str) else piece for piece in pieces]
