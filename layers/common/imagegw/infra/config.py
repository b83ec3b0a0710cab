"""Settings read from environment variables (one pydantic model, read once per process).

Settings of one provider (its base URL, its model list) are declared by the provider's module as
its own model (a `ProviderSettings` subclass, made known by `imagegw.providers.register`), not
listed here: they are read from their own variable (`MODELSCOPE_BASE_URL`) or from
`PROVIDER_SETTINGS` (`NAME=value;NAME=value`, the template's one parameter for all of them), and
kept in `Settings.provider_settings`. This module imports no provider (no layer above it).
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Final,
    Literal,
    Self,
    Union,
    get_args,
    get_origin,
)

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: the variable that holds provider settings as `NAME=value;NAME=value`
PROVIDER_SETTINGS: Final = "PROVIDER_SETTINGS"


@dataclass(frozen=True)
class ProviderSetting:
    """One setting a provider declares: its environment variable and default. A `base_url`
    setting's host is trusted for the provider's result images (`fetcher.provider_origins`)."""

    env: str
    default: str
    base_url: bool = False


class _BaseUrlMark:
    """Marks the field of a provider's settings that holds its API's base URL (`BaseUrl`)."""


#: the type of the field that says where a provider's API is (its host is trusted for results)
BaseUrl = Annotated[str, _BaseUrlMark()]


class ProviderSettings(BaseModel):
    """A provider's own settings, declared by its module as a subclass: one field a setting,
    named after its environment variable in lower case (`modelscope_base_url` is read from
    MODELSCOPE_BASE_URL or from `PROVIDER_SETTINGS`), with its default; the field typed
    `BaseUrl` is where the provider's API is. `imagegw.providers.register` makes them known
    here (`declare`): this module never imports a provider."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    @classmethod
    def declared(cls) -> tuple[ProviderSetting, ...]:
        """The settings as variables: name, default, and whether it is the base URL."""
        return tuple(
            ProviderSetting(
                name.upper(),
                str(field.default),
                base_url=any(isinstance(m, _BaseUrlMark) for m in field.metadata),
            )
            for name, field in cls.model_fields.items()
        )

    @classmethod
    def of(cls, settings: Settings) -> Self:
        """The provider's settings as configured (`Settings.provider_setting`)."""
        return cls.model_validate(
            {name: settings.provider_setting(name.upper()) for name in cls.model_fields}
        )


#: every provider's declared settings, by variable name (`declare`)
_DECLARED: dict[str, ProviderSetting] = {}


def declare(settings: type[ProviderSettings]) -> None:
    """Make a provider's settings known (called by `imagegw.providers.register`)."""
    for setting in settings.declared():
        _DECLARED[setting.env] = setting


def declared() -> Mapping[str, ProviderSetting]:
    """The declared provider settings. The providers register themselves when
    `imagegw.providers` is imported (every entry point does); before that nothing is declared,
    and reading provider settings then is a bug, not an empty configuration."""
    if not _DECLARED:
        raise RuntimeError("no provider is registered yet: import imagegw.providers first")
    return _DECLARED


#: environment variable -> settings field, for the gateway's own settings
_OWN_NAMES: dict[str, str] = {
    "BUCKET": "bucket",
    "S3_ENDPOINT_URL": "s3_endpoint_url",
    "AWS_REGION": "aws_region",
    "DEFAULT_PROVIDER": "default_provider",
    "DEMO_PROVIDER": "demo_provider",
    "GENERATION_TIMEOUT": "generation_timeout",
    "POLL_INTERVAL": "poll_interval",
    "POLL_INTERVAL_MAX": "poll_interval_max",
    "PROGRESS_INTERVAL": "progress_interval",
    "KEEPALIVE_INTERVAL": "keepalive_interval",
    "PROVIDER_TIMEOUT": "provider_timeout",
    "PRESIGN_TTL": "presign_ttl",
    "MAX_IMAGE_BYTES": "max_image_bytes",
    "MAX_BODY_BYTES": "max_body_bytes",
    "MAX_RESULT_BYTES": "max_result_bytes",
    "CORS_ALLOW_ORIGINS": "cors_allow_origins",
    "IMAGE_LINKS": "image_links",
    "PUBLIC_BASE_URL": "public_base_url",
    "CORS_SCOPE": "cors_scope",
    "JOB_STATE_MACHINE_ARN": "job_state_machine_arn",
    "JOB_KEY_ID": "job_key_id",
    "JOB_POLL_INTERVAL": "job_poll_interval",
    "JOB_TIMEOUT": "job_timeout",
    "BATCH_STATE_MACHINE_ARN": "batch_state_machine_arn",
    "BATCH_CONCURRENCY": "batch_concurrency",
    "BATCH_MAX_ITEMS": "batch_max_items",
    "ALLOW_PRIVATE_URLS": "allow_private_urls",
    "BODY_TIMEOUT": "body_timeout",
    "POLL_FAILURE_WINDOW": "poll_failure_window",
    "ACCESS_MODE": "access_mode",
    "ACCESS_TABLE": "access_table",
    "ACCESS_SECRET": "access_secret",
    "WEBHOOK_SECRET": "webhook_secret",
    "KEY_CACHE_TTL": "key_cache_ttl",
    "KEY_POOL_SHARE": "key_pool_share",
    "FUNCTION_TIMEOUT": "function_timeout",
    "SECRET_CACHE_TTL": "secret_cache_ttl",
}


class _EnvNames(Mapping[str, str]):
    """Environment variable -> settings name: the gateway's own, then every provider's."""

    def _all(self) -> dict[str, str]:
        return {**_OWN_NAMES, **{env: env.lower() for env in declared()}}

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


ENV_NAMES: Final[Mapping[str, str]] = _EnvNames()


def _provider_values(source: Mapping[str, str]) -> dict[str, str]:
    """The provider settings set in `source`: `PROVIDER_SETTINGS` pairs, then each one's own
    variable (which wins)."""
    known = declared()
    values: dict[str, str] = {}
    for pair in source.get(PROVIDER_SETTINGS, "").split(";"):
        if not pair.strip():
            continue
        name, sep, value = pair.partition("=")
        if not sep or name.strip() not in known:
            raise ValueError(
                f"invalid configuration: {PROVIDER_SETTINGS}: '{name.strip()[:40]}' is not a "
                f"provider setting (known: {', '.join(sorted(known))})"
            )
        values[name.strip()] = value.strip()
    for env in known:
        raw = source.get(env)
        if raw is not None and raw.strip():
            values[env] = raw.strip()
    return {env: value for env, value in values.items() if value}


#: the IMAGE_LINKS values whose results are copied into the bucket (`inline`: the types it does
#: not inline): a bucket is needed (`imagegw.core.deliver.check_bucket`), and the first provider
#: call starts building the S3 client (`imagegw.runners.gateway.Gateway`)
STORING_LINKS: Final = frozenset({"stored", "inline"})

#: seconds of a function's timeout kept for uploads and the answer after the generation's end
#: (a quarter of it for a function of less than two minutes)
FUNCTION_MARGIN: Final = 30.0


#: the numbers `Settings.from_env` reads without pydantic (`_plain_value`); any other spelling
#: ("1e3", "+5", "inf") is left to pydantic's validation
_PLAIN_INT: Final = re.compile(r"[0-9]+")
_PLAIN_FLOAT: Final = re.compile(r"[0-9]+(\.[0-9]+)?")
#: the bounds of a field (`Field(gt=0, le=15)`) a plain value is checked against
_BOUNDS: Final = {
    annotated_types.Gt: lambda value, m: value > m.gt,
    annotated_types.Ge: lambda value, m: value >= m.ge,
    annotated_types.Lt: lambda value, m: value < m.lt,
    annotated_types.Le: lambda value, m: value <= m.le,
}


def _plain_value(annotation: Any, metadata: list[Any], value: Any) -> tuple[bool, Any]:
    """(True, the value pydantic would give) for a value of the environment that plainly fits
    its field: text for a text field, one of a `Literal`'s words, digits for a number within its
    bounds, a `dict` of texts; (False, None) for anything else, which pydantic then validates
    (and words the error of)."""
    if get_origin(annotation) in (types.UnionType, Union) and type(None) in get_args(annotation):
        (annotation,) = (a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return (value in get_args(annotation), value)
    if annotation is str:
        return (isinstance(value, str), value)
    if get_origin(annotation) is dict:
        texts = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        return (texts, value)
    if annotation is int and isinstance(value, str) and _PLAIN_INT.fullmatch(value):
        number: float = int(value)
    elif annotation is float and (
        (isinstance(value, str) and _PLAIN_FLOAT.fullmatch(value))
        or type(value) in (int, float)  # a validator's own figure
    ):
        number = float(value)
    else:
        return (False, None)
    for mark in metadata:
        check = _BOUNDS.get(type(mark))
        if check is None or not check(number, mark):
            return (False, None)
    return (True, number)


class Settings(BaseModel):
    """Everything the gateway can be configured with. See docs/configuration.md.

    Built at its first validation (`defer_build`): `from_env` gives settings whose every value
    is plain without building the validator at all (`_plain`), which spares the API function's
    cold start the model's schema (docs/architecture.md "Cold start and memory")."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    bucket: str | None = None
    s3_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    default_provider: str = "modelscope"
    #: the demo provider (`imagegw.providers.demo`): served only when enabled
    demo_provider: Literal["enabled", "disabled"] = "disabled"
    #: the providers' own settings that are set, by variable name (the declared defaults
    #: apply to the others: `provider_setting`)
    provider_settings: dict[str, str] = Field(default_factory=dict)
    generation_timeout: float = Field(default=840.0, gt=0)
    #: the API function's own timeout (FUNCTION_TIMEOUT, from the template): GENERATION_TIMEOUT
    #: is held FUNCTION_MARGIN seconds below it, so the client always hears the timeout
    function_timeout: float | None = Field(default=None, gt=0)
    poll_interval: float = Field(default=0.75, gt=0)
    poll_interval_max: float = Field(default=3.0, gt=0)
    progress_interval: float = Field(default=5.0, gt=0)
    keepalive_interval: float = Field(default=10.0, gt=0, le=15.0)
    provider_timeout: float = Field(default=30.0, gt=0)
    presign_ttl: int = Field(default=900, ge=60, le=604800)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_body_bytes: int = Field(default=6 * 1024 * 1024, gt=0)
    max_result_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    cors_allow_origins: str = "*"
    #: how result images are linked: the provider's URL, a lasting gateway link to a copy in
    #: the bucket, or an inline data URI (see docs/api.md, "Image links")
    image_links: Literal["provider", "stored", "inline"] = "stored"
    #: the gateway's public URL for lasting links; by default taken from each request
    public_base_url: str | None = None
    #: which requests get the app's CORS headers: all, or only those that came through API
    #: Gateway (on Lambda the Function URL answers CORS itself; docs/api-gateway.md "API Gateway")
    cors_scope: Literal["all", "api-gateway"] = "all"
    #: durable jobs (docs/jobs.md "Async jobs"): the Step Functions state machine that runs them and
    #: the KMS key that seals provider keys in its executions; both unset: no jobs
    job_state_machine_arn: str | None = None
    job_key_id: str | None = None
    #: seconds the state machine waits between polls of a job's tasks
    job_poll_interval: int = Field(default=5, ge=0, le=3600)
    #: about how long a job may run at the provider before it fails (seconds)
    job_timeout: int = Field(default=3600, ge=1, le=86400)
    #: the Batch API's state machine (statemachine/image_batch.asl.json): batches run on it
    batch_state_machine_arn: str | None = None
    #: the most items of one batch at the provider at once (the Distributed Map's MaxConcurrency)
    batch_concurrency: int = Field(default=8, ge=1, le=1000)
    #: the most requests (lines) one batch file may hold
    batch_max_items: int = Field(default=50000, ge=1, le=50000)

    #: let the gateway fetch client-supplied URLs on loopback and private addresses: ONLY for
    #: tests against fakes on loopback; never set by the template (docs/security.md)
    allow_private_urls: bool = False
    #: seconds a client may take to send its whole request body before a 408
    body_timeout: float = Field(default=30.0, gt=0)
    #: seconds of nothing but failed polls (5xx, unreadable answers, no connection) after which
    #: an interactive request gives up with a 502 naming the provider's last error
    poll_failure_window: float = Field(default=60.0, gt=0)

    #: who may use the gateway (README "Sharing a deployment"): client tokens only (`open`),
    #: gateway keys and client tokens (`mixed`), or gateway keys only (`keys`)
    access_mode: Literal["open", "mixed", "keys"] = "mixed"
    #: the DynamoDB table of gateway keys, usage and set-aside tokens (`imagegw.access.table`)
    access_table: str | None = None
    #: the Secrets Manager secret with the key-hash pepper and the provider token pools
    access_secret: str | None = None
    #: seconds a key's record is trusted (a revoked key is refused within this)
    key_cache_ttl: float = Field(default=60.0, ge=0, le=300)
    #: the share of a provider's pool of server-held tokens one gateway key spends (its window
    #: of the pool, by the key's hash; `imagegw.access.gate`): 0.5 leaves at least half of a
    #: pool of two or more tokens to the other keys however much one key asks for; 1 is all
    key_pool_share: float = Field(default=0.5, gt=0, le=1)
    #: seconds the access secret is trusted (a changed token takes effect within this)
    secret_cache_ttl: int = Field(default=300, ge=0, le=300)
    #: the Secrets Manager secret the callers' webhook signing secrets are derived from
    #: (README "Webhooks"); none: durable jobs take no `webhook_url`
    webhook_secret: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _before(cls, data: Any) -> Any:
        return cls._prepared(data)

    @classmethod
    def _prepared(cls, data: Any) -> Any:
        """What the fields are validated from: `_provider_fields`, then
        `_generation_below_function`."""
        return cls._generation_below_function(cls._provider_fields(data))

    @classmethod
    def _generation_below_function(cls, data: Any) -> Any:
        """GENERATION_TIMEOUT held below FUNCTION_TIMEOUT (CloudFormation cannot compare two
        parameters): a generation never outlives the invocation that answers it."""
        if not isinstance(data, dict) or data.get("function_timeout") in (None, ""):
            return data
        try:
            function = float(data["function_timeout"])
            generation = float(data.get("generation_timeout", 840.0))
        except (TypeError, ValueError):
            return data  # the fields' own validation says what is wrong
        most = function - min(FUNCTION_MARGIN, function / 4)
        if generation > most:
            return {**data, "generation_timeout": most}
        return data

    @classmethod
    def _provider_fields(cls, data: Any) -> Any:
        """`Settings(modelscope_base_url=...)`: a provider setting by its lower-case name."""
        if not isinstance(data, dict):
            return data
        known = declared()
        moved = {k: v for k, v in data.items() if k.upper() in known and k not in cls.model_fields}
        if not moved:
            return data
        rest = {k: v for k, v in data.items() if k not in moved}
        own = dict(rest.get("provider_settings") or {})
        own.update({k.upper(): str(v) for k, v in moved.items()})
        return {**rest, "provider_settings": own}

    def provider_setting(self, env: str) -> str:
        """A provider setting's value: as set, else its declared default."""
        value = self.provider_settings.get(env)
        return value if value is not None else declared()[env].default

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # `settings.modelscope_base_url`: a provider setting by its lower-case name
            if not name.startswith("_") and name.upper() in declared():
                return self.provider_setting(name.upper())
            return super().__getattr__(name)

    @model_validator(mode="after")
    def _after(self) -> Settings:
        return self._check()

    def _check(self) -> Settings:
        """The checks of settings as a whole (ValueError)."""
        if self.poll_interval_max < self.poll_interval:
            raise ValueError("POLL_INTERVAL_MAX must be >= POLL_INTERVAL")
        if self.access_mode == "keys" and not (self.access_table and self.access_secret):
            raise ValueError("ACCESS_MODE=keys needs ACCESS_TABLE and ACCESS_SECRET")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default: the process environment); empty values are unset."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, field in _OWN_NAMES.items():
            raw = source.get(name)
            if raw is not None and raw.strip() != "":
                values[field] = raw.strip()
        values["provider_settings"] = _provider_values(source)
        if "aws_region" not in values and source.get("AWS_DEFAULT_REGION", "").strip():
            values["aws_region"] = source["AWS_DEFAULT_REGION"].strip()
        plain = cls._plain(values)
        if plain is not None:
            return plain
        try:
            return cls(**values)
        except ValidationError as exc:
            reverse = {v: k for k, v in _OWN_NAMES.items()}
            problems = "; ".join(
                f"{reverse.get(str(e['loc'][0]), 'settings') if e['loc'] else 'settings'}: "
                f"{e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"invalid configuration: {problems}") from None

    @classmethod
    def _plain(cls, values: dict[str, Any]) -> Settings | None:
        """The settings `values` make when each is plainly valid (`_plain_value`) and the
        model's checks pass, built without validation (`model_construct`); None otherwise, and
        `from_env` validates them as usual. Runs the model's validators as validation would:
        the `before` ones, each field, the `after` one."""
        data = cls._prepared(values)
        fields = cls.model_fields
        plain: dict[str, Any] = {}
        for name, value in data.items():
            field = fields.get(name)
            if field is None:
                return None
            fits, plain[name] = _plain_value(field.annotation, field.metadata, value)
            if not fits:
                return None
        settings = cls.model_construct(**plain)
        try:
            return settings._check()
        except ValueError:
            return None

    @property
    def cors_origins(self) -> list[str]:
        return [o.strip() for o in self.cors_allow_origins.split(",") if o.strip()]
