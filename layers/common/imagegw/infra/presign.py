"""Presigned GET URLs of the bucket's objects, signed here exactly as botocore signs them.

botocore's `generate_presigned_url("get_object", ...)` costs about 0.26 ms of CPU a link (its
request pipeline, endpoint rules and signer), in a worker thread as every boto3 call here. A
presigned GET is SigV4's query signing of a fixed request shape: `Presigner` learns that shape
(the object URL, its host, the credential scope's region and service) from one URL botocore
presigns, then signs each link itself: a canonical request, its hash, and an HMAC with the
signing key, which is fixed per secret, day, region and service and so derived once a day.
Links are the same, byte for byte, as botocore's for the same key, lifetime, credentials and
clock (tests/unit/test_presign.py compares them). The credentials are the client's own (its
session's, `get_frozen_credentials()`: rotated ones are picked up as botocore picks them up).

Only keys the gateway makes are signed here (`fits`: letters, digits, `_-./`, which no URL
quotes); anything unexpected in botocore's URL leaves every link to botocore.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import urllib.parse
from typing import Any, Final, Protocol

ALGORITHM: Final = "AWS4-HMAC-SHA256"
#: the key of the one URL botocore presigns to show the shape of the others
PROBE_KEY: Final = "imagegw-presign-probe"
#: object keys signed here: nothing in them is quoted in a URL or a canonical request
_PLAIN_KEY: Final = re.compile(r"[A-Za-z0-9_./-]+")
#: what botocore's query holds before the signature, in its order (a token after these)
_SIGNED_PARAMS: Final = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class Frozen(Protocol):
    """botocore's `ReadOnlyCredentials`."""

    access_key: str
    secret_key: str
    token: str | None


class Credentials(Protocol):
    """botocore's `Credentials` (and its refreshable kinds)."""

    def get_frozen_credentials(self) -> Frozen: ...


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


class Presigner:
    """Signs presigned GET URLs of one bucket, in the shape botocore gave for `PROBE_KEY`."""

    def __init__(self, prefix: str, host: str, region: str, service: str, creds: Any) -> None:
        #: the object URL up to the key, and its path (the canonical URI's start)
        self.prefix = prefix
        self.path = urllib.parse.urlsplit(prefix).path
        self.host = host
        self.region = region
        self.service = service
        self.credentials: Credentials = creds
        #: the last signing key: (secret, day) -> key
        self._key: tuple[str, str, bytes] | None = None

    @classmethod
    def learn(cls, probe: str, credentials: Credentials) -> Presigner | None:
        """The presigner of URLs shaped as `probe` (botocore's presigned GET of `PROBE_KEY`),
        or None when the shape is not the one signed here."""
        url = urllib.parse.urlsplit(probe)
        base = f"{url.scheme}://{url.netloc}{url.path}"
        if not base.endswith("/" + PROBE_KEY) or url.fragment or not url.hostname:
            return None
        names = [pair.partition("=")[0] for pair in url.query.split("&")]
        expected = [*_SIGNED_PARAMS, "X-Amz-Signature"]
        if names not in (expected, [*expected[:-1], "X-Amz-Security-Token", expected[-1]]):
            return None
        query = dict(urllib.parse.parse_qsl(url.query))
        if query["X-Amz-Algorithm"] != ALGORITHM or query["X-Amz-SignedHeaders"] != "host":
            return None
        parts = query["X-Amz-Credential"].split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            return None
        host = url.hostname if url.port in (None, _DEFAULT_PORTS.get(url.scheme)) else url.netloc
        return cls(base.removesuffix(PROBE_KEY), host, parts[2], parts[3], credentials)

    @staticmethod
    def fits(key: str) -> bool:
        """Whether `key` is one signed here (else botocore signs it)."""
        return _PLAIN_KEY.fullmatch(key) is not None and ".." not in key

    def _signing_key(self, secret: str, day: str) -> bytes:
        kept = self._key
        if kept is not None and kept[0] == secret and kept[1] == day:
            return kept[2]
        key = f"AWS4{secret}".encode()
        for part in (day, self.region, self.service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        self._key = (secret, day, key)
        return key

    def url(self, key: str, ttl: int, now: dt.datetime) -> str:
        """The presigned GET URL of `key` (`fits`), valid `ttl` seconds from `now` (UTC)."""
        frozen = self.credentials.get_frozen_credentials()
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        pairs = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", _quote(f"{frozen.access_key}/{scope}")),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(ttl)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if frozen.token is not None:
            pairs.append(("X-Amz-Security-Token", _quote(frozen.token)))
        canonical = "\n".join(
            (
                "GET",
                self.path + key,
                "&".join(f"{name}={value}" for name, value in sorted(pairs)),
                f"host:{self.host}\n",
                "host",
                "UNSIGNED-PAYLOAD",
            )
        )
        to_sign = "\n".join(
            (ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest())
        )
        signature = hmac.digest(
            self._signing_key(frozen.secret_key, day), to_sign.encode(), "sha256"
        )
        query = "&".join(f"{name}={value}" for name, value in pairs)
        return f"{self.prefix}{key}?{query}&X-Amz-Signature={signature.hex()}"
