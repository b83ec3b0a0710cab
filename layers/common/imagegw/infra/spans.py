"""JSON around large payloads: a JSON value that carries a few large texts (images' base64) is
written as the text between them and each payload made a part at a time as it is sent, never
as one JSON text (nor its bytes) holding the payloads.

Both ways the gateway writes such JSON go through here:

- answers carrying images (`b64_json`, inline data URIs; `imagegw.frontends.spans`): each
  payload an image's base64, made from its bytes half a megabyte at a time
  (`imagegw.infra.media.DataUri`);
- a provider request carrying a client's data URIs (`spliced`, used by
  `imagegw.infra.clients.JsonTemplate`): each payload the URI as the client sent it
  (`AsciiText`), its ASCII bytes 64 KiB at a time (REQUEST_PART).

And the reading side (`Apart`): a JSON text read a chunk at a time, each long plain string in
it held apart as its own str, a mark in its place in the short text that is parsed: a client's
data URI in a request body (`imagegw.frontends.inbound.parse_apart`), an image's base64 in a
provider's answer (held after its data URI's head, so it is the URI the gateway passes on:
`imagegw.providers.openai_compat`).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

#: characters of an answer's payload written at a time (512 KiB: a piece holds no more;
#: `imagegw.infra.media.DataUri`)
TEXT_PART: Final = 512 * 1024
#: characters of a request's payload (`AsciiText`) written at a time: a request is written as
#: fast as the connection takes it, a part and what the socket has not taken yet held at once
REQUEST_PART: Final = 64 * 1024
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


def text_parts(text: str, start: int = 0, step: int = TEXT_PART) -> Iterator[bytes]:
    """The ASCII bytes of `text[start:]`, `step` characters at a time (no slice of it whole)."""
    for at in range(start, len(text), step):
        yield text[at : at + step].encode("ascii")


class AsciiText:
    """A long ASCII text that is its own JSON (a client's data URI passed on) as a payload."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def payload_size(self) -> int:
        return len(self.text)

    def payload(self) -> Iterator[bytes]:
        return text_parts(self.text, 0, REQUEST_PART)


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


#: the steps (strings begun, escapes stepped over) `Apart` takes in a text before it stops
#: looking for long strings: what a hostile body of many tiny strings costs it is bounded
LEX_STEPS: Final = 4096
#: bytes that JSON takes in a string only escaped (a long string holding one is not held apart)
_CONTROL: Final = bytes(range(0x20))


class Apart:
    """The reading side: a JSON text's UTF-8 bytes read as they arrive (`feed`), each long
    string in it that is plain (ASCII, SPLICE_AT bytes or more, no escape, no control
    character: a client's data URI, an image's base64) held apart as its own str (`held`), its
    place in the text a mark, as `Around` writes one; the rest of the text (`text()`) is short,
    and parsed alone its value is the whole text's with each held string's mark in its place
    (`restored` puts them back). So the body is never whole beside its parsed value: a client's
    4 MB image is one 5.4 MB str, grown in place a chunk at a time, not the body's bytes, their
    text and the value's str. After LEX_STEPS steps the rest of the text is kept as it comes.

    `lead`: the text a held string is held after, given its first bytes (SPLICE_AT or more):
    a data URI's head before a provider's base64, so the str held is the URI, made as the
    answer is read rather than copied from the string (`with_lead`); `restored` and `whole`
    give the string alone."""

    __slots__ = (
        "around",
        "escaped",
        "held",
        "lead",
        "lead_size",
        "leads",
        "long",
        "mark",
        "plain",
        "size",
        "start",
        "steps",
    )

    def __init__(self, lead: Callable[[bytes], str] | None = None) -> None:
        self.mark = f"\ue000{secrets.token_hex(8)}:"
        self.lead = lead
        #: the text but the held strings, in pieces (a held string's mark a piece of its own)
        self.around: list[bytes] = []
        self.held: list[str] = []
        #: the length of each held string's lead, and of the one being held (`lead`)
        self.leads: list[int] = []
        self.lead_size = 0
        #: in a string: the index in `around` of its first piece, else -1
        self.start = -1
        #: in a string: its bytes so far, whether they are plain, the str of them once long
        self.size, self.plain, self.long = 0, True, ""
        #: the last byte fed was a backslash in a string (the next one is escaped)
        self.escaped = False
        self.steps = 0

    def feed(self, chunk: bytes) -> None:
        """The text's next bytes."""
        pos, end = 0, len(chunk)
        while pos < end:
            if self.steps >= LEX_STEPS:  # no more strings looked for: the rest as it comes
                self._demote()
                self.start = -1
                self.around.append(chunk[pos:] if pos else chunk)
                return
            if self.start >= 0:  # in a string
                pos = self._string(chunk, pos)
                continue
            quote = chunk.find(b'"', pos)
            if quote < 0:
                self.around.append(chunk[pos:] if pos else chunk)
                return
            self.around.append(chunk[pos : quote + 1])
            self.steps += 1
            self.start, self.size, self.plain = len(self.around), 0, True
            pos = quote + 1

    def _string(self, chunk: bytes, pos: int) -> int:
        """Reads the string begun up to its end or the chunk's: where to read on."""
        end, at = len(chunk), pos
        if self.escaped:
            self.escaped, self.plain, at = False, False, at + 1
        while True:
            quote = chunk.find(b'"', at)
            backslash = chunk.find(b"\\", at, end if quote < 0 else quote)
            if backslash < 0:
                break
            self.plain = False
            self.steps += 1
            if backslash + 1 == end or self.steps >= LEX_STEPS:
                self.escaped, quote = backslash + 1 == end, -1
                break
            at = backslash + 2
        stop = end if quote < 0 else quote
        self._add(chunk[pos:stop] if pos or stop < end else chunk)
        if quote < 0:
            return end
        if self.long:
            self.around.append(self._mark(len(self.held)))
            self.held.append(self.long)
            self.leads.append(self.lead_size)
            self.long = ""
        self.around.append(b'"')
        self.start = -1
        return quote + 1

    def _add(self, part: bytes) -> None:
        """Part of the string begun: in the text while it is short or not plain, else in the
        str it is held as, which grows in place (its only reference is the local one)."""
        self.size += len(part)
        if self.long:
            if self.plain and _plain(part):
                long, self.long = self.long, ""
                long += part.decode("ascii")
                self.long = long
                return
            self.plain = False
            self._demote()
        elif self.plain and self.size >= SPLICE_AT:
            whole = b"".join([*self.around[self.start :], part])  # (SPLICE_AT and a chunk)
            if _plain(whole):
                del self.around[self.start :]
                lead = "" if self.lead is None else self.lead(whole)
                self.lead_size = len(lead)
                self.long = lead + whole.decode("ascii")
                return
            self.plain = False
        self.around.append(part)

    def _demote(self) -> None:
        """The string begun back in the text (not held after all: a copy, of a string that is
        not what a client's data URI is)."""
        if self.long:
            self.around.append(self.long[self.lead_size :].encode("ascii"))
            self.long = ""

    def _mark(self, index: int) -> bytes:
        return f"{self.mark}{index}\ue000".encode()

    def text(self) -> bytes:
        """The text read, but each held string its mark (short); its pieces are let go. A
        string the text ends in (cut short) is in it as it came."""
        self._demote()
        text, self.around = b"".join(self.around), []
        return text

    def whole(self, text: bytes) -> bytes:
        """The whole text (`text()` with each held string in its place): an error's words."""
        for index in range(len(self.held)):
            text = text.replace(self._mark(index), self.string(index).encode("ascii"), 1)
        return text

    def string(self, index: int) -> str:
        """The held string `index` alone (without its lead: then a copy)."""
        lead = self.leads[index]
        return self.held[index][lead:] if lead else self.held[index]

    def restored(self, value: Any) -> Any:
        """`value`, parsed from `text()`, with each held string in its mark's place."""
        return _restored(value, self.mark, self.string) if self.held else value

    def with_lead(self, value: str) -> str | None:
        """The held str, its lead and the string, that `value` (a str of the value parsed from
        `text()`) is the mark of; None when it is no mark or its string has no lead."""
        if not value.startswith(self.mark):
            return None
        index = int(value[len(self.mark) : -1])
        return self.held[index] if self.leads[index] else None


def _plain(part: bytes) -> bool:
    """ASCII without a control character (a backslash or quote is never in a part)."""
    return part.isascii() and len(part.translate(None, _CONTROL)) == len(part)


def _restored(value: Any, mark: str, held: Callable[[int], str]) -> Any:
    """`value` with each str that is a mark (`Apart`) its held string (`held(index)`), its
    containers changed in place (a value parsed from the text: no one else's)."""
    if isinstance(value, str):
        return held(int(value[len(mark) : -1])) if value.startswith(mark) else value
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str | list | dict):
                value[index] = _restored(item, mark, held)
        return value
    if isinstance(value, dict):
        if any(key.startswith(mark) for key in value):
            return {_restored(k, mark, held): _restored(v, mark, held) for k, v in value.items()}
        for key, item in value.items():
            if isinstance(item, str | list | dict):
                value[key] = _restored(item, mark, held)
    return value
