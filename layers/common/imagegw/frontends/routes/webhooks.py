"""Signed webhooks of durable jobs (README "Webhooks"), the API side.

- `GET /v1/webhooks/secret`: the caller's signing secret, `{"object": "webhook_secret",
  "secret": "whsec_…"}`, derived from the deployment's webhook secret and the caller's identity
  (a hash of its bearer token): nothing is stored, two callers never share one. The demo's
  anonymous caller (no token, or the placeholder `demo`) has none: a 401, and a `webhook_url`
  from it is a 400 (`webhook_needs_token`), as nothing tells one anonymous caller from another.
- `checked_webhook_url`: a job's `webhook_url`, checked before anything is stored or started:
  https (http only under ALLOW_PRIVATE_URLS, the tests' opt-in), no credentials, a host whose
  every address is public (the guarded fetcher's rules; checked again at each delivery, which
  follows no redirect). A bad one is a 400 with `param: "webhook_url"`.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagegw.access.webhook_secret import WebhookSecret
from imagegw.errors import InvalidRequestError
from imagegw.frontends.common import gateway_of
from imagegw.frontends.web import api_key, owner_for
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import Fetcher, FetchError

MAX_URL_CHARS: Final = 2048


async def checked_webhook_url(settings: Settings, value: Any) -> str | None:
    """`webhook_url` as sent (None when absent), or a 400 naming it."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        raise InvalidRequestError(
            f"'webhook_url' must be an https URL of at most {MAX_URL_CHARS} characters.",
            param="webhook_url",
            code="invalid_webhook_url",
        )
    if not settings.webhook_secret:
        raise InvalidRequestError(
            "Webhooks are not enabled on this gateway: leave 'webhook_url' out and poll the job.",
            param="webhook_url",
            code="webhooks_disabled",
        )
    url = value.strip()
    fetcher = Fetcher(settings)
    try:
        await fetcher.check(url, https_only=True)
    except FetchError:
        raise InvalidRequestError(
            "'webhook_url' must be an https URL of a public host, without credentials.",
            param="webhook_url",
            code="invalid_webhook_url",
        ) from None
    finally:
        await fetcher.aclose()
    return url


def not_a_job(value: Any) -> None:
    """A `webhook_url` on a request that does not run as a durable job: a 400 (it would never
    be called)."""
    if value is not None and value != "":
        raise InvalidRequestError(
            "'webhook_url' is for durable jobs: send the request with "
            "'Prefer: respond-async' (on a gateway that runs jobs), or leave it out.",
            param="webhook_url",
            code="webhook_needs_job",
        )


async def get_secret(request: Request) -> Response:
    gateway = gateway_of(request)
    provider = gateway.provider(request.path_params.get("provider"))  # unknown: a 404
    key = api_key(request)
    caller = await gateway.access.caller(key.get_secret_value(), provider.name)  # a 401
    owner = owner_for(caller)  # the demo's anonymous caller has no secret of its own: a 401
    secret = await WebhookSecret(gateway.settings).afor_caller(owner)
    return JSONResponse(
        {"object": "webhook_secret", "secret": secret},
        headers={"cache-control": "no-store"},
    )
