"""The HTTP client for the providers' APIs, set up in one place for every driver.

The API function keeps one for its life (`Gateway.client`); the job task functions keep one
per Lambda instance (`imagegw.jobs.steps`), so a warm instance reuses its connections.
"""

from __future__ import annotations

import httpx

from imagegw.config import Settings


def provider_client(settings: Settings) -> httpx.AsyncClient:
    """A client for the owner's provider base URLs: explicit timeouts and pool limits, no
    redirects (a provider that redirects is not followed anywhere)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.provider_timeout, connect=10.0),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )
