"""Requests without a token go to the demo provider, when it is on.

With DEMO_PROVIDER=enabled (`make run`'s default; a stack's `DemoProvider` parameter), a request
on the un-prefixed routes (`/v1/chat/completions`, `/v1/images/...`, `/v1/models`) that carries
no `Authorization` header is served by the demo provider (`/demo/v1/...`): a fresh clone makes
pictures with no token at all. A request with a bearer goes to DEFAULT_PROVIDER as always, and
in the `keys` access mode nothing is rerouted (every request needs a gateway key there).
"""

from __future__ import annotations

from typing import Final

from imagegw.infra.config import Settings
from imagegw.providers.demo import Demo

#: the un-prefixed route families a token-less request is rerouted from
REROUTED: Final = ("/v1/chat/", "/v1/images/", "/v1/models")


def serves_tokenless(settings: Settings) -> bool:
    """Whether token-less requests on the un-prefixed routes go to the demo provider."""
    return Demo.available(settings) and settings.access_mode != "keys"


def demo_path(path: str) -> str:
    """The route of a token-less request on `path` (in the routes' spelling) when the demo
    serves token-less requests: the demo's own for the re-routed families, else `path`."""
    if path == "/v1/models" or path.startswith(REROUTED):
        return f"/{Demo.name}{path}"
    return path
