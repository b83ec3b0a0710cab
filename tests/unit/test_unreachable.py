"""A provider's `start` failing on the network: retryable only when nothing was sent (issue 8,
class 7). Every provider, driven through httpx's MockTransport."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from imagegw.errors import (
    DeadlineExceededError,
    GatewayError,
    ProviderError,
    ProviderUnreachableError,
    render,
)
from imagegw.infra.config import Settings
from imagegw.providers import PROVIDERS
from imagegw.providers.base import GenerationRequest, ModelKind

pytestmark = pytest.mark.anyio

#: failures before the request is on the wire: nothing can have started
NOT_SENT = [
    httpx.ConnectError("[Errno 111] Connection refused"),
    httpx.ConnectError("[Errno -2] Name or service not known"),  # DNS
    httpx.ConnectTimeout("timed out"),
    httpx.PoolTimeout("no free connection"),
]
#: failures after the request was sent: a paid task may have started
SENT = [
    httpx.ReadTimeout("timed out"),
    httpx.ReadError("connection reset"),
    httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    httpx.WriteError("broken pipe"),
]

#: the providers that call an API (the demo draws its pictures itself)
CALLING = sorted(name for name, cls in PROVIDERS.items() if cls.settings_model.model_fields)


def job(provider: str) -> GenerationRequest:
    return GenerationRequest(
        provider=provider,
        model="Qwen/Qwen-Image",
        kind=ModelKind.GENERATE,
        prompt="a red apple",
        api_key=SecretStr("ms-secret-key"),
    )


async def start_failing(name: str, failure: httpx.TransportError) -> GatewayError:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise failure

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        provider = PROVIDERS[name](Settings(), client)
        with pytest.raises(GatewayError) as caught:
            await provider.start(job(name))
    assert len(sent) == 1
    return caught.value


@pytest.mark.parametrize("failure", NOT_SENT, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("name", CALLING)
async def test_a_provider_not_reached_is_a_retryable_502(
    name: str, failure: httpx.TransportError
) -> None:
    error = await start_failing(name, failure)

    assert isinstance(error, ProviderUnreachableError)
    status, body, headers = render(error)
    assert status == 502
    assert body["error"]["code"] == "provider_unreachable"
    assert headers["x-should-retry"] == "true"
    assert "nothing was sent" in error.message
    assert "ms-secret-key" not in error.message


@pytest.mark.parametrize("failure", SENT, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("name", CALLING)
async def test_a_provider_lost_after_sending_must_not_be_retried(
    name: str, failure: httpx.TransportError
) -> None:
    error = await start_failing(name, failure)

    assert isinstance(error, ProviderError | DeadlineExceededError)
    assert not isinstance(error, ProviderUnreachableError)
    status, _, headers = render(error)
    assert status in (502, 504)
    assert headers["x-should-retry"] == "false"
    assert "may have started" in error.message
