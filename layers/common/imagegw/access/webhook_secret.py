"""The deployment's webhook secret (Secrets Manager, `WEBHOOK_SECRET`), from which every
caller's signing secret is derived (`imagegw.core.webhooks.caller_secret`).

Read through Powertools Parameters, cached for SECRET_CACHE_TTL seconds (a rotation reaches
every function within that). The functions may only read it; the owner rotates it
(`python -m imagegw.frontends.admin rotate-webhook-secret`). The value is registered with
`redaction.protect`, so no log line or error carries it.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from imagegw.core.webhooks import caller_secret
from imagegw.errors import NotFoundError, ServiceUnavailableError
from imagegw.infra.config import Settings
from imagegw.infra.log import logger
from imagegw.redaction import protect


class WebhookSecret:
    """The deployment secret of one Secrets Manager secret, cached as the module says."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.name = settings.webhook_secret
        self.max_age = settings.secret_cache_ttl
        self.region = settings.aws_region
        self._client = client
        self._provider: Any = None

    @property
    def enabled(self) -> bool:
        return bool(self.name)

    def _get(self) -> Any:
        from aws_lambda_powertools.utilities import parameters

        if self._provider is None:
            if self._client is None:
                import boto3

                self._client = boto3.client("secretsmanager", region_name=self.region)
            self._provider = parameters.SecretsProvider(boto3_client=self._client)
        return self._provider.get(self.name, max_age=self.max_age)

    def read(self) -> str:
        """The deployment secret. A 404 where webhooks are off; a 503 while unreadable."""
        if not self.name:
            raise NotFoundError(
                "Webhooks are not enabled on this gateway (no WEBHOOK_SECRET).",
                code="webhooks_disabled",
            )
        try:
            value = self._get()
            text = value.decode() if isinstance(value, bytes) else str(value)
        except Exception as exc:  # its message may quote the value: only the type is told
            logger.warning("webhook secret unreadable", extra={"error": type(exc).__name__})
            raise ServiceUnavailableError(
                "The gateway's webhook secret cannot be read right now; try again.",
                code="webhooks_unavailable",
            ) from None
        if len(text) < 32:
            raise ServiceUnavailableError(
                "The gateway's webhook secret is not set up (too short).",
                code="webhooks_unavailable",
            )
        protect(text)
        return text

    def for_caller(self, owner: str) -> str:
        """The signing secret of the caller `owner`, registered as a secret too."""
        secret = caller_secret(self.read(), owner)
        protect(secret)
        return secret

    async def afor_caller(self, owner: str) -> str:
        return await anyio.to_thread.run_sync(self.for_caller, owner)
