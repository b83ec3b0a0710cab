"""Answers that carry images as base64 (`b64_json`, inline data URIs), written around the
images' payloads instead of through `json.dumps`: a 4 MB image is 5.3 MB of base64, and each
whole copy of it (the data URI's text, the JSON text, that text's bytes, a chunk framed by the
server) costs a few milliseconds and as many megabytes. Here an answer is a list of pieces,
short texts and the delivered images (`imagegw.infra.media.DataUri`), and each image's base64
is made from its bytes half a megabyte at a time as it is sent (`DataUri.payload`): an answer
holds the image's bytes and half a megabyte of its base64, not its whole data URI.

A payload is plain base64 (encoded by the gateway, or a provider's own checked and passed on
only when canonical, `imagegw.infra.media.canonical_uri`), which JSON takes as it is. The
bytes are those `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes of the
value with each image's payload in its place.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from imagegw.infra.media import DataUri

#: a piece of an answer: text, or an image whose base64 payload goes there
Piece = str | DataUri


def dumps(value: Any) -> str:
    """JSON text as the gateway's answers and events write it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Around:
    """A JSON value written around the base64 payloads it carries: `payload(image)` is what to
    put in the value where an image's payload goes (a mark, unique to this answer and no text
    a client can guess); `pieces(value)` is the value's JSON text, each mark's place the image
    (whose payload `encoded` writes)."""

    def __init__(self) -> None:
        self.mark = f"\ue000{secrets.token_hex(8)}:"
        self.images: list[DataUri] = []

    def payload(self, image: DataUri) -> str:
        """The mark of `image`'s payload, the image kept for its place."""
        self.images.append(image)
        return f"{self.mark}{len(self.images) - 1}\ue000"

    @classmethod
    def of(cls, images: Sequence[str | DataUri]) -> Around | None:
        """An `Around` for a text that links `images`, or None when none is a data URI (links
        alone: the text is written as it is)."""
        for image in images:  # (a loop: no generator for the one link most answers carry)
            if isinstance(image, DataUri):
                return cls()
        return None

    def uri(self, image: str | DataUri) -> str:
        """`image` as a text carrying it shows it: a data URI with its payload as the mark
        (`payload`); a link as it is."""
        return image if isinstance(image, str) else f"{image.head}{self.payload(image)}"

    def pieces(self, value: Any) -> list[Piece]:
        """The JSON text of `value` as JSONResponse writes it, as pieces: the text between the
        payloads, and each payload's image."""
        return self.cut(
            json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        )

    def cut(self, text: str) -> list[Piece]:
        """`text`, which holds each mark once, in order (a JSON text of a value holding them,
        and what comes with it), as pieces: the text between the payloads, and each payload's
        image. The last piece is text."""
        rest = text
        pieces: list[Piece] = []
        for index, image in enumerate(self.images):
            before, found, rest = rest.partition(f"{self.mark}{index}\ue000")
            if not found:
                raise ValueError(f"payload {index} is not in the value")
            pieces += [before, image]
        pieces.append(rest)
        return pieces


def shown(image: str | DataUri, around: Around | None) -> str:
    """`image` as a text carrying it shows it: a link as it is; a data URI with its payload's
    mark (`Around.uri`), or without `around` whole (`DataUri.text`: a copy)."""
    if around is not None:
        return around.uri(image)
    return image if isinstance(image, str) else image.text()


def encoded(pieces: Iterable[Piece]) -> Iterator[bytes]:
    """The UTF-8 bytes of `pieces`, an image's payload half a megabyte at a time."""
    for piece in pieces:
        if isinstance(piece, str):
            yield piece.encode()
        else:
            yield from piece.payload()


def size(pieces: Iterable[Piece]) -> int:
    """How many bytes `encoded(pieces)` yields."""
    return sum(
        len(piece.encode()) if isinstance(piece, str) else piece.payload_size() for piece in pieces
    )


class PiecesResponse(Response):
    """A JSON answer made of pieces: its Content-Length counted first, its body sent a piece
    (or a part of an image's payload) at a time, never joined into one copy, the last
    piece ending the answer (an answer of one piece, links alone, is one message as
    JSONResponse sends it)."""

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
