"""Settings from the environment, and errors rendered in the OpenAI shape."""

from __future__ import annotations

import pytest

from imagegw.errors import (
    AuthenticationError,
    DeadlineExceededError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ProviderError,
    ProviderUnreachableError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
    StorageError,
    TransientProviderError,
    for_status,
    render,
)
from imagegw.infra.config import ENV_NAMES, Settings

# ----------------------------------------------------------------------------- Settings


def test_defaults() -> None:
    settings = Settings.from_env({})

    assert settings.modelscope_base_url == "https://api-inference.modelscope.cn/v1"
    assert settings.default_provider == "modelscope"
    assert settings.bucket is None
    assert settings.keepalive_interval <= 15  # issue 2: a keep-alive at least every 15 s


def test_every_variable_is_read() -> None:
    env = {
        "BUCKET": "my-bucket",
        "S3_ENDPOINT_URL": "http://127.0.0.1:5000",
        "AWS_REGION": "eu-west-1",
        "DEFAULT_PROVIDER": "modelscope",
        "MODELSCOPE_BASE_URL": "http://127.0.0.1:9000/v1",
        "GENERATION_TIMEOUT": "600",
        "POLL_INTERVAL": "0.5",
        "POLL_INTERVAL_MAX": "2",
        "PROGRESS_INTERVAL": "4",
        "KEEPALIVE_INTERVAL": "12",
        "PROVIDER_TIMEOUT": "20",
        "PRESIGN_TTL": "1200",
        "MAX_IMAGE_BYTES": "1000000",
        "MAX_BODY_BYTES": "2000000",
        "CORS_ALLOW_ORIGINS": "https://a.example, https://b.example",
    }
    assert set(env) <= set(ENV_NAMES)

    settings = Settings.from_env(env)

    assert settings.bucket == "my-bucket"
    assert settings.s3_endpoint_url == "http://127.0.0.1:5000"
    assert settings.aws_region == "eu-west-1"
    assert settings.modelscope_base_url == "http://127.0.0.1:9000/v1"
    assert settings.generation_timeout == 600.0
    assert settings.poll_interval == 0.5
    assert settings.poll_interval_max == 2.0
    assert settings.progress_interval == 4.0
    assert settings.keepalive_interval == 12.0
    assert settings.provider_timeout == 20.0
    assert settings.presign_ttl == 1200
    assert settings.max_image_bytes == 1_000_000
    assert settings.max_body_bytes == 2_000_000
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_empty_values_are_unset() -> None:
    settings = Settings.from_env({"BUCKET": "", "POLL_INTERVAL": "   ", "GENERATION_TIMEOUT": ""})

    assert settings == Settings()


def test_values_are_stripped() -> None:
    assert Settings.from_env({"BUCKET": "  b  ", "POLL_INTERVAL": " 1 "}).bucket == "b"


def test_aws_default_region_is_the_fallback() -> None:
    assert Settings.from_env({"AWS_DEFAULT_REGION": "ap-east-1"}).aws_region == "ap-east-1"


def test_aws_region_wins_over_aws_default_region() -> None:
    env = {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}

    assert Settings.from_env(env).aws_region == "eu-west-1"


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"PATH": "/bin", "TEMPERATURE": "hot"}) == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POLL_INTERVAL", "fast"),
        ("POLL_INTERVAL", "0"),
        ("GENERATION_TIMEOUT", "-5"),
        ("KEEPALIVE_INTERVAL", "30"),
        ("PRESIGN_TTL", "10"),
        ("PRESIGN_TTL", "1.5"),
        ("MAX_IMAGE_BYTES", "ten megabytes"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        Settings.from_env({name: value})


def test_poll_interval_max_below_poll_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="POLL_INTERVAL_MAX"):
        Settings.from_env({"POLL_INTERVAL": "2", "POLL_INTERVAL_MAX": "1"})


def test_poll_interval_max_equal_to_poll_interval_is_fine() -> None:
    settings = Settings.from_env({"POLL_INTERVAL": "2", "POLL_INTERVAL_MAX": "2"})

    assert settings.poll_interval == settings.poll_interval_max == 2.0


#: environments read without building the settings' validator (`Settings._plain`) or with it
ENVIRONMENTS = [
    {},
    {"BUCKET": "b", "GENERATION_TIMEOUT": "840", "FUNCTION_TIMEOUT": "900", "PRESIGN_TTL": "0900"},
    {"FUNCTION_TIMEOUT": "60", "GENERATION_TIMEOUT": "600"},  # held below the function's
    {"FUNCTION_TIMEOUT": "1.5e2", "POLL_INTERVAL": "1.25", "KEEPALIVE_INTERVAL": "15"},
    {"ACCESS_MODE": "keys", "ACCESS_TABLE": "t", "ACCESS_SECRET": "s", "CORS_SCOPE": "api-gateway"},
    {"IMAGE_LINKS": "inline", "DEMO_PROVIDER": "enabled", "ALLOW_PRIVATE_URLS": "yes"},
    {"PROVIDER_SETTINGS": "MODELSCOPE_BASE_URL=http://127.0.0.1:9/v1", "KEY_POOL_SHARE": "1"},
    {"JOB_POLL_INTERVAL": "0", "BATCH_CONCURRENCY": "1000", "MAX_BODY_BYTES": "+5"},
]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_settings_read_without_validation_are_those_validation_gives(env: dict[str, str]) -> None:
    # When the same environment is read by `from_env` and validated by pydantic field by field
    settings = Settings.from_env(env)
    values = {name: getattr(settings, name) for name in settings.model_fields_set}
    validated = Settings.model_validate(values)

    # Then both are the same settings, value for value and type for type
    assert settings == validated
    assert settings.model_fields_set == validated.model_fields_set
    for name in Settings.model_fields:
        assert type(getattr(settings, name)) is type(getattr(validated, name)), name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KEEPALIVE_INTERVAL", "15.5"),  # digits, out of bounds
        ("KEY_POOL_SHARE", "0"),
        ("CORS_SCOPE", "API-gateway"),  # not one of the words
        ("BATCH_MAX_ITEMS", "50001"),
    ],
)
def test_plain_values_out_of_bounds_are_refused_as_validation_refuses_them(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError, match=rf"invalid configuration: {name}: "):
        Settings.from_env({name: value})


# ----------------------------------------------------------------------------- render


def test_render_uses_the_openai_error_shape() -> None:
    status, body, headers = render(
        InvalidRequestError("'steps' must be an integer from 1 to 100; got 0.", param="steps")
    )

    assert status == 400
    assert body == {
        "error": {
            "message": "'steps' must be an integer from 1 to 100; got 0.",
            "type": "invalid_request_error",
            "param": "steps",
            "code": None,
        }
    }
    # said on every error: a bad request is not worth repeating
    assert headers["x-should-retry"] == "false"


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (RequestTimeoutError("slow body"), "false"),
        (ServiceUnavailableError("later"), "true"),
        (StorageError("bucket down"), "true"),
        (ProviderUnreachableError("connection refused"), "true"),
        (ProviderError("task failed"), "false"),
        (RateLimitError("slow down"), "true"),
        (GatewayError("unexpected"), "false"),
    ],
)
def test_every_error_says_whether_a_retry_is_safe(error: GatewayError, retry: str) -> None:
    assert render(error)[2]["x-should-retry"] == retry


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (AuthenticationError("no key"), 401, "authentication_error"),
        (NotFoundError("no such model", code="model_not_found"), 404, "not_found_error"),
        (PayloadTooLargeError("too big", code="image_too_large"), 413, "invalid_request_error"),
    ],
)
def test_render_statuses(error: GatewayError, status: int, kind: str) -> None:
    got_status, body, _ = render(error)

    assert got_status == status
    assert body["error"]["type"] == kind
    assert body["error"]["message"] == error.message
    assert body["error"]["code"] == error.code


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ProviderError("ModelScope task t-1 failed: nsfw", code="generation_failed"), 502),
        (TransientProviderError("ModelScope answered 503"), 502),
        (DeadlineExceededError("task t-1 did not finish within 840 s"), 504),
    ],
)
def test_generation_failures_must_not_be_retried_by_sdks(error: GatewayError, status: int) -> None:
    got_status, _, headers = render(error)

    assert got_status == status
    assert headers["x-should-retry"] == "false"


def test_rate_limit_may_be_retried_and_keeps_retry_after() -> None:
    error = RateLimitError(
        "ModelScope: Rate limit exceeded", code="rate_limit_exceeded", headers={"retry-after": "7"}
    )

    status, body, headers = render(error)

    assert status == 429
    assert body["error"]["message"] == "ModelScope: Rate limit exceeded"
    assert headers == {"retry-after": "7", "x-should-retry": "true"}
    assert error.headers == {"retry-after": "7"}  # rendering does not change the error


def test_retryable_can_be_set_per_error() -> None:
    assert render(ProviderError("x", retryable=True))[2]["x-should-retry"] == "true"


def test_unknown_exceptions_are_an_opaque_500() -> None:
    status, body, headers = render(KeyError("Authorization: Bearer ms-secret-token"))

    assert status == 500
    assert body["error"]["type"] == "server_error"
    assert body["error"]["code"] == "internal_error"
    assert "ms-secret-token" not in body["error"]["message"]
    assert "KeyError" not in body["error"]["message"]
    assert headers == {"x-should-retry": "false"}


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (413, PayloadTooLargeError),
        (429, RateLimitError),
        (500, ProviderError),
        (418, ProviderError),
    ],
)
def test_for_status(status: int, cls: type[GatewayError]) -> None:
    assert for_status(status) is cls
