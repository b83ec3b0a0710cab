"""A provider's settings are its own model (README "Adding a provider"): registering the provider
makes them readable from their variables and from PROVIDER_SETTINGS, with nothing else to list
them (the configuration imports no provider)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from imagegw.infra import config
from imagegw.infra.config import BaseUrl, ProviderSettings, Settings
from imagegw.infra.fetcher import provider_origins
from imagegw.providers import PROVIDERS, lookup, register
from imagegw.providers.base import Finished, GenerationRequest, ModelInfo, ModelKind, Provider


class AcmeSettings(ProviderSettings):
    acme_base_url: BaseUrl = "https://api.acme.example/v1"
    acme_style: str = "plain"


class Acme(Provider):
    """A provider as a new module would write it: its settings, its catalogue, its calls."""

    name = "acme"
    title = "Acme"
    settings_model = AcmeSettings
    catalog = (ModelInfo("acme-image", ModelKind.GENERATE),)

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        return {"style": AcmeSettings.of(self.settings).acme_style}

    async def start(self, request: GenerationRequest) -> Finished:
        return Finished(("https://api.acme.example/out.png",))


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> type[Provider]:
    """Acme registered with its one line, for this test only."""
    monkeypatch.setattr(config, "_DECLARED", dict(config._DECLARED))
    import imagegw.providers

    monkeypatch.setattr(imagegw.providers, "PROVIDERS", dict(PROVIDERS))
    register(Acme)
    return Acme


def test_one_registration_line_makes_its_settings_readable(acme: type[Provider]) -> None:
    # Given the provider's variables, set directly or in the one PROVIDER_SETTINGS parameter
    direct = Settings.from_env({"ACME_BASE_URL": "http://127.0.0.1:9005/v1", "ACME_STYLE": "ink"})
    bundled = Settings.from_env({"PROVIDER_SETTINGS": "ACME_STYLE=watercolour"})
    client = httpx.AsyncClient()

    # Then the provider is found by name, calls its own URL, reads its own typed settings,
    # and its host is trusted for its result images
    provider = lookup("acme")(direct, client)
    assert provider.base_url == "http://127.0.0.1:9005/v1"
    assert provider.prepare("acme-image", ModelKind.GENERATE, {}, 0) == {"style": "ink"}
    assert AcmeSettings.of(bundled).acme_style == "watercolour"
    assert AcmeSettings.of(Settings()).acme_base_url == "https://api.acme.example/v1"
    assert ("127.0.0.1", 9005) in provider_origins(direct)
    assert Settings(acme_style="oil").acme_style == "oil"  # type: ignore[call-arg,attr-defined]


def test_without_its_registration_its_variables_are_refused() -> None:
    # the configuration knows only registered providers' settings: a typo is an error
    assert "acme" not in PROVIDERS
    with pytest.raises(ValueError, match="ACME_STYLE"):
        Settings.from_env({"PROVIDER_SETTINGS": "ACME_STYLE=ink"})
