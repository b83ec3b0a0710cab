"""Answers that carry images as base64 (`b64_json`, inline data URIs), written around the
images' payloads instead of through `json.dumps`: a 4 MB image is 5.3 MB of base64, and each
whole copy of it (the data URI's text, the JSON text, that text's bytes, a chunk framed by the
server) costs a few milliseconds and as many megabytes. An answer is a list of pieces, short
texts and the delivered images (`imagegw.infra.media.DataUri`), made by `Around`
(`imagegw.infra.spans`, the mechanism the provider client also sends a client's data URIs
with), and each image's base64 is made from its bytes half a megabyte at a time as it is sent
(`DataUri.payload`): an answer holds the image's bytes and half a megabyte of its base64, not
its whole data URI; or, for a provider's canonical data URI passed on as it came, that URI
and a quarter of a megabyte of it at a time, not its bytes (`imagegw.infra.media.URI_PART`).
`PiecesResponse` sends such an answer.

A payload is plain base64 (encoded by the gateway, or a provider's own checked and passed on
only when canonical, `imagegw.infra.media.canonical_uri`), which JSON takes as it is. The
bytes are those `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` writes of the
value with each image's payload in its place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from imagegw.infra.media import DataUri
from imagegw.infra.spans import Around, Piece, encoded, size


def dumps(value: Any) -> str:
    """JSON text as the gateway's answers and events write it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def shown(image: str | DataUri, around: Around | None) -> str:
    """`image` as a text carrying it shows it: a link as it is; a data URI with its payload's
    mark (`Around.uri`), or without `around` whole (`DataUri.text`: a copy)."""
    if around is not None:
        return around.uri(image)
    return image if isinstance(image, str) else image.text()


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
