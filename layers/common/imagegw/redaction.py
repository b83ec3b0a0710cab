"""Redaction that cannot miss: the secrets a request carries are registered once, and every
error body the gateway renders and every log line it writes is scrubbed of them.

A provider may echo the key it was sent (whole, or cut anywhere by a length limit), so not only
the key is removed but any run of `MIN_RUN` or more of its consecutive characters. Text is
always redacted before it is cut: a cut cannot make a longer run of the key appear.

The registry is a context variable: `protect(key)` in a request (or a job step) covers
everything that runs in its context, tasks it starts included.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from functools import lru_cache
from typing import Final

#: the shortest run of a key's characters that is redacted wherever it appears
MIN_RUN: Final = 8
#: keys shorter than this are not redacted at all (they would blank ordinary words)
MIN_KEY: Final = 4
MARK: Final = "[key]"
#: text longer than this is cut before redaction; callers cut much shorter after it
MAX_SCAN: Final = 65_536
#: the longest message a client sees in an error (a provider's included)
MAX_MESSAGE: Final = 1_000

_secrets: ContextVar[tuple[str, ...]] = ContextVar("imagegw_secrets", default=())


def protect(secret: str) -> None:
    """Redact `secret` from every error and log line of the current context from now on."""
    if len(secret) >= MIN_KEY and secret not in _secrets.get():
        _secrets.set((*_secrets.get(), secret))


def protected() -> tuple[str, ...]:
    return _secrets.get()


#: the stride of `_may_hold`'s look: any run of MIN_RUN characters holds an aligned piece this long
_STRIDE: Final = MIN_RUN // 2


@lru_cache(maxsize=256)
def _pieces(secret: str) -> tuple[frozenset[str], frozenset[str]]:
    """The secret's substrings of MIN_RUN characters, and of _STRIDE (a warm instance sees the
    same few keys again and again: every log line of a request is redacted)."""
    return (
        frozenset(secret[i : i + MIN_RUN] for i in range(len(secret) - MIN_RUN + 1)),
        frozenset(secret[i : i + _STRIDE] for i in range(len(secret) - _STRIDE + 1)),
    )


@lru_cache(maxsize=256)
def _forms(secret: str) -> frozenset[str]:
    """The secret as it is, and JSON-escaped."""
    return frozenset({secret, json.dumps(secret)[1:-1]})


#: a secret with at most this many pieces of MIN_RUN characters is looked for piece by piece
#: (a search of the text each, in C); a longer one by `_may_hold`'s stride
FEW_PIECES: Final = 64


def _may_hold(text: str, halves: frozenset[str]) -> bool:
    """False when `text` cannot hold a run of MIN_RUN characters of the secret: such a run, at
    any offset, holds a piece of _STRIDE characters starting at a multiple of _STRIDE, so only
    those are looked at (a quarter of the positions of a full scan)."""
    return any(text[i : i + _STRIDE] in halves for i in range(0, len(text) - _STRIDE + 1, _STRIDE))


def _holds_a_piece(text: str, grams: frozenset[str], halves: frozenset[str]) -> bool:
    """Whether `text` may hold a run of MIN_RUN characters of the secret whose pieces of MIN_RUN
    characters are `grams`: for a secret of a few pieces (most keys), whether it holds one of
    them, each looked for by `str.__contains__`; for a longer one, `_may_hold`."""
    if len(grams) <= FEW_PIECES:
        return any(map(text.__contains__, grams))
    return _may_hold(text, halves)


def _runs(text: str, secret: str) -> list[tuple[int, int]]:
    """Spans of `text` that are runs of MIN_RUN or more consecutive characters of `secret`."""
    if len(secret) < MIN_RUN:
        spans, start = [], text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + len(secret))
        return spans
    grams, halves = _pieces(secret)
    if not _holds_a_piece(text, grams, halves):
        return []
    spans = []
    i, end = 0, len(text) - MIN_RUN + 1
    while i < end:
        if text[i : i + MIN_RUN] not in grams:
            i += 1
            continue
        j = i + MIN_RUN  # grow the run while it is still a piece of the secret
        while j < len(text) and text[i : j + 1] in secret:
            j += 1
        spans.append((i, j))
        i = j
    return spans


@lru_cache(maxsize=256)
def _screen(secret: str) -> frozenset[str] | None:
    """What a text holds when `_runs` finds a run of one of the secret's forms in it: one of
    these (each form's pieces of MIN_RUN characters, or a short form itself); None for a
    secret of many pieces (`_runs` looks for them by `_may_hold`'s stride)."""
    screen: set[str] = set()
    for form in _forms(secret):
        if len(form) < MIN_RUN:
            screen.add(form)
            continue
        grams = _pieces(form)[0]
        if len(grams) > FEW_PIECES:
            return None
        screen |= grams
    return frozenset(screen)


def redact(text: str, *secrets: str, limit: int | None = MAX_SCAN) -> str:
    """`text` (cut to `limit` first) without the given secrets nor the context's, nor any run
    of MIN_RUN or more of their characters (also in their JSON-escaped form)."""
    if limit is not None:
        text = text[:limit]
    for secret in {*secrets, *_secrets.get()}:
        if len(secret) < MIN_KEY:
            continue
        screen = _screen(secret)
        if screen is not None and not any(map(text.__contains__, screen)):
            continue  # no run of it in the text (most lines of a request)
        for form in _forms(secret):
            spans = _runs(text, form)
            for start, stop in reversed(spans):
                text = text[:start] + MARK + text[stop:]
    return text


def cut(text: str, limit: int, *secrets: str) -> str:
    """Redact, then cut to `limit` characters (never the other way round)."""
    return redact(text, *secrets)[:limit]
