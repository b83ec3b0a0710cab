"""The provider key of a durable job, sealed with KMS so that it never appears in plain text in
the execution's input, output or history.

The API function seals the caller's bearer token with the stack's KMS key (`JOB_KEY_ID`) and an
encryption context that binds it to the job id; only the task functions that call the provider
may open it (their role has `kms:Decrypt`, the API function's only `kms:Encrypt`), and only for
that job: a sealed key copied into another execution does not open. Clients are created on
first use (moto in tests, the embedded stand-in on `make run`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from pydantic import SecretStr

from imagegw.errors import ConfigurationError, ServiceUnavailableError, TransientJobError

#: the encryption context's key; its value is the job id (IAM conditions name it)
CONTEXT_KEY: Final = "gateway-job"
#: KMS errors worth retrying (the state machine retries TransientJobError)
_PASSING: Final = frozenset(
    {
        "ThrottlingException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "LimitExceededException",
        "ServiceUnavailableException",
    }
)


def _code(exc: Exception) -> str:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return str(code) if code else type(exc).__name__


class KeySealer:
    """Seal and open provider keys with one KMS key."""

    def __init__(self, key_id: str | None, region: str, client: Any = None) -> None:
        self.key_id = key_id
        self.region = region
        self._kms = client

    @property
    def kms(self) -> Any:
        if self._kms is None:
            from botocore.config import Config

            from imagegw.infra import aws

            self._kms = aws.client(
                "kms",
                region_name=self.region,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._kms

    def _key_id(self) -> str:
        if not self.key_id:
            raise ConfigurationError(
                "Durable jobs need a KMS key for provider keys: set JOB_KEY_ID.",
                code="no_job_key",
            )
        return self.key_id

    def seal(self, secret: SecretStr, job_id: str) -> str:
        """The key encrypted for `job_id`, base64 (for the execution input)."""
        key_id = self._key_id()
        try:
            answer = self.kms.encrypt(
                KeyId=key_id,
                Plaintext=secret.get_secret_value().encode(),
                EncryptionContext={CONTEXT_KEY: job_id},
            )
        except Exception as exc:  # the message may not name the secret: only the error code
            raise ServiceUnavailableError(  # before the execution: nothing started
                f"The job could not be started: sealing the key failed ({_code(exc)}); "
                "nothing was started, so trying again is safe.",
                code="jobs_unavailable",
            ) from None
        return base64.b64encode(answer["CiphertextBlob"]).decode("ascii")

    def open(self, sealed: str, job_id: str) -> SecretStr:
        """The key sealed for `job_id`. Raises TransientJobError when KMS should be asked again,
        ConfigurationError when the sealed key does not open (wrong job, key or data)."""
        key_id = self._key_id()
        try:
            blob = base64.b64decode(sealed, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                "The job's sealed provider key is not base64.", code="job_key_unreadable"
            ) from None
        try:
            answer = self.kms.decrypt(
                KeyId=key_id, CiphertextBlob=blob, EncryptionContext={CONTEXT_KEY: job_id}
            )
        except Exception as exc:
            code = _code(exc)
            if code in _PASSING or "Endpoint" in code or "Connect" in code:
                raise TransientJobError(f"KMS could not open the job's key: {code}.") from None
            raise ConfigurationError(
                f"The job's sealed provider key does not open ({code}).",
                code="job_key_unreadable",
            ) from None
        return SecretStr(bytes(answer["Plaintext"]).decode())
