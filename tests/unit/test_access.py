"""Gateway keys' pure rules: the key shape and its keyed hash, how long a refused token is set
aside, when a refused submission fails over, and the settings that keys mode needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import anyio
import httpx
import pytest

from imagegw.access.gate import Access, Aside, aside_until, provider_reset, window
from imagegw.access.gatekeys import key_hash, looks_like_key, masked, new_key, token_id
from imagegw.access.lease import set_aside_worthy
from imagegw.access.secret import Pools, SecretSource
from imagegw.access.table import AccessTable, settlement
from imagegw.errors import (
    AuthenticationError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
)
from imagegw.infra.config import Settings
from imagegw.providers.base import (
    GenerationRequest,
    ModelKind,
    Provider,
    Running,
    Started,
    TaskStatus,
)
from imagegw.runners.gateway import Gateway
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.schema import JobProgress, JobQuota

NOON = 1_764_504_000  # 2025-11-30 12:00:00 UTC


def test_new_keys_are_gateway_keys_of_at_least_128_random_bits() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert looks_like_key(key)
        assert len(key.removeprefix("gk-")) * 6 >= 128  # URL-safe base64: 6 bits a character
    assert not looks_like_key("ms-test-token") and not looks_like_key("gk-short")


def test_the_stored_hash_needs_the_pepper() -> None:
    key = new_key()
    assert key_hash(key, "pepper-1") != key_hash(key, "pepper-2")
    assert key not in key_hash(key, "pepper-1")
    with pytest.raises(ValueError, match="pepper"):
        key_hash(key, "")


def test_tokens_are_referred_to_and_shown_without_themselves() -> None:
    assert "ms-secret-token" not in token_id("ms-secret-token")
    assert token_id("ms-a") != token_id("ms-b")
    assert masked("ms-secret-token") == "ms-...en"
    assert masked("ms-0a1b2c3d-4e5f-6789-abcd-ef0123456789") == "ms-0...6789"
    assert masked("sk-short") == "sk..."


def test_a_refused_token_is_set_aside_until_it_is_changed() -> None:
    for error in (AuthenticationError("no"), PermissionDeniedError("no")):
        aside = aside_until("modelscope", error, NOON, "Qwen/Qwen-Image")
        assert aside.why == "refused" and aside.until - NOON > 365 * 86400
        assert aside.model is None  # the whole token


def test_a_403_about_one_model_sets_the_token_aside_for_that_model_only_for_a_day() -> None:
    error = PermissionDeniedError("ModelScope: You have no access to the model Qwen/Qwen-Image.")
    aside = aside_until("modelscope", error, NOON, "Qwen/Qwen-Image")
    assert aside == Aside(NOON + 4 * 3600, "model refused", "Qwen/Qwen-Image")
    # a 401 is about the token whatever it says
    assert aside_until("modelscope", AuthenticationError("model x"), NOON, "x").model is None


def test_an_exhausted_quota_sets_a_token_aside_until_the_providers_daily_reset() -> None:
    error = RateLimitError("ModelScope: You have exceeded today's quota")
    aside = aside_until("modelscope", error, NOON, "Qwen/Qwen-Image")
    # ModelScope resets at 00:00 Beijing time, 16:00 UTC
    assert aside == Aside(NOON + 4 * 3600, "quota", None)
    assert provider_reset("siliconflow", NOON) == NOON + 12 * 3600  # midnight UTC


def test_a_per_model_quota_sets_the_token_aside_for_that_model_only() -> None:
    model = "Qwen/Qwen-Image"
    by_words = RateLimitError(f"ModelScope: You have exceeded today's quota for model {model}")
    by_header = RateLimitError(
        "ModelScope: Request limit exceeded.",
        headers={"modelscope-ratelimit-model-requests-remaining": "0"},
    )
    for error in (by_words, by_header):
        assert aside_until("modelscope", error, NOON, model) == Aside(
            NOON + 4 * 3600, "quota", model
        )
    # the per-user count spent as well: the whole token, whatever the words
    both = RateLimitError(
        "ModelScope: limit for model",
        headers={
            "modelscope-ratelimit-model-requests-remaining": "0",
            "modelscope-ratelimit-requests-remaining": "0",
        },
    )
    assert aside_until("modelscope", both, NOON, model).model is None


def test_a_rate_limit_is_a_short_back_off() -> None:
    told = RateLimitError("slow down", headers={"retry-after": "7"})
    assert aside_until("siliconflow", told, NOON) == Aside(NOON + 7, "rate")
    assert aside_until("siliconflow", RateLimitError("slow down"), NOON) == Aside(NOON + 20, "rate")
    # a Retry-After of hours is not a quota: at most five minutes
    long = RateLimitError("slow down", headers={"retry-after": "86400"})
    assert aside_until("siliconflow", long, NOON).until == NOON + 300


def test_a_key_spends_its_share_of_the_pool_leaving_out_tokens_refused_for_good() -> None:
    ids = ["t0", "t1", "t2", "t3"]
    # half of four tokens, from a place given by the key's hash
    assert window(4, "00000002" + "0" * 56, 0.5, {}, ids, NOON) == [2, 3]
    assert window(4, "00000003" + "0" * 56, 0.5, {}, ids, NOON) == [3, 0]
    # a token refused for good is the owner's to replace, not part of anyone's share
    refused = {"t3": NOON + 10 * 365 * 86400}
    assert window(4, "00000003" + "0" * 56, 0.5, refused, ids, NOON) == [0, 1]
    # a token out of quota is: the key does not move on to the others' tokens
    spent = {"t3": NOON + 3600}
    assert window(4, "00000003" + "0" * 56, 0.5, spent, ids, NOON) == [3, 0]
    # no key, a share of 1, or a pool of one: the whole pool
    assert window(4, None, 0.5, {}, ids, NOON) == [0, 1, 2, 3]
    assert window(4, "00000003" + "0" * 56, 1.0, {}, ids, NOON) == [0, 1, 2, 3]
    assert window(1, "00000003" + "0" * 56, 0.5, {}, ids[:1], NOON) == [0]


def test_only_a_submission_refused_whole_fails_over() -> None:
    refused = RateLimitError("slow down")
    assert set_aside_worthy([refused, AuthenticationError("no")]) is not None
    # one call started (paid): never sent again
    assert set_aside_worthy([refused, Started("task-1")]) is None
    # a failure that is not the token's
    assert set_aside_worthy([ProviderError("broke")]) is None
    assert set_aside_worthy([]) is None


def test_keys_mode_needs_the_table_and_the_secret() -> None:
    with pytest.raises(ValueError, match="ACCESS_TABLE"):
        Settings.from_env({"ACCESS_MODE": "keys"})
    settings = Settings.from_env(
        {"ACCESS_MODE": "keys", "ACCESS_TABLE": "t", "ACCESS_SECRET": "s", "KEY_CACHE_TTL": "5"}
    )
    assert settings.access_mode == "keys" and settings.key_cache_ttl == 5
    assert Settings().access_mode == "mixed"
    with pytest.raises(ValueError, match="SECRET_CACHE_TTL"):
        Settings.from_env({"SECRET_CACHE_TTL": "301"})


# ----------------------------------------------------------------- durable jobs of gateway keys


class _Asides:
    """The access table's set-aside tokens (all a lease reads of it)."""

    def __init__(self, asides: dict[str, float]) -> None:
        self.found = asides

    def asides(self, provider: str) -> dict[str, float]:
        return dict(self.found)


class _Secret:
    def __init__(self, *tokens: str) -> None:
        self.pools = Pools(pepper="p", tokens={"modelscope": tokens})

    async def aread(self) -> Pools:
        return self.pools


def _access(asides: dict[str, float], *tokens: str) -> Access:
    return Access(
        Settings(),
        table=cast("AccessTable", _Asides(asides)),
        secret=cast("SecretSource", _Secret(*tokens)),
        clock=lambda: NOON,
    )


class _WritableAsides(_Asides):
    """The table's set-aside tokens, written to as a lease sets one aside."""

    def set_aside(
        self, provider: str, token: str, until: float, now: float, expired: list[str]
    ) -> None:
        self.found[token] = until


def test_a_token_refused_for_good_leaves_the_keys_share_and_the_next_one_serves() -> None:
    # Given a two-token pool and a gateway key whose half of it is the token the provider refuses
    refused, good = "ms-refused", "ms-good"
    access = Access(
        Settings(),
        table=cast("AccessTable", _WritableAsides({})),
        secret=cast("SecretSource", _Secret(refused, good)),
        clock=lambda: NOON,
    )
    lease = anyio.run(access.lease, "modelscope", "00000000" + "0" * 56)
    assert lease.token.get_secret_value() == refused

    # When the provider refuses that token (a 401: refused until the owner changes it)
    bad_key = AuthenticationError("Invalid API key", code="invalid_api_key")
    token = anyio.run(lease.fail_over, [bad_key], "Qwen/Qwen-Image")

    # Then the key's share is the pool without it, and the same request goes on with the other
    assert token is not None and token.get_secret_value() == good


def test_a_jobs_lease_starts_on_the_token_it_names_or_the_next_one_not_set_aside() -> None:
    a, b, c = "ms-a", "ms-b", "ms-c"
    ref = f"pool:modelscope:{token_id(b)}"

    async def lease(asides: dict[str, float]) -> str | None:
        leased = await _access(asides, a, b, c).lease_at(ref)
        return None if leased is None else leased.token.get_secret_value()

    # the token the job names, while usable
    assert anyio.run(lease, {}) == b
    # set aside meanwhile: the next one in the pool (wrapping round), not a set-aside one
    assert anyio.run(lease, {token_id(b): NOON + 60}) == c
    assert anyio.run(lease, {token_id(b): NOON + 60, token_id(c): NOON + 60}) == a
    # back by now: itself again
    assert anyio.run(lease, {token_id(b): NOON - 1}) == b
    # removed by the owner: none
    assert anyio.run(lambda: _access({}, a, c).lease_at(ref)) is None


def test_a_job_whose_every_token_is_set_aside_is_told_when_one_comes_back() -> None:
    asides = {token_id("ms-a"): NOON + 30, token_id("ms-b"): NOON + 7200}
    with pytest.raises(RateLimitError) as refused:
        anyio.run(_access(asides, "ms-a", "ms-b").lease_at, f"pool:modelscope:{token_id('ms-b')}")
    assert refused.value.code == "provider_tokens_exhausted"
    assert refused.value.retryable is True  # back within a minute: the job tries again
    assert refused.value.headers["retry-after"] == "30"


def test_a_jobs_lease_keeps_to_its_keys_share_of_the_pool() -> None:
    a, b, c, d = "ms-a", "ms-b", "ms-c", "ms-d"
    ref = f"pool:modelscope:{token_id(c)}"
    key = "00000002" + "0" * 56  # half of four tokens from position 2: c and d

    async def lease(asides: dict[str, float], key: str | None = key) -> str:
        leased = await _access(asides, a, b, c, d).lease_at(ref, key)
        assert leased is not None
        return leased.token.get_secret_value()

    # the token the job names, then the next one of the key's share
    assert anyio.run(lease, {}) == c
    assert anyio.run(lease, {token_id(c): NOON + 60}) == d
    # its whole share set aside: the pool's 429, never a token of the other keys' share
    with pytest.raises(RateLimitError) as refused:
        anyio.run(lease, {token_id(c): NOON + 60, token_id(d): NOON + 90})
    assert refused.value.code == "provider_tokens_exhausted"
    assert refused.value.headers["retry-after"] == "60"
    # a job without a key (no share) may use the whole pool
    assert anyio.run(lease, {token_id(c): NOON + 60, token_id(d): NOON + 90}, None) == a


class _ByToken(Provider):
    """A provider named as ModelScope whose tokens answer as `refusals` says (a started task
    otherwise); it records the token of every submission."""

    name = "modelscope"
    title = "ModelScope"
    catalog = ()

    def __init__(self, settings: Settings, refusals: dict[str, Exception]) -> None:
        super().__init__(settings, cast("httpx.AsyncClient", None))
        self.refusals, self.tokens = refusals, list[str]()

    def prepare(
        self, model: str, kind: ModelKind, fields: Mapping[str, Any], image_count: int
    ) -> dict[str, Any]:
        return {}

    async def start(self, request: GenerationRequest) -> Started:
        token = request.api_key.get_secret_value()
        self.tokens.append(token)
        if token in self.refusals:
            raise self.refusals[token]
        return Started(f"task-{len(self.tokens)}")

    async def check(self, request: GenerationRequest, task_id: str) -> TaskStatus:
        return Running("RUNNING")


def test_a_gateway_keys_job_fails_over_only_within_the_keys_share() -> None:
    # Given a pool of two tokens, a key whose half of it is the first (KEY_POOL_SHARE 0.5), and
    # a provider that refuses that token for its spent daily quota
    mine, others = "ms-mine", "ms-others"
    key = "00000000" + "0" * 56
    settings = Settings(key_pool_share=0.5)
    access = Access(
        settings,
        table=cast("AccessTable", _WritableAsides({})),
        secret=cast("SecretSource", _Secret(mine, others)),
        clock=lambda: NOON,
    )
    spent = RateLimitError("You have exceeded today's quota", code="rate_limit_exceeded")
    provider = _ByToken(settings, {mine: spent})
    kit = Gateway(settings, access=access, providers={"modelscope": provider})
    job = {
        "id": "job-" + "0" * 32,
        "owner": "o",
        "fingerprint": "f",
        "created": 0,
        "provider": "modelscope",
        "model": "Qwen/Qwen-Image",
        "kind": "image",
        "prompt": "a cat",
        "quota": JobQuota(key=key, at=NOON).model_dump(),
    }
    sealed = f"pool:modelscope:{token_id(mine)}"

    # When the job's Submit step runs with that token
    async def submit() -> dict[str, Any]:
        try:
            return await steps.submit({"job": job, "key": sealed, "wait_seconds": 1}, kit)
        finally:
            await kit.aclose()

    state = anyio.run(submit)

    # Then it fails with the pool's 429 as the key's own requests would, and the other keys'
    # token is never spent on it
    progress = JobProgress.model_validate(state)
    assert progress.status == "failed", state
    assert progress.book().final_error().code == "provider_tokens_exhausted"
    assert provider.tokens == [mine]


def test_a_jobs_settlement_is_one_transaction_marked_by_the_job() -> None:
    at = NOON
    items = settlement("t", "job-1", "h" * 64, "m", 4, 1, at)
    marker, day, month = (item["Update"] for item in items)
    # a marker written only if the job was not settled before (a step run twice settles once)
    assert marker["Key"] == {"pk": {"S": "settled#job-1"}}
    assert marker["ConditionExpression"] == "attribute_not_exists(pk)"
    assert int(marker["ExpressionAttributeValues"][":ttl"]["N"]) > at
    # the 3 images not made given back on the day of the reservation, the 1 made counted in
    # its month
    assert day["Key"] == {"pk": {"S": f"usage#{'h' * 64}#d#2025-11-30"}}
    assert day["ExpressionAttributeValues"][":n"] == {"N": "-3"}
    assert month["Key"] == {"pk": {"S": f"usage#{'h' * 64}#m#2025-11"}}
    assert month["ExpressionAttributeValues"][":n"] == {"N": "1"}
    assert day["ExpressionAttributeNames"]["#m"] == "model:m"
    # nothing made: all given back, nothing counted; all made: nothing given back
    keys = [i["Update"]["Key"]["pk"]["S"] for i in settlement("t", "j", "h", "m", 2, 0, at)]
    assert keys == ["settled#j", "usage#h#d#2025-11-30"]
    assert len(settlement("t", "j", "h", "m", 2, 2, at)) == 2
    assert len(settlement("t", "j", "h", "m", 2, 5, at)) == 2  # never more than reserved


@pytest.mark.parametrize("mode", ["open", "mixed", "keys"])
def test_a_cut_off_gateway_key_is_refused_in_every_mode_never_passed_on(mode: str) -> None:
    # Given a gateway in each mode whose table and secret must not be asked anything
    class Untouchable:
        def __getattr__(self, name: str) -> None:
            raise AssertionError(f"looked up {name}")

    settings = Settings(access_mode=mode, access_table="t", access_secret="s")
    access = Access(
        settings,
        table=cast("AccessTable", Untouchable()),
        secret=cast("SecretSource", Untouchable()),
    )
    whole = new_key()
    # When a client sends a gateway key cut off by a bad paste
    for bearer in ("gk-abc", whole[:20], "gk-x"):
        with pytest.raises(AuthenticationError) as refused:
            anyio.run(access.caller, bearer, "modelscope")
        # Then it is a 401 invalid_api_key that does not repeat the key
        assert refused.value.code == "invalid_api_key"
        assert bearer not in refused.value.message
    # while a provider token is still the client's own in open and mixed modes
    if mode != "keys":
        assert not anyio.run(access.caller, "ms-test-token", "modelscope").keyed


def test_a_token_added_after_a_no_token_answer_serves_the_next_request_at_once() -> None:
    import boto3

    from fakes.aws import mocked_account
    from imagegw.errors import ServiceUnavailableError

    with mocked_account():
        # Given a gateway whose secret is cached for 5 minutes and holds no ModelScope token
        client = boto3.client("secretsmanager", region_name="us-east-1")
        arn = client.create_secret(Name="access", SecretString=Pools("p").dump())["ARN"]
        now = [100.0]
        source = SecretSource(arn, 300, "us-east-1", client=client, clock=lambda: now[0])
        access = Access(
            Settings(access_table="t", access_secret=arn),
            table=cast("AccessTable", _Asides({})),
            secret=source,
        )
        with pytest.raises(ServiceUnavailableError) as empty:
            anyio.run(access.lease, "modelscope")
        assert empty.value.code == "no_provider_token"

        # When the owner adds one (`make token`) after that answer
        client.put_secret_value(
            SecretId=arn, SecretString=Pools("p", {"modelscope": ("ms-new",)}).dump()
        )

        # Then a request once REFRESH_GAP (2 s) has passed is served with it, without waiting
        # for the 5-minute cache to expire
        now[0] += 2
        assert anyio.run(access.lease, "modelscope").token.get_secret_value() == "ms-new"


def test_a_set_aside_write_prunes_the_records_names_already_back() -> None:
    import boto3

    from fakes.aws import REGION, mocked_account, new_access_table

    with mocked_account():
        # Given a pool token refused for three models over time (each adds a name to the shared
        # record), and for one of them still refused
        client = boto3.client("dynamodb", region_name=REGION)
        table = AccessTable(new_access_table(), REGION, client)
        now = [float(NOON)]
        access = Access(
            Settings(),
            table=table,
            secret=cast("SecretSource", _Secret("ms-a")),
            clock=lambda: now[0],
        )
        tok = token_id("ms-a")
        table.set_aside("modelscope", f"{tok}@old-1", NOON + 60)
        table.set_aside("modelscope", f"{tok}@old-2", NOON + 120)
        table.set_aside("modelscope", f"{tok}@still", NOON + 86400)
        anyio.run(access.asides, "modelscope")  # what this instance has read of them

        # When, after the first two came back, the token is set aside for another model
        now[0] = NOON + 600
        anyio.run(access.set_aside, "modelscope", f"{tok}@new", NOON + 3600, "per-model quota")

        # Then the record holds what is still set aside, and none of the names already back
        assert table.asides("modelscope") == {
            f"{tok}@still": NOON + 86400,
            f"{tok}@new": NOON + 3600,
        }


def test_a_name_set_aside_again_by_another_instance_is_not_pruned() -> None:
    import boto3

    from fakes.aws import REGION, mocked_account, new_access_table

    with mocked_account():
        table = AccessTable(
            new_access_table(), REGION, boto3.client("dynamodb", region_name=REGION)
        )
        # Given a name this instance saw expire, which another instance has set aside again
        table.set_aside("modelscope", "tok@m", NOON + 7200)
        # When this instance writes, believing it back
        table.set_aside("modelscope", "tok@n", NOON + 60, NOON + 600, ["tok@m"])
        # Then it is kept (and the write is made all the same)
        assert table.asides("modelscope") == {"tok@m": NOON + 7200, "tok@n": NOON + 60}


def test_a_set_aside_write_prunes_a_bounded_number_of_names() -> None:
    import boto3

    from fakes.aws import REGION, mocked_account, new_access_table
    from imagegw.access.table import PRUNE_AT_MOST

    with mocked_account():
        table = AccessTable(
            new_access_table(), REGION, boto3.client("dynamodb", region_name=REGION)
        )
        old = [f"tok@m{i}" for i in range(PRUNE_AT_MOST + 5)]
        for name in old:
            table.set_aside("modelscope", name, NOON)
        # one write removes PRUNE_AT_MOST of them, the next the rest
        table.set_aside("modelscope", "tok@a", NOON + 60, NOON + 10, old)
        assert len(table.asides("modelscope")) == 1 + 5
        left = [name for name in table.asides("modelscope") if name != "tok@a"]
        table.set_aside("modelscope", "tok@b", NOON + 60, NOON + 10, left)
        assert table.asides("modelscope") == {"tok@a": NOON + 60, "tok@b": NOON + 60}
