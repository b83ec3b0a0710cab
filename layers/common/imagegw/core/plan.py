"""Plan: any front end's input -> one checked, provider-agnostic job (`GenerationRequest`).

Chat and the Images API both plan here (the same checks in the same order); a durable job's
steps rebuild the planned job from its spec with `restore`. Refusals of the input-image count
are worded by the front end (`Wording`); every other refusal is the provider's own 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from pydantic import SecretStr

from imagegw.infra.media import InputImage
from imagegw.providers.base import GenerationRequest, ModelKind, Provider
from imagegw.providers.options import ALIASES, COMMON
from imagegw.providers.refusals import ImageCountError, Wording, chat_words
from imagegw.providers.sizes import SIZE_FIELDS, resolve

#: OpenAI's standard chat parameters: meaningless to an image model, ignored without a word
#: (chat clients send them with every request)
CHAT_STANDARD: Final = frozenset(
    {
        "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens",
        "presence_penalty", "frequency_penalty", "repetition_penalty", "stop", "user",
        "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice",
        "parallel_tool_calls", "functions", "function_call", "response_format",
        "stream_options", "metadata", "store", "service_tier", "modalities", "audio",
        "prediction", "reasoning_effort", "reasoning", "verbosity", "web_search_options",
        "safety_identifier", "prompt_cache_key", "enable_thinking", "thinking_budget",
        "thinking", "include_reasoning", "seed", "n", "stream",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Ask:
    """What a front end read from its request, before any provider check."""

    model: str
    kind: ModelKind
    prompt: str
    #: the options as the client sent them (`n` included), for `Provider.prepare`
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: how many input images came with the request
    image_count: int = 0
    #: the request field a too-long prompt is blamed on
    prompt_param: str = "messages"


def plan(
    provider: Provider, ask: Ask, api_key: SecretStr, words: Wording = chat_words
) -> GenerationRequest:
    """The checked job of `ask` (raises the 400 of the first problem found)."""
    provider.check_prompt(ask.prompt, param=ask.prompt_param)
    fields = client_sizes(provider, ask)
    n = provider.requested_images(fields)
    try:
        options = provider.prepare(ask.model, ask.kind, fields, ask.image_count)
    except ImageCountError as exc:
        raise words(exc.refusal) from None
    return restore(provider.name, ask.model, ask.kind, ask.prompt, api_key, options, n)


def client_sizes(provider: Provider, ask: Ask) -> dict[str, Any]:
    """The fields with every size parameter clients send (`width`/`height`, an aspect ratio,
    OpenAI's named sizes) turned into the one `size` the model takes (`imagegw.providers.sizes`)."""
    return resolve(
        ask.fields,
        provider.size_limits(ask.model, ask.kind),
        passes_named=provider.takes_named_sizes(ask.model),
    )


def ignored_fields(
    provider: Provider, fields: Mapping[str, Any], model: str, kind: ModelKind
) -> list[str]:
    """The fields of a chat request that nothing reads: neither a standard chat parameter nor
    something `model` uses (a common option or alias, a size field, the provider's own). A
    typo (`stpes`) lands here, and so does `loras` for a model without LoRAs; the front end
    tells the client so."""
    unused = provider.unused_options(model, kind)
    used = {name for name in COMMON if name not in unused}
    used |= {alias for alias, name in ALIASES.items() if name not in unused}
    if "size" not in unused:
        used |= SIZE_FIELDS
    known = used | provider.own_fields | (CHAT_STANDARD - COMMON)
    return sorted(name for name, value in fields.items() if name not in known and value is not None)


#: the header naming the fields a non-streamed chat answer ignored
IGNORED_HEADER: Final = "x-ignored-parameters"
#: how many ignored names a notice lists, and how much of each
NOTICE_NAMES: Final = 20
NOTICE_CHARS: Final = 64


def ignored_notice(names: list[str]) -> str:
    """Ignored field names as one short line, safe for a header (printable ASCII: other
    characters percent-encoded) and bounded (a hostile body may hold thousands of names)."""
    shown = [quote(name[:NOTICE_CHARS], safe="") for name in names[:NOTICE_NAMES]]
    if len(names) > NOTICE_NAMES:
        shown.append(f"and {len(names) - NOTICE_NAMES} more")
    return ", ".join(shown)


def restore(
    provider: str,
    model: str,
    kind: ModelKind,
    prompt: str,
    api_key: SecretStr,
    options: Mapping[str, Any],
    n: int,
    images: tuple[InputImage, ...] = (),
) -> GenerationRequest:
    """A job already planned (checked options in the provider's names), e.g. from a durable
    job's spec; the one place a `GenerationRequest` is made."""
    return GenerationRequest(
        provider=provider,
        model=model,
        kind=kind,
        prompt=prompt,
        api_key=api_key,
        options=dict(options),
        images=images,
        n=n,
    )
