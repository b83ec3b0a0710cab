"""Run-time estimates shared through the access table (`imagegw.access.shared_estimates`), on moto's
DynamoDB: what one Lambda instance learns, another predicts with; a table that fails or hangs
costs a generation nothing but the sharing."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from fakes.aws import REGION, TABLE_BUDGET, mocked_dynamodb, new_access_table
from imagegw.access.shared_estimates import (
    CACHE_SECONDS,
    FLUSH_SECONDS,
    MAX_PENDING,
    PAUSE,
    SharedEstimates,
    pk_of,
)
from imagegw.access.table import ESTIMATE_TTL, AccessTable
from imagegw.core.estimates import MemoryEstimates, fold, fold_all, learn
from imagegw.core.schedule import QUEUE_MODEL, Estimate, Key, Timing
from imagegw.infra.config import Settings
from imagegw.runners.gateway import Gateway
from imagegw.runners.stepfunctions import steps

pytestmark = pytest.mark.anyio
MODEL = Key("modelscope", "Qwen/Qwen-Image")
QUEUE = Key("modelscope", QUEUE_MODEL)
PRIORS = {("modelscope", "Qwen/Qwen-Image"): 20.0}
START = 1_800_000_000.0


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> Iterator[str]:
    with mocked_dynamodb():
        yield new_access_table()


def instance(
    name: str, clock: Clock, client: Any = None, budget: float = TABLE_BUDGET
) -> SharedEstimates:
    """One Lambda instance's store: its own client (unless given) and its own cache."""
    client = client or boto3.client("dynamodb", region_name=REGION)
    return SharedEstimates(AccessTable(name, REGION, client), PRIORS, clock=clock, budget=budget)


def item(name: str, key: Key) -> dict[str, Any]:
    client = boto3.client("dynamodb", region_name=REGION)
    found: dict[str, Any] = client.get_item(TableName=name, Key={"pk": {"S": pk_of(key)}})
    return found.get("Item", {})


def learned(*samples: float) -> Estimate:
    estimate = None
    for seconds in samples:
        estimate = fold(estimate, seconds)
    assert estimate is not None
    return estimate


def same(found: Estimate | None, wanted: Estimate) -> bool:
    return (
        found is not None
        and found.samples == wanted.samples
        and found.seconds == pytest.approx(wanted.seconds, abs=1e-3)
        and found.spread == pytest.approx(wanted.spread, abs=1e-3)
    )


async def test_what_one_instance_learns_another_predicts_with_once_its_cache_expires(
    table: str,
) -> None:
    # Given two instances on one table; the second has looked the model up (its prior)
    clock = Clock()
    first, second = instance(table, clock), instance(table, clock)
    assert await second.get(MODEL) == Estimate(20.0, 6.0, 0)

    # When the first learns three run times, a write window apart (each written as it ends)
    for seconds in (10.0, 12.0, 11.0):
        await first.record(MODEL, seconds)
        clock.now += FLUSH_SECONDS

    # Then the first predicts with them at once; the second keeps its copy for a minute...
    assert same(await first.get(MODEL), learned(10.0, 12.0, 11.0))
    clock.now = START + CACHE_SECONDS - 1
    assert await second.get(MODEL) == Estimate(20.0, 6.0, 0)
    # ...then predicts with what the first learned, as a fresh instance does at once
    clock.now += 1
    assert same(await second.get(MODEL), learned(10.0, 12.0, 11.0))
    assert same(await instance(table, clock).get(MODEL), learned(10.0, 12.0, 11.0))


async def test_priors_answer_for_unseen_models_and_a_learned_one_lives_90_days_on(
    table: str,
) -> None:
    # Given an instance on an empty table
    clock = Clock()
    store = instance(table, clock)

    # Then a catalogue model has its prior and an unknown one nothing; no item is written
    assert await store.get(MODEL) == Estimate(20.0, 6.0, 0)
    assert await store.get(Key("modelscope", "someone/unknown")) is None
    assert item(table, MODEL) == {}

    # When it learns the model, then again a day later
    await store.record(MODEL, 10.0)
    clock.now += 86400
    await store.record(MODEL, 14.0)

    # Then the item holds the estimate and expires 90 days after the last write
    found = item(table, MODEL)
    assert found["samples"] == {"N": "2"}
    assert float(found["seconds"]["N"]) == pytest.approx(learned(10.0, 14.0).seconds, abs=1e-3)
    assert int(found["expires_at"]["N"]) == int(START + 86400 + ESTIMATE_TTL)


async def test_a_concurrent_write_is_kept_and_the_sample_folded_into_it(table: str) -> None:
    # Given two instances that both know the model has no history yet
    clock = Clock()
    first, second = instance(table, clock), instance(table, clock)
    await first.get(MODEL)
    await second.get(MODEL)

    # When each learns a run time, the second from its (now stale) copy
    await first.record(MODEL, 10.0)
    await second.record(MODEL, 20.0)

    # Then the second's write did not replace the first's: both samples are in the item
    assert same(await instance(table, clock).get(MODEL), learned(10.0, 20.0))


@dataclass
class Rival:
    """A client whose every estimate update loses a race: another instance writes first."""

    client: Any
    name: str
    rival_writes: list[int] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def update_item(self, **kwargs: Any) -> Any:
        other = AccessTable(self.name, REGION, self.client)
        old = other.estimate(pk_of(MODEL), consistent=True)
        assert other.write_estimate(pk_of(MODEL), fold(old, 30.0), old.samples if old else 0, 0)
        self.rival_writes.append(1)
        return self.client.update_item(**kwargs)


async def test_a_sample_that_loses_the_race_twice_is_dropped_from_the_table_only(
    table: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an instance whose writes are each preceded by another instance's
    clock = Clock()
    rival = Rival(boto3.client("dynamodb", region_name=REGION), table)
    store = instance(table, clock, rival)

    # When it learns a run time: no error, two tries, one line naming how many were dropped
    with caplog.at_level(logging.INFO):
        await store.record(MODEL, 10.0)
    [dropped] = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped.samples == 1  # type: ignore[attr-defined]

    # Then the table holds the rival's two samples, intact, and not this one (dropped)...
    assert len(rival.rival_writes) == 2
    assert same(await store.get(MODEL), learned(30.0, 30.0))
    # ...which this instance's memory still has
    assert same(await store.memory.get(MODEL), learned(10.0))


class Broken:
    """A DynamoDB client that cannot be used: every call raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def get_item(self, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error

    update_item = get_item


THROTTLED = ClientError(
    {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
    "UpdateItem",
)


@pytest.mark.parametrize(
    "error",
    [THROTTLED, EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")],
    ids=["throttled", "unreachable"],
)
async def test_a_failing_table_leaves_the_instance_its_own_estimates(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an instance whose table fails
    clock = Clock()
    client = Broken(error)
    store = instance("access", clock, client)

    # When it predicts and learns (no exception reaches the caller)
    with caplog.at_level(logging.WARNING):
        assert await store.get(MODEL) == Estimate(20.0, 6.0, 0)
        for seconds in (10.0, 12.0, 11.0):
            await store.record(MODEL, seconds)
        found = await store.get(MODEL)

    # Then it predicts with what it learned itself, after one warning and one call only (the
    # table is left alone for a while)
    assert same(found, learned(10.0, 12.0, 11.0))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and client.calls == 1
    assert "slow down" not in caplog.text
    # after the pause it tries the table again
    clock.now += PAUSE
    assert same(await store.get(MODEL), learned(10.0, 12.0, 11.0))
    assert client.calls == 2


class Hanging:
    """A DynamoDB client whose reads come back (with a learned estimate) only when released,
    or after 10 s."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def get_item(self, **kwargs: Any) -> Any:
        self.release.wait(10)
        learned = {"seconds": {"N": "9"}, "spread": {"N": "1"}, "samples": {"N": "5"}}
        return {"Item": {"pk": kwargs["Key"]["pk"], **learned}}


async def test_a_table_that_does_not_answer_is_given_up_within_the_budget() -> None:
    # Given an instance whose table does not answer
    client = Hanging()
    store = instance("access", Clock(), client, budget=0.05)
    try:
        # When a generation asks for its model's estimate, then the prior answers
        assert await store.get(MODEL) == Estimate(20.0, 6.0, 0)
    finally:
        client.release.set()


class Counting:
    """A client that counts the reads (by consistency) and writes it makes."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.reads: list[bool] = []
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_item(self, **kwargs: Any) -> Any:
        self.reads.append(bool(kwargs.get("ConsistentRead")))
        return self.client.get_item(**kwargs)

    def update_item(self, **kwargs: Any) -> Any:
        self.writes += 1
        return self.client.update_item(**kwargs)


async def test_a_burst_that_finds_no_fresh_copy_reads_the_table_once(table: str) -> None:
    # Given an instance that has not read the model yet, and a table that knows it
    clock = Clock()
    await instance(table, clock).record(MODEL, 10.0)
    client = Counting(boto3.client("dynamodb", region_name=REGION))
    store = instance(table, clock, client)

    # When 50 generations of a burst ask for the estimate at once
    found = await asyncio.gather(*(store.get(MODEL) for _ in range(50)))

    # Then one read answered them all, with what the table holds
    assert client.reads == [False]
    assert all(same(estimate, learned(10.0)) for estimate in found)


async def test_a_generation_costs_at_most_two_writes_and_two_reads_and_one_within_the_window_none(
    table: str,
) -> None:
    # Given an instance, and a generation as the interactive driver makes it: its model's
    # estimate read, then its run and queue times learned
    clock = Clock()
    client = Counting(boto3.client("dynamodb", region_name=REGION))
    store = instance(table, clock, client)
    timing = Timing(submitted=clock.now, running_seen=clock.now + 2)

    async def generation() -> None:
        await store.get(MODEL)
        await learn(store, MODEL, timing, clock.now + 12)

    # When the first one runs: one read of each key (the queue's for its write), two writes
    await generation()
    assert (client.reads, client.writes) == ([False, True], 2)
    # When another runs within the write window: no table call (its samples wait)
    await generation()
    assert (client.reads, client.writes) == ([False, True], 2)
    assert item(table, QUEUE)["samples"] == {"N": "1"}
    # When a third runs once the window has passed (within the minute): two writes carrying
    # the waiting samples with its own, and no read
    clock.now += FLUSH_SECONDS
    await generation()
    assert (client.reads, client.writes) == ([False, True], 4)
    assert item(table, QUEUE)["samples"] == {"N": "3"}
    assert item(table, MODEL)["samples"] == {"N": "3"}


async def test_a_burst_costs_one_write_per_key_and_one_more_after_the_window_with_the_rest(
    table: str,
) -> None:
    # Given an instance, and another that has read the model's (empty) item
    clock = Clock()
    client = Counting(boto3.client("dynamodb", region_name=REGION))
    store, other = instance(table, clock, client), instance(table, clock)
    assert await other.get(MODEL) == Estimate(20.0, 6.0, 0)
    burst = [10.0 + n % 7 for n in range(50)]

    # When 50 generations of the model end together (within one write window)
    for seconds in burst:
        await store.record(MODEL, seconds)

    # Then the table was written once, with the first sample (the rest wait)
    assert client.writes == 1 and item(table, MODEL)["samples"] == {"N": "1"}

    # When one more ends after the window: one more write, carrying all the rest
    clock.now += FLUSH_SECONDS
    await store.record(MODEL, 13.0)
    assert client.writes == 2

    # Then every sample is in the table, folded in order: the other instance predicts with
    # them all once its cache expires
    clock.now = START + CACHE_SECONDS
    assert same(await other.get(MODEL), learned(*burst, 13.0))
    assert item(table, MODEL)["samples"] == {"N": "51"}


async def test_samples_waiting_for_the_table_count_in_the_instance_own_predictions_at_once(
    table: str,
) -> None:
    # Given an instance that has written its first sample of the model
    clock = Clock()
    store, other = instance(table, clock), instance(table, clock)
    await store.record(MODEL, 10.0)

    # When two more end within the window (not written yet)
    await store.record(MODEL, 20.0)
    await store.record(MODEL, 16.0)

    # Then this instance predicts with all three, while the table (another instance) has one
    assert same(await store.get(MODEL), learned(10.0, 20.0, 16.0))
    assert same(await other.get(MODEL), learned(10.0))


async def test_a_burst_s_lookups_predict_with_every_waiting_sample_as_folded_afresh(
    table: str,
) -> None:
    # Given an instance that has written its first sample of the model
    clock = Clock()
    store = instance(table, clock)
    await store.record(MODEL, 10.0)
    assert same(await store.get(MODEL), learned(10.0))
    waiting: list[float] = []
    # When many more end within the window, more than are kept waiting, each generation
    # looking the model up between them (some twice)
    for index in range(MAX_PENDING + 20):
        seconds = 8.0 + (index * 7) % 11
        await store.record(MODEL, seconds)
        waiting = [*waiting, seconds][-MAX_PENDING:]
        for _ in range(1 + index % 2):
            # Then each prediction is the table's value with the newest waiting samples
            assert same(await store.get(MODEL), learned(10.0, *waiting))


@pytest.mark.parametrize(
    "old",
    [None, Estimate(20.0, 6.0, 0), Estimate(12.5, 1.75, 3), Estimate(7.0, 0.4, 500)],
    ids=["nothing", "a prior", "a short history", "a long history"],
)
@pytest.mark.parametrize("count", [0, 1, 2, MAX_PENDING])
def test_samples_folded_together_predict_exactly_as_folded_one_by_one(
    old: Estimate | None, count: int
) -> None:
    # Given a key's estimate (or none) and samples waiting for the table
    samples = [0.05 + (index * 37) % 23 * 1.3 for index in range(count)]
    # When they are folded in at once (a look-up: `SharedEstimates.get`)
    together = fold_all(old, iter(samples))
    # Then the prediction is the very one of folding them one by one, to the last bit
    one_by_one = old
    for seconds in samples:
        one_by_one = fold(one_by_one, seconds)
    assert together == one_by_one


class Slow(Counting):
    """A counting client whose estimate updates wait until released (a slow table)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    def update_item(self, **kwargs: Any) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.entered.set()
        self.release.wait(10)
        try:
            return super().update_item(**kwargs)
        finally:
            self.in_flight -= 1


async def test_concurrent_records_of_a_key_make_one_write_in_flight(table: str) -> None:
    # Given an instance whose table is slow to take a write
    clock = Clock()
    client = Slow(boto3.client("dynamodb", region_name=REGION))
    store = instance(table, clock, client)

    async with anyio.create_task_group() as group:
        # When a first sample's write is under way and more samples end meanwhile, even after
        # the window (a write outlasting it)
        group.start_soon(store.record, MODEL, 10.0)
        assert await anyio.to_thread.run_sync(client.entered.wait, 10)
        clock.now += FLUSH_SECONDS
        for seconds in (12.0, 14.0):
            await store.record(MODEL, seconds)  # (return at once: no second write)
        assert same(await store.get(MODEL), learned(10.0, 12.0, 14.0))
        client.release.set()

    # Then only that one write was made; the samples waiting go with the next record
    assert (client.writes, client.most_in_flight) == (1, 1)
    assert item(table, MODEL)["samples"] == {"N": "1"}
    clock.now += FLUSH_SECONDS
    await store.record(MODEL, 11.0)
    assert client.writes == 2 and item(table, MODEL)["samples"] == {"N": "4"}
    assert same(await instance(table, clock).get(MODEL), learned(10.0, 12.0, 14.0, 11.0))


async def test_the_gateway_shares_estimates_through_the_access_table_when_there_is_one(
    table: str,
) -> None:
    # Given two gateways (two instances) with ACCESS_TABLE, and one without
    shared = Settings(access_table=table, aws_region=REGION)
    first, second, alone = Gateway(shared), Gateway(shared), Gateway(Settings())
    for gateway in (first, second):  # sharing is tested here, not the budget
        assert isinstance(gateway.estimates, SharedEstimates)
        gateway.estimates.budget = TABLE_BUDGET
    try:
        # When the first learns a run time
        await first.estimates.record(MODEL, 10.0)

        # Then the second predicts with it; the one without a table has its prior only
        assert same(await second.estimates.get(MODEL), learned(10.0))
        assert isinstance(alone.estimates, MemoryEstimates)
        prior = await alone.estimates.get(MODEL)
        assert prior is not None and prior.samples == 0
    finally:
        for gateway in (first, second, alone):
            await gateway.aclose()


async def test_samples_waiting_for_the_window_are_written_when_the_gateway_shuts_down(
    table: str,
) -> None:
    # Given a gateway (an API instance) with ACCESS_TABLE whose second sample of a model waits
    # for its key's window (the first was written as it ended)
    gateway = Gateway(Settings(access_table=table, aws_region=REGION))
    assert isinstance(gateway.estimates, SharedEstimates)
    gateway.estimates.budget = TABLE_BUDGET
    await gateway.estimates.record(MODEL, 10.0)
    await gateway.estimates.record(MODEL, 20.0)
    assert item(table, MODEL)["samples"] == {"N": "1"}

    # When it shuts down (the lifespan's end, on Lambda's SIGTERM)
    await gateway.aclose()

    # Then the waiting sample is in the table: another instance predicts with both
    assert item(table, MODEL)["samples"] == {"N": "2"}
    assert same(await instance(table, Clock()).get(MODEL), learned(10.0, 20.0))


def test_a_job_step_writes_the_run_times_it_left_waiting_before_it_returns(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job function's instance with ACCESS_TABLE (no SIGTERM reaches it at its end),
    # whose step learns two run times of a model, the second within its key's write window
    monkeypatch.setattr(steps, "ESTIMATES", None)
    settings = Settings(access_table=table, aws_region=REGION)

    async def step(event: Mapping[str, Any], kit: Gateway) -> dict[str, Any]:
        assert isinstance(kit.estimates, SharedEstimates)
        kit.estimates.budget = TABLE_BUDGET
        for seconds in event["run_times"]:
            await kit.estimates.record(MODEL, seconds)
        return {"status": "done"}

    # When the step runs as the task function runs it
    assert steps.run_step(step, {"run_times": [10.0, 20.0]}, settings) == {"status": "done"}

    # Then both are in the table when it returns: another instance predicts with both
    assert item(table, MODEL)["samples"] == {"N": "2"}
    steps.close_instances()


async def test_flushes_of_one_key_at_once_make_one_write_and_lose_nothing(table: str) -> None:
    # Given an instance with a sample waiting for its key's window (the local runner's job
    # threads share one store: a step's end and another's may flush it at once)
    client = Counting(boto3.client("dynamodb", region_name=REGION))
    store = instance(table, Clock(), client)
    await store.record(MODEL, 10.0)
    await store.record(MODEL, 20.0)

    # When two flushes run at once
    await asyncio.gather(store.flush(), store.flush())

    # Then the waiting sample was written once, and the table holds both
    assert client.writes == 2
    assert item(table, MODEL)["samples"] == {"N": "2"}


async def test_a_table_that_does_not_take_the_shutdown_write_is_given_up_within_its_budget(
    table: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an instance with a sample waiting, whose table then stops taking writes
    client = Slow(boto3.client("dynamodb", region_name=REGION))
    client.release.set()
    store = instance(table, Clock(), client)
    await store.record(MODEL, 10.0)
    await store.record(MODEL, 20.0)
    client.release.clear()
    try:
        # When it shuts down
        with caplog.at_level(logging.WARNING):
            began = time.monotonic()
            await store.flush()
            waited = time.monotonic() - began

        # Then it stopped waiting for the write (well before the write's own budget, 30 s
        # here: the process is about to end) and said samples may be lost; the table holds
        # the first sample only
        assert client.entered.is_set() and waited < TABLE_BUDGET / 2
        assert "samples may be lost at shutdown" in caplog.text
        assert item(table, MODEL)["samples"] == {"N": "1"}
    finally:
        client.release.set()


class SlowToBuild(AccessTable):
    """A table whose client takes longer to build than a call's budget (botocore loading its
    service model on a cold process, as on `make run`'s first generation)."""

    @property
    def client(self) -> Any:
        if self._client is None:
            time.sleep(3.5)
            self._client = boto3.client("dynamodb", region_name=REGION)
        return self._client


async def test_building_the_client_is_not_taken_for_a_slow_table(
    table: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a fresh instance whose client takes longer to build (3.5 s) than the budget (3 s,
    # which moto's calls themselves stay within even on a busy machine)
    store = SharedEstimates(SlowToBuild(table, REGION), PRIORS, clock=Clock(), budget=3.0)

    # When the first generation learns and predicts through it
    with caplog.at_level(logging.WARNING):
        await store.record(MODEL, 10.0)
        store._cache.clear()
        found = await store.get(MODEL)

    # Then no "estimates table failed" warning is logged, and the estimate is the table's
    assert not [r for r in caplog.records if r.levelno == logging.WARNING], caplog.text
    assert same(found, learned(10.0)) and item(table, MODEL)


class SlowRead(Counting):
    """A counting client whose first read waits until released (a slow table)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_item(self, **kwargs: Any) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(10)
        return super().get_item(**kwargs)


def test_threads_on_event_loops_of_their_own_share_a_store(table: str) -> None:
    # Given a store shared by two threads, each with its event loop (`make run`'s job
    # threads share the process's store), and a table that knows the model but is slow
    clock = Clock()
    asyncio.run(instance(table, clock).record(MODEL, 10.0))
    client = SlowRead(boto3.client("dynamodb", region_name=REGION))
    store = instance(table, clock, client)
    found: list[Estimate | None] = []
    failures: list[BaseException] = []

    def lookup() -> None:
        try:
            found.append(asyncio.run(store.get(MODEL)))
        except BaseException as exc:  # what the thread's job step would fail with
            failures.append(exc)

    # When one thread's read is in flight and the other thread asks for the same model
    first = threading.Thread(target=lookup)
    first.start()
    assert client.entered.wait(10)
    second = threading.Thread(target=lookup)
    second.start()
    second.join(10)
    client.release.set()
    first.join(10)

    # Then both have the table's estimate, and neither failed
    assert failures == []
    assert len(found) == 2 and all(same(estimate, learned(10.0)) for estimate in found)
