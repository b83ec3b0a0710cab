"""Answers that carry images as base64 (`b64_json`), written around the images' text instead
of through `json.dumps`: a 4 MB image is 5.3 MB of base64, and each whole copy of it (a slice
of its data URI, the JSON text, that text's bytes, a chunk framed by the server) costs a few
milliseconds and as many megabytes. Here an answer is a list of pieces, short texts and spans
of a data URI's payload, and its bytes are encoded a megabyte at a time as they are sent.

A payload is put in the JSON as it is only when it needs no escaping; the data URIs delivered
for `b64_json` are plain base64 (`imagegw.core.deliver`: encoded by the gateway, or a
provider's own checked and passed on only when canonical, `imagegw.infra.media.canonical_uri`).
The bytes are those `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

#: characters of a payload encoded (and sent) at a time
STEP: Final = 1 << 20
#: ASCII characters JSON escapes that a payload is looked for (each a fast scan)
_ESCAPED: Final = ('"', "\\", "\n", "\r", "\t")


@dataclass(frozen=True)
class Span:
    """Characters `start:` of `text`: ASCII that JSON takes as it is (a base64 payload)."""

    text: str
    start: int


Piece = str | Span


def payload(data_uri: str) -> Span | None:
    """The payload of `data_uri` (after its comma) as a span, or None when it could not go
    into a JSON string as it is (a quote, a backslash, a line break or tab, or any character
    beyond ASCII; other control characters never get here: a delivered data URI's payload was
    decoded strictly or encoded by the gateway, and scanning a few megabytes for them would
    cost milliseconds)."""
    start = data_uri.find(",") + 1
    if not (start and data_uri.isascii()):
        return None
    if any(data_uri.find(char, start) >= 0 for char in _ESCAPED):
        return None
    return Span(data_uri, start)


def dumps(value: Any) -> str:
    """JSON text as the gateway's answers and events write it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Around:
    """A JSON value written around the base64 payloads it carries: `payload(data_uri)` is what
    to put in the value where a payload goes (a mark, unique to this answer and no text a
    client can guess, or the payload itself when it needs escaping); `pieces(value)` is the
    value's JSON text, each mark's place a span of its data URI."""

    def __init__(self) -> None:
        self.mark = f"\ue000{secrets.token_hex(8)}:"
        self.spans: list[Span] = []

    def payload(self, data_uri: str) -> str:
        mark = self._mark(data_uri)
        # a payload that needs escaping is escaped by the encoder
        return data_uri[data_uri.find(",") + 1 :] if mark is None else mark

    @classmethod
    def of(cls, images: Sequence[str]) -> Around | None:
        """An `Around` for a text that links `images`, or None when none is a data URI (links
        alone: the text is written as it is)."""
        for image in images:  # (a loop: no generator for the one link most answers carry)
            if image.startswith("data:"):
                return cls()
        return None

    def uri(self, image: str) -> str:
        """`image` as a text carrying it shows it: a data URI with its payload as the mark
        (`payload`); a link, or a data URI whose payload needs escaping, as it is."""
        mark = self._mark(image) if image.startswith("data:") else None
        return image if mark is None else f"{image[: image.find(',') + 1]}{mark}"

    def _mark(self, data_uri: str) -> str | None:
        """The mark of `data_uri`'s payload, its span kept; None when it needs escaping."""
        span = payload(data_uri)
        if span is None:
            return None
        self.spans.append(span)
        return f"{self.mark}{len(self.spans) - 1}\ue000"

    def pieces(self, value: Any) -> list[Piece]:
        """The JSON text of `value` as JSONResponse writes it, as pieces: the text between the
        payloads, and each payload's span."""
        return self.cut(
            json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        )

    def cut(self, text: str) -> list[Piece]:
        """`text`, which holds each mark once, in order (a JSON text of a value holding them,
        and what comes with it), as pieces: the text between the payloads, and each payload's
        span. The last piece is text."""
        rest = text
        pieces: list[Piece] = []
        for index, span in enumerate(self.spans):
            before, found, rest = rest.partition(f"{self.mark}{index}\ue000")
            if not found:
                raise ValueError(f"payload {index} is not in the value")
            pieces += [before, span]
        pieces.append(rest)
        return pieces


def encoded(pieces: Iterable[Piece]) -> Iterator[bytes]:
    """The UTF-8 bytes of `pieces`, a span at most STEP characters at a time."""
    for piece in pieces:
        if isinstance(piece, str):
            yield piece.encode()
            continue
        text, at = piece.text, piece.start
        while at < len(text):
            yield text[at : at + STEP].encode("ascii")
            at += STEP


def size(pieces: Iterable[Piece]) -> int:
    """How many bytes `encoded(pieces)` yields."""
    return sum(
        len(piece.encode()) if isinstance(piece, str) else len(piece.text) - piece.start
        for piece in pieces
    )


class PiecesResponse(Response):
    """A JSON answer made of pieces: its Content-Length counted first, its body sent a piece
    (or a STEP of a span) at a time, never joined into one copy, the last piece ending the
    answer (an answer of one piece, links alone, is one message as JSONResponse sends it)."""

    media_type = "application/json"

    def __init__(
        self,
        pieces: Sequence[Piece],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.pieces = pieces
        super().__init__(
            None, status_code, {**(headers or {}), "content-length": str(size(pieces))}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = b""
        for piece in encoded(self.pieces):  # each sent once the next is known (the last ends it)
            if not piece:
                continue
            if body:
                await send({"type": "http.response.body", "body": body, "more_body": True})
            body = piece
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if self.background is not None:
            await self.background()
