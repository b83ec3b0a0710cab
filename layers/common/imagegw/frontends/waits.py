"""How long a client waits, checked before anything is stored or started.

A client that waits only a few seconds for an answer (the OpenAI SDKs' `X-Stainless-Read-Timeout`,
or `X-Stainless-Timeout`) gives up long before any image is made: the gateway would upload its
images, start a paid task, and then answer a 504 the client no longer reads, while the SDK
retries and pays again. Such a request is refused at once (a 400, which no SDK retries), unless
it asks for a durable job (`Prefer: respond-async`), which answers at once.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request

from imagegw.errors import InvalidRequestError
from imagegw.frontends.web import client_wait

#: a client waiting at most this long (seconds) cannot get an image
SHORT_WAIT: Final = 3.0


def refuse_short_wait(request: Request, *, as_job: bool) -> None:
    """A 400 `client_timeout_too_short` when the client waits SHORT_WAIT seconds or less for
    an answer that makes images (not for a durable job). Reads headers only."""
    if as_job:
        return
    seconds = client_wait(request)
    if seconds is not None and seconds <= SHORT_WAIT:
        raise InvalidRequestError(
            f"This client waits {seconds:g} s for an answer (X-Stainless-Read-Timeout); no "
            "image is made that fast, and a paid generation would be lost to the client's "
            "retry. Raise the client's timeout, or send 'Prefer: respond-async' for a job.",
            code="client_timeout_too_short",
        )
