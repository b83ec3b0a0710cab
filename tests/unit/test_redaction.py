"""Redaction that cannot miss: a provider that echoes the key, whole or cut anywhere, leaks no
run of 8 or more of its characters into error bodies, job errors or log lines."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from imagegw.errors import ProviderError, TransientJobError, render
from imagegw.infra.log import logger
from imagegw.providers.upstream import MAX_MESSAGE, error_for
from imagegw.redaction import FEW_PIECES, MIN_KEY, MIN_RUN, protect, redact

KEY = "ms-Zq8rT2vLx9WmP4sKd7YbN3cHf"  # 29 characters


def leaked_runs(text: str, key: str = KEY) -> list[str]:
    """Every run of MIN_RUN or more consecutive characters of `key` found in `text`."""
    return [
        key[i : i + MIN_RUN] for i in range(len(key) - MIN_RUN + 1) if key[i : i + MIN_RUN] in text
    ]


@pytest.mark.parametrize("offset", range(MAX_MESSAGE - 40, MAX_MESSAGE + 5))
def test_a_key_straddling_the_cut_leaks_nothing(offset: int) -> None:
    # the provider's message puts the key right where the gateway cuts messages
    prefix = "x" * (offset - len("Acme: "))
    echo = httpx.Response(400, json={"errors": {"message": prefix + KEY + " is invalid"}})
    failure = error_for("Acme", echo, key=SecretStr(KEY))
    assert leaked_runs(failure.message) == []
    assert len(failure.message) <= MAX_MESSAGE


def test_every_run_of_eight_or_more_is_redacted_and_shorter_ones_are_kept() -> None:
    text = f"a {KEY[3:11]} b {KEY[10:24]} c {KEY[:7]} d"
    redacted = redact(text, KEY)
    assert leaked_runs(redacted) == []
    assert KEY[:7] in redacted  # 7 characters tell nothing about the key
    assert redacted.startswith("a [key] b [key] c ")


#: a key of more pieces than are looked for one by one (a JWT-like token)
LONG_KEY = "eyJhbGciOiJIUzI1NiJ9." + "".join(f"{i:x}Qw" for i in range(40)) + ".sig-Zq8rT2vLx9"


@pytest.mark.parametrize("key", [KEY, LONG_KEY], ids=["few pieces", "many pieces"])
@pytest.mark.parametrize("start", [0, 1, 5, 13])
def test_a_run_anywhere_in_a_line_is_redacted_whatever_the_keys_length(
    key: str, start: int
) -> None:
    assert len(LONG_KEY) - MIN_RUN + 1 > FEW_PIECES
    for stop in (start + MIN_RUN, start + MIN_RUN + 3, len(key)):
        line = f'{{"level":"INFO","note":"at {"x" * start}{key[start:stop]}","n":1}}'
        redacted = redact(line, key)
        assert leaked_runs(redacted, key) == []
        assert "[key]" in redacted
    # and a line without a run of it is left as it is
    clean = f'{{"message":"request","id":"{key[: MIN_RUN - 1]}","path":"/v1/models"}}'
    assert redact(clean, key) == clean


def test_a_json_escaped_key_is_redacted_too() -> None:
    key = 'sk-with"quote\\and-more-chars'
    assert key[4:] not in redact(json.dumps({"k": key}), key)


def test_errors_rendered_in_a_protected_context_never_carry_the_key() -> None:
    async def request() -> str:
        protect(KEY)
        status, body, _ = render(ProviderError(f"upstream said: token {KEY[2:20]} refused"))
        assert status == 502
        return str(body)

    assert leaked_runs(asyncio.run(request())) == []
    # another request's context knows nothing of it (and is not blanked by it)
    _, body, _ = contextvars.Context().run(render, ProviderError(f"plain {KEY}"))
    assert KEY in str(body)


def test_a_job_error_bound_for_the_execution_history_is_redacted() -> None:
    async def step() -> str:
        protect(KEY)
        return str(TransientJobError(f"ModelScope answered 503 for {KEY}"))

    assert leaked_runs(asyncio.run(step())) == []


def test_log_lines_are_redacted_with_the_requests_key() -> None:
    stream = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    old = handler.setStream(stream)
    try:

        async def request() -> None:
            protect(KEY)
            logger.warning("provider answered", extra={"body": f"bad token {KEY}"})
            try:
                raise ValueError(f"boom {KEY[5:]}")
            except ValueError:
                logger.exception("unexpected")

        asyncio.run(request())
    finally:
        handler.setStream(old)
    written = stream.getvalue()
    assert "provider answered" in written and "boom" in written
    assert leaked_runs(written) == []


_KEY_CHARS = st.sampled_from('abcXYZ0189-_./+="\\é猫\n')


@settings(max_examples=300, deadline=None)
@given(
    secret=st.text(_KEY_CHARS, min_size=MIN_KEY, max_size=90),
    before=st.text(_KEY_CHARS, max_size=40),
    after=st.text(_KEY_CHARS, max_size=40),
    start=st.integers(min_value=0, max_value=90),
    length=st.integers(min_value=MIN_RUN, max_value=90),
    escaped=st.booleans(),
)
def test_no_run_of_a_secret_survives_in_any_text(
    secret: str, before: str, after: str, start: int, length: int, escaped: bool
) -> None:
    # Given a text holding a run of a secret's characters (as it is or JSON-escaped), among
    # characters of the same alphabet (so runs can also form across its edges)
    form = json.dumps(secret)[1:-1] if escaped else secret
    run = form[start % len(form) :][:length]
    text = before + run + after
    # When it is redacted, Then no run of MIN_RUN characters of either form is left in it
    out = redact(text, secret)
    for shown in {secret, json.dumps(secret)[1:-1]}:
        pieces = {shown[i : i + MIN_RUN] for i in range(len(shown) - MIN_RUN + 1)}
        assert not any(out[i : i + MIN_RUN] in pieces for i in range(len(out) - MIN_RUN + 1))
