"""End to end (the official `openai` SDK over HTTP, the fake ModelScope on loopback): a model id
outside the image catalogue is treated by the stated rule and the answer says how
(`x-model-treatment`), and a provider's own "model not found" is a 404 `model_not_found` naming
the ids the client probably meant (`imagegw.providers.catalogue`)."""

from __future__ import annotations

import openai
import pytest

from fakes.modelscope import FakeModelScope
from imagegw.providers.catalogue import TREATMENT_HEADER

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"
CHAT_MODEL = "Qwen/Qwen3-VL-30B-A3B-Instruct"


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0, timeout=30)


def test_a_model_id_typo_is_a_404_naming_the_id_meant(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # When a client asks for a chat with a typo in an image model's id
    with pytest.raises(openai.NotFoundError) as refused:
        client(gateway_url).chat.completions.create(
            model="Qwen/Qwen-Imag", messages=[{"role": "user", "content": "a fox"}]
        )

    # Then the provider's own "does not exist" reaches it as a 404 model_not_found, saying how
    # the id was treated and which known ids are closest
    error = refused.value
    assert error.code == "model_not_found"
    assert "does not exist" in error.message
    assert "not in the image catalogue: passed on as a chat model" in error.message
    assert "The closest known ids: Qwen/Qwen-Image" in error.message
    # and it went to the provider's chat API once, and no image task was started
    assert [r["body"]["model"] for r in fake_ms.chat_requests] == ["Qwen/Qwen-Imag"]
    assert fake_ms.submissions == []


def test_an_unknown_image_id_is_sent_as_an_image_model_and_a_404_names_the_id_meant(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    # When a client asks the Images API for an id that names an image model, not in the
    # catalogue, which the provider does not have
    with pytest.raises(openai.NotFoundError) as refused:
        client(gateway_url).images.generate(model="Qwen/Qwen-Imagee", prompt="a fox")

    # Then it was submitted as an image task, and the provider's 404 names the close ids
    assert [s["body"]["model"] for s in fake_ms.submissions] == ["Qwen/Qwen-Imagee"]
    assert refused.value.code == "model_not_found"
    assert "Qwen/Qwen-Image" in refused.value.message.split("closest known ids:")[1]


def test_answers_say_how_an_id_outside_the_catalogue_was_treated(
    gateway_url: str, fake_ms: FakeModelScope
) -> None:
    sdk = client(gateway_url)
    # A chat model: passed on, and the answer says so
    chat = sdk.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.headers[TREATMENT_HEADER] == "not in the image catalogue: passed on as a chat model"
    assert chat.parse().choices[0].message.content
    # An image model the provider has but the catalogue does not list: made, and said so
    made = sdk.images.with_raw_response.generate(model="MAILAND/majicflus_v1", prompt="a fox")
    assert made.headers[TREATMENT_HEADER] == "not in the image catalogue: sent as an image model"
    assert made.parse().data
    # A catalogue model: no such header
    listed = sdk.images.with_raw_response.generate(model="Qwen/Qwen-Image", prompt="a fox")
    assert TREATMENT_HEADER not in listed.headers
