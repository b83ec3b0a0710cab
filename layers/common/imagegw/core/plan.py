"""Plan: any front end's input -> one checked, provider-agnostic job (`GenerationRequest`).

Chat and the Images API both plan here (the same checks in the same order); a durable job's
steps rebuild the planned job from its spec with `restore`. Refusals of the input-image count
are worded by the front end (`Wording`); every other refusal is the provider's own 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from imagegw.core.refusals import ImageCountError, Wording, chat_words
from imagegw.providers.base import GenerationRequest, InputImage, ModelKind, Provider


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
    n = provider.requested_images(ask.fields)
    try:
        options = provider.prepare(ask.model, ask.kind, ask.fields, ask.image_count)
    except ImageCountError as exc:
        raise words(exc.refusal) from None
    return restore(provider.name, ask.model, ask.kind, ask.prompt, api_key, options, n)


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
