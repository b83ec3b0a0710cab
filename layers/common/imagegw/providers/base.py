"""The provider interface: one module per provider implements it.

A provider has two calls that serve both the interactive poll loop and the durable-job state
machine: `start(request)` submits work (`Started(task_id)`, or `Finished(images)` for
synchronous providers) and `check(request, task_id)` asks about it (`Running`, `Finished`,
`Failed`). `split(request)` says which calls make a request's `n` images (one image a call,
unless the provider has a batch parameter). Providers know nothing of HTTP frameworks, SSE or the
OpenAI chat shape; they raise the gateway's own errors (`imagegw.errors`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import SecretStr

from imagegw.errors import InvalidRequestError
from imagegw.infra.config import ProviderSetting, ProviderSettings, Settings
from imagegw.infra.lazy import httpx
from imagegw.infra.media import InputImage
from imagegw.providers.options import image_count
from imagegw.providers.refusals import ImageCount, ImageCountError
from imagegw.providers.sizes import SizeLimits

if TYPE_CHECKING:
    from imagegw.infra.fetcher import Fetcher


class ModelKind(StrEnum):
    """What a model does: makes images from text, edits images, or chats."""

    GENERATE = "image"
    EDIT = "edit"
    CHAT = "chat"


@dataclass(frozen=True)
class ModelInfo:
    """One entry of a provider's model catalog (data, not code)."""

    id: str
    kind: ModelKind
    #: about how long one task of the model runs (seconds): a prior for predictive polling,
    #: until the gateway has learned the model (`imagegw.core.schedule`)
    seconds: float | None = None


# ids not in a catalog: these words mark an image model (see docs/providers.md "Model classes")
_IMAGE_WORDS = re.compile(
    # `stable`, but not the StableLM / Stable Code chat models
    r"image|flux|kolors|diffusion|stable(?!-?lm|-?code)|(?<![a-z])sd|dall-e|cogview|majic|"
    r"hunyuan-?dit|"
    r"seedream|kandinsky|playground|wanx|imagen",
    re.IGNORECASE,
)


def classify(model: str, catalog: tuple[ModelInfo, ...]) -> ModelKind:
    """A model's kind: from the catalog when listed, else guessed from its id."""
    for info in catalog:
        if info.id.lower() == model.lower():
            return info.kind
    if _IMAGE_WORDS.search(model):
        return ModelKind.EDIT if "edit" in model.lower() else ModelKind.GENERATE
    return ModelKind.CHAT


def check_image_count(model: str, count: int, fewest: int, most: int | None) -> None:
    """Refuse (`ImageCountError`, a 400 each front end words its own way) a model given fewer
    or more input images than it takes."""
    refusal = ImageCount(model, count, fewest, most)
    if refusal.problem is not None:
        raise ImageCountError(refusal)


@dataclass(frozen=True)
class GenerationRequest:
    """A provider-agnostic image job. `options` are already checked and in the provider's names."""

    provider: str
    model: str
    kind: ModelKind
    prompt: str
    api_key: SecretStr
    options: Mapping[str, Any] = field(default_factory=dict)
    images: tuple[InputImage, ...] = ()
    n: int = 1
    #: the Images API's edit mask (only for providers with `supports_masks`)
    mask: InputImage | None = None


@dataclass(frozen=True)
class Started:
    """A task the provider took, by its id."""

    task_id: str


@dataclass(frozen=True)
class Running:
    """A task not ended yet: its state at the provider."""

    state: str
    #: the provider's own progress words, shown to people ("position 3 in the queue", "40 %")
    detail: str = ""


@dataclass(frozen=True)
class Finished:
    """A task that ended with its images."""

    images: tuple[str, ...]
    state: str = "SUCCEED"


@dataclass(frozen=True)
class Failed:
    """A task that failed, and why."""

    reason: str
    state: str = "FAILED"


TaskStatus = Running | Finished | Failed

_WXH = re.compile(r"^\s*(\d{1,6})\s*[xX*×]\s*(\d{1,6})\s*$")


@dataclass(frozen=True)
class Workload:
    """How much work a request asks of the provider, as the run-time estimates tell requests
    apart (`imagegw.core.schedule.bucket`): its pixels and its steps (None: not said, the
    model's default)."""

    pixels: int | None = None
    steps: int | None = None


def pixels_of(size: object) -> int | None:
    """The pixels of a size written `WxH` or `W*H` (None: anything else)."""
    match = _WXH.match(size) if isinstance(size, str) else None
    return int(match[1]) * int(match[2]) if match else None


def pixels_of_sides(width: object, height: object) -> int | None:
    """The pixels of a size given as two sides (None: not both whole numbers)."""
    if isinstance(width, bool) or isinstance(height, bool):
        return None
    return width * height if isinstance(width, int) and isinstance(height, int) else None


class Provider(ABC):
    """Base of every provider module."""

    name: ClassVar[str]
    title: ClassVar[str]
    #: the provider's own settings (its module's `ProviderSettings` model: the base URL, and any
    #: other setting it reads); `register` makes them readable from the environment
    settings_model: ClassVar[type[ProviderSettings]]
    #: where the provider's API is: the settings model's `BaseUrl` field, as a variable
    base_url_setting: ClassVar[ProviderSetting]
    #: the listed models; a class attribute, or set per instance from settings
    catalog: tuple[ModelInfo, ...]
    #: the longest prompt the provider takes (characters), or None
    max_prompt_chars: ClassVar[int | None] = None
    #: whether edits take a mask (`GenerationRequest.mask`); without, a mask is a 400
    supports_masks: ClassVar[bool] = False
    #: the hour (UTC) the provider's daily free quota resets (a token set aside for a spent
    #: quota comes back then: `imagegw.access.gate`)
    daily_reset_utc_hour: ClassVar[int] = 0
    #: whether requests must carry a token (the demo provider's need none: `web.authorize`)
    needs_token: ClassVar[bool] = True
    #: whether `check` needs the request's input images (the durable jobs' Poll step then
    #: reads the job's copies, which it leaves in the bucket otherwise): the demo's edit draws
    #: its picture from its input when the task ends
    checks_with_inputs: ClassVar[bool] = False

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, fetcher: Fetcher | None = None
    ) -> None:
        self.settings = settings
        #: the shared client for the provider's own API (the owner's base URL: trusted)
        self.client = client
        #: downloads URLs a client sent (the SSRF guard); its own client, built on first use
        if fetcher is None:
            from imagegw.infra.fetcher import Fetcher

            fetcher = Fetcher(settings)
        self.fetcher = fetcher
        self.timeout = httpx.Timeout(settings.provider_timeout, connect=10.0)

    @classmethod
    def available(cls, settings: Settings) -> bool:
        """Whether this deployment serves the provider (the demo provider only when on)."""
        return True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model = cls.__dict__.get("settings_model")
        if model is not None and model.model_fields:  # none: it calls no API (the demo)
            (cls.base_url_setting,) = (s for s in model.declared() if s.base_url)

    @property
    def base_url(self) -> str:
        return self.settings.provider_setting(self.base_url_setting.env).rstrip("/")

    def classify(self, model: str) -> ModelKind:
        return classify(model, self.catalog)

    @property
    def known_ids(self) -> tuple[str, ...]:
        """The catalogue's model ids (what a "model not found" suggests: `catalogue`)."""
        return tuple(info.id for info in self.catalog)

    def check_prompt(self, prompt: str, param: str = "messages") -> None:
        limit = self.max_prompt_chars
        if limit is not None and len(prompt) >= limit:
            raise InvalidRequestError(
                f"The prompt has {len(prompt)} characters; {self.title} takes fewer than {limit}.",
                param=param,
                code="prompt_too_long",
            )

    @abstractmethod
    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        """Check the request's options and input-image count; the options in wire names."""

    @abstractmethod
    async def start(self, request: GenerationRequest) -> Started | Finished:
        """Submit one image job."""

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        """Ask about a submitted job (only providers whose `start` returns `Started`)."""
        raise NotImplementedError(f"{self.name} has no tasks to check")

    #: request fields the provider reads besides the common options and size fields
    #: (`imagegw.core.plan.ignored_fields` names any other field as ignored)
    own_fields: ClassVar[frozenset[str]] = frozenset()

    def size_limits(self, model: str, kind: ModelKind) -> SizeLimits | None:
        """The sizes `model` takes (`imagegw.providers.sizes`), or None when it takes no size."""
        return SizeLimits(64, 2048)

    def unused_options(self, model: str, kind: ModelKind) -> frozenset[str]:
        """The common options (`imagegw.providers.options.COMMON`) `model` does without: accepted
        (and checked where the provider checks them), never sent, so named as ignored."""
        return frozenset()

    def takes_named_sizes(self, model: str) -> bool:
        """Whether `model` takes OpenAI's named sizes (`1792x1024`, `auto`) as they are."""
        return False

    def requested_images(self, fields: Mapping[str, Any]) -> int:
        """How many images the request's fields ask for (`n`; a provider may add its names)."""
        return image_count(fields.get("n"))

    #: the option (in the provider's own names, as `prepare` writes them) holding the size and
    #: the steps; a provider that writes its size another way overrides `workload`
    size_option: ClassVar[str] = "size"
    steps_option: ClassVar[str] = "steps"

    def workload(self, options: Mapping[str, Any]) -> Workload:
        """How much work a prepared request asks for: the provider reads its own format, so
        the core learns run times per size and steps without knowing any provider's."""
        steps = options.get(self.steps_option)
        return Workload(
            pixels=pixels_of(options.get(self.size_option)),
            steps=steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
        )

    def split(self, request: GenerationRequest) -> list[GenerationRequest]:
        """The calls that make `request.n` images, one `start` each, in the order of their
        images. Default: `n` calls of one image; a provider with a batch parameter makes several
        images a call (its `Finished` then holds them all)."""
        return [replace(request, n=1) for _ in range(request.n)]

    @property
    def chat_base_url(self) -> str | None:
        """Base URL of the provider's OpenAI-compatible chat API, where chat (non-image) models
        are passed through (`{base}/chat/completions`); None when it has none."""
        return None
