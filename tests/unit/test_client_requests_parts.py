"""The parts behind requests as clients send them: path spelling, size fitting, options in the
message, the ignored-field notice and progress words."""

from __future__ import annotations

from typing import Any

import pytest

from imagegw.core.plan import ignored_fields, ignored_notice
from imagegw.errors import InvalidRequestError
from imagegw.frontends import prompt_options
from imagegw.frontends.paths import normalize
from imagegw.frontends.streaming import progress_text, stage_words
from imagegw.infra.config import Settings
from imagegw.providers import PROVIDERS
from imagegw.providers.sizes import SizeLimits, fit, resolve
from imagegw.runners.generation import Progress

NAMES = frozenset(PROVIDERS)


@pytest.mark.parametrize(
    ("path", "routed"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/chat/completions", "/v1/chat/completions"),
        ("/v1//chat/completions", "/v1/chat/completions"),
        ("///v1///models///", "/v1/models"),
        ("/models/Qwen/Qwen-Image", "/v1/models/Qwen/Qwen-Image"),
        ("/siliconflow/images/edits", "/siliconflow/v1/images/edits"),
        ("/SiliconFlow/v1/images/edits/", "/SiliconFlow/v1/images/edits"),
        ("/jobs/job-1", "/v1/jobs/job-1"),
        ("/v1/v1/chat/completions", "/v1/chat/completions"),
        ("/openai/v1/v1/images/generations", "/openai/v1/images/generations"),
        ("/files/a.png", "/v1/files/a.png"),
        ("/", "/"),
        ("//", "/"),
        ("/healthz", "/healthz"),
        # not a provider, not a route family: left for the router's 404
        ("/acme/chat/completions", "/acme/chat/completions"),
        ("/v2/chat/completions", "/v2/chat/completions"),
        ("/modelscope/healthz", "/modelscope/healthz"),
    ],
)
def test_paths_take_the_routes_spelling(path: str, routed: str) -> None:
    assert normalize(path, NAMES) == routed


def test_no_provider_is_named_like_a_route_family() -> None:
    # the one condition under which a first segment could mean two things
    assert not {"chat", "models", "images", "jobs", "files", "v1"} & NAMES


RANGE = SizeLimits(64, 1024)


@pytest.mark.parametrize(
    ("sides", "limits", "fitted"),
    [
        ((800, 600), RANGE, (800, 600)),  # in range: as asked
        ((2048, 1024), RANGE, (1024, 512)),
        ((1920, 1080), RANGE, (1024, 576)),
        ((10, 20), RANGE, (64, 128)),
        ((5000, 50), RANGE, (1024, 64)),  # too long a shape for the range: clamped
        ((1920, 1080), SizeLimits(1, 1, choices=((1024, 1024), (1536, 1024))), (1536, 1024)),
        ((1000, 1000), SizeLimits(1, 1, choices=((1024, 1024), (1536, 1024))), (1024, 1024)),
    ],
)
def test_fit_keeps_the_shape_within_the_range(
    sides: tuple[int, int], limits: SizeLimits, fitted: tuple[int, int]
) -> None:
    assert fit(*sides, limits) == fitted


@pytest.mark.parametrize(
    ("fields", "resolved"),
    [
        ({"width": 512, "height": 512, "seed": 1}, {"size": "512x512", "seed": 1}),
        ({"aspect_ratio": "2:1"}, {"size": "1024x512"}),  # area of 1024x1024... fitted
        ({"aspectRatio": "1:1"}, {"size": "1024x1024"}),
        ({"size": "auto"}, {}),
        ({"size": "1792x1024"}, {"size": "1024x592"}),
        ({"size": "900x100"}, {"size": "900x100"}),  # explicit: the provider checks it
        ({"image_size": "900x100"}, {"image_size": "900x100"}),
    ],
)
def test_resolve_leaves_one_size(fields: dict[str, Any], resolved: dict[str, Any]) -> None:
    assert resolve(fields, RANGE) == resolved


def test_a_model_without_sizes_gets_none_but_bad_values_are_still_refused() -> None:
    assert resolve({"aspect_ratio": "16:9", "size": "1000x1000", "n": 1}, None) == {
        "size": "1000x1000",  # explicit: checked by the provider, which then drops it
        "n": 1,
    }
    assert resolve({"aspect_ratio": "16:9", "n": 1}, None) == {"n": 1}
    with pytest.raises(InvalidRequestError):
        resolve({"aspect_ratio": "sixteen by nine"}, None)


def test_openai_names_pass_as_sent_to_models_that_take_them() -> None:
    openai = SizeLimits(1024, 1536, choices=((1024, 1024), (1536, 1024), (1024, 1536)))
    assert resolve({"size": "auto"}, openai, passes_named=True) == {"size": "auto"}
    assert resolve({"size": "1536x1024"}, openai, passes_named=True) == {"size": "1536x1024"}
    assert resolve({"size": "1792x1024"}, openai, passes_named=True) == {"size": "1536x1024"}


@pytest.mark.parametrize(
    ("text", "prompt", "fields"),
    [
        ("a cat", "a cat", {}),
        ("a cat --ar 16:9", "a cat", {"aspect_ratio": "16:9"}),
        ("--seed 42 a cat", "a cat", {"seed": "42"}),
        ("a cat --no dogs, birds --n 2", "a cat", {"negative_prompt": "dogs, birds", "n": "2"}),
        ("a cat --no dogs\nin the rain", "a cat\nin the rain", {"negative_prompt": "dogs"}),
        ("a cat --SIZE 1024X1024", "a cat", {"size": "1024x1024"}),
        ("a cat --size 1024x768", "a cat", {"size": "1024x768"}),
        ("a cat --guidance 3.5 --cfg 4", "a cat", {"guidance": "4"}),  # the last one counts
        # not options: no space before the dashes, or no name after them
        ("a well--known cat -- on a mat", "a well--known cat -- on a mat", {}),
    ],
)
def test_options_are_taken_out_of_the_prompt(
    text: str, prompt: str, fields: dict[str, Any]
) -> None:
    assert prompt_options.parse(text) == prompt_options.PromptOptions(prompt, fields)


@pytest.mark.parametrize("text", ["a --steps 3.5", "a --n two", "a --size big", "a --w", "a --x 1"])
def test_malformed_options_are_400s_naming_the_message(text: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        prompt_options.parse(text)
    assert caught.value.param == "messages"
    assert caught.value.code == "invalid_inline_option"


def test_message_options_replace_the_body_fields_of_the_same_option() -> None:
    body = {"cfg": 2, "num_inference_steps": 10, "batch_size": 4, "size": "9x9", "seed": 1}
    merged = prompt_options.merge(
        body, {"guidance": "4", "steps": "30", "n": "2", "aspect_ratio": "1:1"}
    )
    assert merged == {"seed": 1, "guidance": "4", "steps": "30", "n": "2", "aspect_ratio": "1:1"}


def test_ignored_fields_leave_out_what_the_model_uses_and_standard_chat_parameters() -> None:
    from imagegw.providers.base import ModelKind

    siliconflow = PROVIDERS["siliconflow"](Settings(), None)  # type: ignore[arg-type]
    fields = {
        "stpes": 3,
        "temperature": 1,
        "batch_size": 2,  # SiliconFlow's own
        "loras": "x",  # ModelScope's, not SiliconFlow's
        "aspectRatio": "1:1",
        "cfg": 3,
        "nothing": None,
    }
    generate, edit = ModelKind.GENERATE, ModelKind.EDIT
    assert ignored_fields(siliconflow, fields, "Kwai-Kolors/Kolors", generate) == [
        "loras",
        "stpes",
    ]
    # an edit model takes no size: the aspect ratio is named too
    assert ignored_fields(siliconflow, fields, "Qwen/Qwen-Image-Edit", edit) == [
        "aspectRatio",
        "loras",
        "stpes",
    ]
    # OpenAI's own models take OpenAI's names only
    openai = PROVIDERS["openai"](Settings(), None)  # type: ignore[arg-type]
    asked = {"seed": 1, "steps": 9, "quality": "hd", "width": 9, "height": 9, "n": 2}
    assert ignored_fields(openai, asked, "dall-e-3", generate) == ["seed", "steps"]


def test_the_notice_is_bounded_and_header_safe() -> None:
    names = ["größe", "a b", *(f"f{i:02}" for i in range(30)), "x" * 500]
    notice = ignored_notice(names)
    assert notice.isascii() and notice.isprintable()
    assert notice.startswith("gr%C3%B6%C3%9Fe, a%20b, f00")
    assert notice.endswith("and 13 more")


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (Progress("PENDING", 1.0, where="ModelScope"), "queued at ModelScope"),
        (Progress("RUNNING", 1.0, where="ModelScope"), "generating"),
        (Progress("PROCESSING", 1.0), "generating"),
        (Progress("SUCCEED", 1.0), "saving the image"),
        (Progress("SUCCEED", 1.0, total=2), "saving the images"),
        (Progress("UPLOADING", 0.0), "sending the input image"),
        (Progress("FAILED", 1.0), "failed"),
        (Progress("SOMETHING_NEW", 1.0, where="ModelScope"), "working at ModelScope"),
    ],
)
def test_stages_are_told_in_words(event: Progress, words: str) -> None:
    assert stage_words(event) == words
    assert progress_text(event).startswith(words + " · ")
