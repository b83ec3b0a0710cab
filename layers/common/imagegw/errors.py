"""The gateway's one error hierarchy and its rendering in the OpenAI error shape.

Every failure a client can see is a `GatewayError`; `render()` is the one place that turns an
error into a status, an `{"error": {...}}` body and headers. Messages never contain secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar

from imagegw.redaction import MAX_MESSAGE, cut


class GatewayError(Exception):
    """Base of every error a client sees."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    #: whether an OpenAI SDK may retry the request on its own (x-should-retry)
    retryable: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        if retryable is not None:
            self.retryable = retryable

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped body; the message redacted of every secret in play, then cut."""
        return {
            "error": {
                "message": cut(self.message, MAX_MESSAGE),
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationError(GatewayError):
    status = 401
    error_type = "authentication_error"


class PermissionDeniedError(GatewayError):
    status = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowedError(GatewayError):
    status = 405
    error_type = "invalid_request_error"


class ConflictError(GatewayError):
    """The request clashes with the state of a resource (an Idempotency-Key reused for another
    request). Repeating it cannot help, so SDKs must not retry (they retry 409 by default)."""

    status = 409
    error_type = "invalid_request_error"
    retryable = False


class RequestTimeoutError(GatewayError):
    """The client did not send its request body in time (BODY_TIMEOUT); nothing started."""

    status = 408
    error_type = "invalid_request_error"
    retryable = False


class PayloadTooLargeError(GatewayError):
    status = 413
    error_type = "invalid_request_error"


class RateLimitError(GatewayError):
    """The provider refused for quota or rate; nothing was started, so retrying is safe."""

    status = 429
    error_type = "rate_limit_error"
    retryable = True


class ProviderError(GatewayError):
    """The provider failed (a failed task, a 5xx, an answer we cannot read)."""

    status = 502
    error_type = "provider_error"
    retryable = False


class TransientProviderError(ProviderError):
    """A failure worth trying again later (connection error, 5xx while polling)."""

    def __init__(self, message: str, *, reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: what went wrong in a few words, without the provider or the task ("answered 503"),
        #: for messages that name those themselves
        self.reason = reason or message


class ProviderUnreachableError(ProviderError):
    """The provider could not be reached before anything was sent to it (connection refused,
    DNS, connect timeout): nothing started, so the client may safely try again."""

    retryable = True


class ServiceUnavailableError(GatewayError):
    """Something the gateway needs failed for now, before anything paid started: retry."""

    status = 503
    error_type = "server_error"
    retryable = True


class StorageError(ServiceUnavailableError):
    """The bucket failed (unreachable, throttled, denied). Raised by `ImageStore` only; callers
    that hold a paid result catch it and deliver the provider's own link instead."""


class ClientDisconnectedError(GatewayError):
    """The client closed its connection before the answer: the work for it was stopped. Nobody
    reads this answer; its status (nginx's 499) marks such requests in the request log."""

    status = 499
    error_type = "client_closed_request"
    retryable = False


class DeadlineExceededError(GatewayError):
    status = 504
    error_type = "timeout_error"
    retryable = False


class ConfigurationError(GatewayError):
    status = 500
    error_type = "server_error"
    retryable = False


class BrokenDeploymentError(ConfigurationError):
    """The deployed build is broken: a module a route needs does not import (a file or a
    dependency missing from the artifact). No request of the route can be answered until the
    build is fixed and deployed again: the service is unavailable (503), and retrying does not
    help."""

    status = 503
    retryable = False


class TransientJobError(Exception):
    """A durable-job step failed in a way worth trying again later: the provider could not be
    reached or answered 5xx while polling, refused a submission for rate (nothing started), or
    the bucket failed. The step's Lambda reports the class name as the error, and the state
    machine's `Retry` retries it with backoff (`statemachine/image_job.asl.json`). Never seen by
    clients; its message must hold no secret (it lands in the execution history), so it is
    redacted here."""

    def __init__(self, message: str) -> None:
        super().__init__(cut(message, MAX_MESSAGE))


def render(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers for any exception; unknown ones become an opaque 500."""
    if not isinstance(exc, GatewayError):
        exc = GatewayError("The gateway failed unexpectedly. See its logs.", code="internal_error")
        exc.retryable = False
    headers = dict(exc.headers)
    retryable = exc.retryable
    if retryable is None:  # said for every error, so SDKs never guess
        retryable = exc.status in (408, 429, 503)
    headers["x-should-retry"] = "true" if retryable else "false"
    return exc.status, exc.body(), headers


def for_status(status: int) -> type[GatewayError]:
    """The error class that fits a provider's HTTP status."""
    return {
        400: InvalidRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        408: RequestTimeoutError,
        413: PayloadTooLargeError,
        422: InvalidRequestError,
        429: RateLimitError,
    }.get(status, ProviderError)
