"""Providers, one module each, and the registry of their names.

Adding a provider is its module (a `Provider` subclass that declares its name, its settings and
its model catalogue) and one `register` line below; nothing else lists providers.
"""

from __future__ import annotations

from imagegw.errors import NotFoundError
from imagegw.infra.config import Settings, declare
from imagegw.providers.base import Provider

#: route name -> provider class
PROVIDERS: dict[str, type[Provider]] = {}


def register(cls: type[Provider]) -> type[Provider]:
    """Make a provider known by its name, and its settings readable (`Settings`)."""
    PROVIDERS[cls.name] = cls
    declare(cls.settings_model)
    return cls


def lookup(name: str, settings: Settings | None = None) -> type[Provider]:
    """The provider called `name`; a 404 naming the known ones otherwise (with `settings`, a
    provider this deployment does not serve, such as the demo provider when off, is unknown)."""
    cls = PROVIDERS.get(name.lower())
    if cls is not None and settings is not None and not cls.available(settings):
        cls = None
    if cls is None:
        served = (n for n, c in PROVIDERS.items() if settings is None or c.available(settings))
        known = ", ".join(sorted(served))
        raise NotFoundError(
            f"Unknown provider '{name[:80]}'. Known providers: {known}.", code="unknown_provider"
        )
    return cls


def priors() -> dict[tuple[str, str], float]:
    """The catalogue's typical run times, by (provider, model): predictive polling's priors."""
    return {
        (name, info.id): info.seconds
        for name, cls in PROVIDERS.items()
        for info in getattr(cls, "catalog", ())
        if info.seconds is not None
    }


# the registrations: one line a provider
from imagegw.providers.ark import Ark  # noqa: E402
from imagegw.providers.bfl import BlackForestLabs  # noqa: E402
from imagegw.providers.dashscope import DashScope  # noqa: E402
from imagegw.providers.demo import Demo  # noqa: E402
from imagegw.providers.fal import Fal  # noqa: E402
from imagegw.providers.modelscope import ModelScope  # noqa: E402
from imagegw.providers.openai_compat import OpenAICompatible  # noqa: E402
from imagegw.providers.replicate import Replicate  # noqa: E402
from imagegw.providers.siliconflow import SiliconFlow  # noqa: E402

register(ModelScope)
register(SiliconFlow)
register(OpenAICompatible)
register(DashScope)
register(Ark)
register(BlackForestLabs)
register(Replicate)
register(Fal)
register(Demo)

__all__ = ["PROVIDERS", "Provider", "lookup", "priors", "register"]
