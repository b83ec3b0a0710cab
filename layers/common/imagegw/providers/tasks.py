"""What the task-style providers (DashScope, Ark, BFL, Replicate, fal) share.

- `follow`: a polling URL the provider returned (BFL's `polling_url`, Replicate's `urls.get`,
  fal's `status_url`/`response_url`) is called only on the provider's own hosts: its base URL's
  origin (the owner's, through the provider client), or a host its `*_HOSTS` setting names
  (`*.bfl.ai`), through the guarded fetcher's client (public addresses only, no redirects). Any
  other URL is refused before anything is sent, so the provider's key never reaches another host.
- `submit`: a submission's POST and its failures in the gateway's errors.
- `polled`: a poll's answer, its transient failures (no answer, 5xx, 429) as
  `TransientProviderError` so both drivers try again.
- `moderated`: a provider's content-moderation refusal as a 400 `content_policy_violation`.
- `task_settings` and `TaskProvider`: each one's settings (`<NAME>_BASE_URL`, and `<NAME>_HOSTS`
  for those that follow URLs they return), how its key is sent, its hosts, the kind of a model
  it does not list, its batches and one poll read as JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from math import gcd
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from pydantic import SecretStr, create_model

from imagegw.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    PermissionDeniedError,
    ProviderError,
    TransientProviderError,
)
from imagegw.infra.config import BaseUrl, ProviderSettings, Settings
from imagegw.infra.lazy import httpx
from imagegw.infra.media import InlineImages
from imagegw.providers.base import (
    Failed,
    Finished,
    GenerationRequest,
    ModelKind,
    Provider,
    TaskStatus,
)
from imagegw.providers.upstream import (
    KeptPolls,
    as_response,
    error_for,
    redact,
    repeated_get,
    resend,
    send,
    unreachable,
)

if TYPE_CHECKING:
    from imagegw.infra.fetcher import Fetcher
    from imagegw.infra.transport import Whole

T = TypeVar("T")

#: the error code of a moderation refusal (OpenAI's own word for it)
CONTENT_POLICY: Final = "content_policy_violation"


def moderated(title: str, reason: str, key: SecretStr | None = None) -> InvalidRequestError:
    """A refusal by the provider's moderation: the client's prompt or image, not a fault."""
    return InvalidRequestError(
        f"{title} refused the request by its content moderation: {redact(reason, key)[:300]}",
        param="prompt",
        code=CONTENT_POLICY,
    )


#: one segment of a model id that becomes part of a URL path (`flux-pro-1.1`, `fal-ai`)
_SEGMENT: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def path_model(title: str, model: str, segments: tuple[int, int], version: bool = False) -> str:
    """A model id that the provider's URL path carries (`POST /{model}`), checked: `segments`
    (fewest, most) plain segments joined by `/`, with a `:version` when `version`. Anything else
    (`..`, `?`, `%`, a scheme) is a 400 before anything is sent, so a client cannot steer the
    call (with a pool token) to another path of the provider's API."""
    name, colon, tag = model.partition(":") if version else (model, "", "")
    parts = name.split("/")
    fewest, most = segments
    good = fewest <= len(parts) <= most and all(
        _SEGMENT.match(part) and part not in (".", "..") for part in parts
    )
    if not good or (colon and not re.fullmatch(r"[A-Za-z0-9]{1,128}", tag)):
        raise InvalidRequestError(
            f"'{model[:100]}' is not a {title} model id.", param="model", code="model_not_found"
        )
    return model


def host_patterns(setting: str) -> tuple[str, ...]:
    """A `*_HOSTS` setting (`*.bfl.ai, api.bfl.ai:8443`) as its entries, lower-cased."""
    return tuple(part.strip().lower() for part in setting.split(",") if part.strip())


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    from imagegw.infra.fetcher import DEFAULT_PORTS  # the guarded fetcher's: at first use

    port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
    return url.scheme, url.host.lower(), port


def is_own_host(url: httpx.URL, patterns: tuple[str, ...]) -> bool:
    """Whether `url`'s host (and port) is one the patterns name: `host`, `host:port`, or
    `*.domain` (the domain and its subdomains); a pattern without a port means the scheme's
    default port."""
    from imagegw.infra.fetcher import DEFAULT_PORTS

    _, host, port = _origin(url)
    for pattern in patterns:
        name, _, wanted = pattern.rpartition(":") if ":" in pattern else (pattern, "", "")
        if wanted and not wanted.isdigit():
            continue
        expected = int(wanted) if wanted else DEFAULT_PORTS.get(url.scheme, 0)
        if port != expected:
            continue
        if name.startswith("*."):
            domain = name[2:]
            if host == domain or host.endswith("." + domain):
                return True
        elif host == name:
            return True
    return False


def route(
    provider: Provider, url: str, patterns: tuple[str, ...], what: str
) -> tuple[httpx.URL, httpx.AsyncClient]:
    """Where a URL the provider returned is called (module doc): the URL, and the provider
    client for its base URL's origin or the guarded fetcher's for another of its own hosts.
    Any other URL is refused (`ProviderError`) before anything is sent."""
    from imagegw.infra.fetcher import DEFAULT_PORTS, where

    try:
        target: httpx.URL | None = httpx.URL(url)
        host = target.host if target is not None else ""  # an IDNA label that does not decode
    except (httpx.InvalidURL, TypeError, ValueError):  # raises here (a UnicodeError)
        target, host = None, ""
    base = httpx.URL(provider.base_url)
    if target is None or target.scheme not in DEFAULT_PORTS or not host:
        raise ProviderError(
            f"{provider.title} answered an unusable {what}; nothing was sent to it.",
            code="provider_error",
        )
    if _origin(target) == _origin(base):
        return target, provider.client
    secure = target.scheme == "https" or base.scheme == "http"  # http only where the base is
    if not (secure and is_own_host(target, patterns)):
        raise ProviderError(
            f"{provider.title} answered a {what} on a host that is not its own "
            f"({where(target)}); the key was not sent there.",
            code="provider_error",
        )
    return target, provider.fetcher.client


async def _called(provider: Provider, what: str, call: Awaitable[T]) -> T:
    """`call`'s answer; the guarded fetcher's refusal of its URL (`FetchError`) as the
    provider's error."""
    from imagegw.infra.fetcher import FetchError

    try:
        return await call
    except FetchError as exc:
        raise ProviderError(
            f"{provider.title}'s {what} is not reachable by the gateway ({exc.reason}).",
            code="provider_error",
        ) from None


async def follow(
    provider: Provider,
    url: str,
    headers: Mapping[str, str],
    patterns: tuple[str, ...],
    *,
    what: str = "polling URL",
) -> httpx.Response:
    """GET a URL the provider returned, with its key, only on its own hosts (`route`).
    Transport failures raise `httpx.TransportError` (the caller words them)."""
    target, client = route(provider, url, patterns, what)
    call = send(
        client,
        "GET",
        str(target),
        title=provider.title,
        deadline=provider.settings.provider_timeout,
        headers=dict(headers),
        timeout=provider.timeout,
    )
    return await _called(provider, what, call)


async def submit(
    provider: Provider,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
    key: SecretStr,
    moderation: Callable[[str], bool] | None = None,
) -> httpx.Response:
    """POST a submission to the provider's own API; a 2xx answer, or the gateway's error (a
    400 whose error code `moderation` accepts: a content-policy refusal)."""
    try:
        response = await send(
            provider.client,
            "POST",
            url,
            title=provider.title,
            deadline=provider.settings.provider_timeout,
            json=body if type(body) is InlineImages else dict(body),
            headers=dict(headers),
            timeout=provider.timeout,
        )
    except httpx.TransportError as exc:
        waited = provider.settings.provider_timeout
        raise unreachable(provider.title, exc, provider.settings, waited=waited) from None
    if not 200 <= response.status_code < 300:
        raise refusal(provider.title, response, key, moderation)
    return response


def error_code(response: httpx.Response) -> str:
    """The provider's error code: `{"code": ..}` (DashScope) or `{"error": {"code": ..}}`."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    inner = body.get("error")
    code = inner.get("code") if isinstance(inner, dict) else body.get("code")
    return code if isinstance(code, str) else ""


def refusal(
    title: str,
    response: httpx.Response,
    key: SecretStr,
    moderation: Callable[[str], bool] | None = None,
) -> GatewayError:
    """The gateway's error for a provider's error answer: `error_for`, with 402 (no credit) as
    a 403 a gateway-key pool sets aside, not a 502, and a 400 whose code `moderation` accepts
    as a content-policy refusal."""
    error = error_for(title, response, key=key)
    code = error_code(response)
    if response.status_code == 400 and moderation is not None and code and moderation(code):
        return moderated(title, f"{error.message.removeprefix(title + ': ')} ({code})", key)
    if response.status_code == 402:
        return PermissionDeniedError(error.message, code="insufficient_quota")
    return error


def auth_refusal(error: GatewayError) -> AuthenticationError:
    """A provider's 403 that means a bad key, as the 401 it is to the client."""
    return AuthenticationError(error.message, code="invalid_api_key")


async def polled(
    provider: Provider,
    task: str,
    url: str,
    headers: Mapping[str, str],
    key: SecretStr,
    patterns: tuple[str, ...] = (),
    *,
    what: str = "polling URL",
    done_statuses: frozenset[int] = frozenset({200}),
) -> httpx.Response:
    """One poll of `url` (the provider's own API, or a URL it returned: `follow`): an answer
    with a status in `done_statuses`, or 4xx as the provider's error; no answer, a 5xx or a
    429 as a `TransientProviderError` (tried again)."""
    call = follow(provider, url, headers, patterns, what=what)
    return as_response(await _answered(provider, task, key, call, done_statuses))


async def _answered(
    provider: Provider,
    task: str,
    key: SecretStr,
    call: Awaitable[Whole | httpx.Response],
    done_statuses: frozenset[int],
) -> Whole | httpx.Response:
    """`polled`'s rules for the answer of `call` (a poll sent, as `follow` or `resend` sends
    it): as it came when its status is in `done_statuses`."""
    try:
        response = await call
    except httpx.TransportError as exc:
        if isinstance(exc, httpx.TimeoutException):
            reason = f"no answer within {provider.settings.provider_timeout:g} s"
        else:
            reason = f"no connection ({type(exc).__name__})"
        raise TransientProviderError(
            f"{provider.title} could not be reached while polling task {task}: {reason}.",
            reason=reason,
            code="provider_unreachable",
        ) from None
    if response.status_code in done_statuses:
        return response
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientProviderError(
            f"{provider.title} answered {response.status_code} while polling task {task}.",
            reason=f"answered {response.status_code}",
            code="provider_unavailable",
        )
    raise refusal(provider.title, as_response(response), key)


def json_of(provider: Provider, response: Whole | httpx.Response, task: str) -> dict[str, Any]:
    """A poll's JSON object (read as httpx's `Response.json` reads it); an unreadable one is
    transient (polled again)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TransientProviderError(
            f"{provider.title} answered an unreadable status for task {task}.",
            reason="answered an unreadable status",
            code="provider_error",
        )
    return body


def aspect(width: int, height: int) -> str:
    """`1024x768` as the aspect ratio `4:3` (reduced)."""
    divisor = gcd(width, height) or 1
    return f"{width // divisor}:{height // divisor}"


def task_settings(name: str, base_url: str, hosts: str | None = None) -> type[ProviderSettings]:
    """The settings model of the task provider `name`: `<name>_base_url` (where its API is,
    `<NAME>_BASE_URL`) and, for a provider that returns URLs to poll, `<name>_hosts` (the hosts
    they may be on besides the base URL's, `<NAME>_HOSTS`: `host_patterns`)."""
    fields: dict[str, Any] = {f"{name}_base_url": (BaseUrl, base_url)}
    if hosts is not None:
        fields[f"{name}_hosts"] = (str, hosts)
    return create_model(
        f"{name.capitalize()}Settings",
        __base__=ProviderSettings,
        __module__=f"imagegw.providers.{name}",
        __doc__=f"{name}'s settings: where its API is"
        + (", and the hosts its polling URLs may be on." if hosts is not None else "."),
        **fields,
    )


class TaskProvider(Provider):
    """What DashScope, Ark, BFL, Replicate and fal share besides the calls above: how the key
    is sent, the hosts URLs they return may be on, the kind of a model they do not list, and
    one poll read as JSON, its request made once per task (`poll`). A provider that polls
    reads a poll's answer in `status`."""

    #: how a request's key is sent: the header, and what comes before the key in it
    key_header: ClassVar[tuple[str, str]] = ("Authorization", "Bearer ")
    #: an id the catalogue does not list edits when this matches it, and else generates (every
    #: model of the provider makes images); None: `Provider.classify`
    edit_ids: ClassVar[re.Pattern[str] | None] = None

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts, besides the base URL's, that URLs the provider returns may be on: its
        `<NAME>_HOSTS` setting (none when it declares none)."""
        field = f"{self.name}_hosts"
        if field not in self.settings_model.model_fields:
            return ()
        return host_patterns(self.settings.provider_setting(field.upper()))

    def _headers(self, request: GenerationRequest) -> dict[str, str]:
        header, prefix = self.key_header
        return {header: f"{prefix}{request.api_key.get_secret_value()}"}

    def catalogue_id(self, model: str) -> str:
        """The catalogue's id for `model` (what `classify` looks up)."""
        return model.lower()

    def classify(self, model: str) -> ModelKind:
        if self.edit_ids is None:
            return super().classify(model)
        wanted = self.catalogue_id(model)
        for info in self.catalog:
            if info.id == wanted:
                return info.kind
        return ModelKind.EDIT if self.edit_ids.search(model) else ModelKind.GENERATE

    def __init__(
        self, settings: Settings, client: httpx.AsyncClient, fetcher: Fetcher | None = None
    ) -> None:
        super().__init__(settings, client, fetcher)
        #: each task's status request, re-sent by each poll
        self._polls = KeptPolls()

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        """`status`. A task that ended (images, a failure, a refusal) is not polled again: its
        kept request is dropped (`poll`)."""
        try:
            status = await self.status(request, task_id)
        except TransientProviderError:
            raise
        except GatewayError:
            self._polls.drop(task_id, request.api_key)
            raise
        if isinstance(status, Finished | Failed):
            self._polls.drop(task_id, request.api_key)
        return status

    async def status(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        """What one poll of a submitted task says (`poll`)."""
        raise NotImplementedError(f"{self.name} has no tasks to check")

    async def poll(
        self,
        request: GenerationRequest,
        task_id: str,
        url: str,
        *,
        what: str = "polling URL",
        done_statuses: frozenset[int] = frozenset({200}),
    ) -> dict[str, Any]:
        """One poll of the task at `url` (`polled`'s rules, on the provider's hosts: `route`),
        its JSON object. The GET is made at the task's first poll and sent again as it was
        made by the next ones (`imagegw.providers.upstream.KeptPolls`): a URL not the
        provider's own is refused at each poll, and none is kept."""
        key = request.api_key
        repeated = self._polls.get(task_id, key)
        if repeated is None:
            target, client = route(self, url, self.hosts, what)
            made = repeated_get(
                client, str(target), headers=self._headers(request), timeout=self.timeout
            )
            repeated = self._polls.keep(task_id, key, made)
        deadline = self.settings.provider_timeout
        call = _called(self, what, resend(repeated, title=self.title, deadline=deadline))
        return json_of(self, await _answered(self, task_id, key, call, done_statuses), task_id)


def batches(request: GenerationRequest, most: int) -> list[GenerationRequest]:
    """`request` as calls of at most `most` images each (a provider's batch field)."""
    return [replace(request, n=min(most, request.n - done)) for done in range(0, request.n, most)]
