"""The contract every registered provider keeps (README "Adding a provider"): it runs over
`imagegw.providers.PROVIDERS`, so a new provider is checked by registering it."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from imagegw.core.plan import Ask, plan
from imagegw.errors import AuthenticationError, InvalidRequestError, NotFoundError
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import provider_origins
from imagegw.providers import PROVIDERS, lookup
from imagegw.providers.base import ModelKind, Provider
from imagegw.providers.refusals import images_api_words

pytestmark = pytest.mark.anyio

NAMES = sorted(PROVIDERS)
#: the providers that call an API (the demo draws its pictures itself: it declares no setting)
CALLING = [name for name in NAMES if PROVIDERS[name].settings_model.model_fields]


def make(name: str, settings: Settings | None = None) -> Provider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    return PROVIDERS[name](settings or Settings(), client)


def first(provider: Provider, kind: ModelKind) -> str:
    return next(info.id for info in provider.catalog if info.kind is kind)


@pytest.mark.parametrize("name", NAMES)
def test_it_is_found_by_its_route_name(name: str) -> None:
    cls = lookup(name.upper())
    assert cls.name == name and name.isidentifier() and name == name.lower()
    assert cls.title


def test_an_unknown_provider_is_a_404_naming_the_known_ones() -> None:
    with pytest.raises(NotFoundError) as caught:
        lookup("nope")
    assert caught.value.status == 404 and caught.value.code == "unknown_provider"
    assert all(name in caught.value.message for name in NAMES)


def test_only_the_demo_calls_no_api() -> None:
    assert set(NAMES) - set(CALLING) == {"demo"}
    assert make("demo").base_url == ""


@pytest.mark.parametrize("name", CALLING)
def test_its_base_url_is_its_own_setting(name: str) -> None:
    # Given the provider's declared base-URL variable, set directly or in PROVIDER_SETTINGS
    env = PROVIDERS[name].base_url_setting.env
    direct = Settings.from_env({env: "http://127.0.0.1:9001/v1/"})
    bundled = Settings.from_env({"PROVIDER_SETTINGS": f" {env}=http://127.0.0.1:9002/v1 ;"})
    default = Settings.from_env({})

    # Then the provider calls that URL, and trusts its host for result images
    assert make(name, direct).base_url == "http://127.0.0.1:9001/v1"
    assert make(name, bundled).base_url == "http://127.0.0.1:9002/v1"
    assert make(name, default).base_url.startswith("https://")
    assert ("127.0.0.1", 9001) in provider_origins(direct)


def test_an_unknown_name_in_provider_settings_is_refused() -> None:
    with pytest.raises(ValueError, match="PROVIDER_SETTINGS"):
        Settings.from_env({"PROVIDER_SETTINGS": "NOT_A_SETTING=1"})


@pytest.mark.parametrize("name", NAMES)
def test_its_catalogue_lists_models_to_generate_and_edit(name: str) -> None:
    provider = make(name)
    ids = [info.id for info in provider.catalog]
    assert len(ids) == len(set(ids))
    for info in provider.catalog:
        assert provider.classify(info.id) is info.kind
    assert first(provider, ModelKind.GENERATE) and first(provider, ModelKind.EDIT)


@pytest.mark.parametrize("name", NAMES)
def test_it_plans_a_job_and_refuses_image_counts_as_data(name: str) -> None:
    provider = make(name)
    model = first(provider, ModelKind.GENERATE)
    job = plan(provider, Ask(model, ModelKind.GENERATE, "a red apple"), SecretStr("k"))
    assert job.provider == name and job.model == model and job.n == 1

    editor = first(provider, ModelKind.EDIT)
    with pytest.raises(InvalidRequestError) as chat:
        plan(provider, Ask(editor, ModelKind.EDIT, "make it blue"), SecretStr("k"))
    assert chat.value.code == "image_required" and chat.value.param == "messages"
    ask = Ask(editor, ModelKind.EDIT, "make it blue", prompt_param="prompt")
    with pytest.raises(InvalidRequestError) as images_api:
        plan(provider, ask, SecretStr("k"), images_api_words(edit=False))
    assert images_api.value.code == "image_required"
    assert "/v1/images/edits" in images_api.value.message


@pytest.mark.parametrize("name", NAMES)
def test_its_calls_make_exactly_n_images(name: str) -> None:
    provider = make(name)
    model = first(provider, ModelKind.GENERATE)
    job = plan(provider, Ask(model, ModelKind.GENERATE, "apples", {"n": 3}), SecretStr("k"))
    assert sum(part.n for part in provider.split(job)) == 3


@pytest.mark.parametrize("name", NAMES)
def test_its_settings_are_named_after_it(name: str) -> None:
    # a provider's settings are its own (one obvious place: its module), never another's
    for setting in PROVIDERS[name].settings_model.declared():
        assert setting.env.startswith(f"{name.upper()}_"), setting.env


@pytest.mark.parametrize("name", CALLING)
async def test_a_refused_key_is_a_401_and_goes_only_to_its_base_url(name: str) -> None:
    # Given the provider's API refusing the key, as every provider can
    key = "sk-contract-secret-0123456789"
    seen: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": {"message": "Invalid API key"}})

    settings = Settings.from_env({PROVIDERS[name].base_url_setting.env: "https://api.test/v1"})
    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    provider = PROVIDERS[name](settings, client)
    model = first(provider, ModelKind.GENERATE)
    job = plan(provider, Ask(model, ModelKind.GENERATE, "apples"), SecretStr(key))

    # When a task is started with it
    with pytest.raises(AuthenticationError) as caught:
        await provider.start(job)

    # Then the client hears a 401 with the provider's words and without the key, and the key
    # went to the base URL's host only, in a header
    assert caught.value.status == 401 and "Invalid API key" in caught.value.message
    assert key[:8] not in caught.value.message
    assert seen and {request.url.host for request in seen} == {"api.test"}
    assert all(key in " ".join(request.headers.values()) for request in seen)
    assert all(key not in str(request.url) for request in seen)
