"""What any poll schedule could do on bench versus' uneven mix (`bench.polling.frontier`): the
figures of a schedule are counted as the bench counts them, and the cheapest schedule that
meets the mix's median-lag target leaves the tasks that end early waiting."""

from __future__ import annotations

import random
import statistics

import pytest

from bench.common import uneven_mix
from bench.polling import MIX_SHORT_LAG, SIM_SEED, _schedule_figures, frontier


def test_a_schedules_lag_and_polls_are_counted_from_the_submission() -> None:
    # ends at 1, 2 and 3 s; polls at 0 (early), then 1.5, 2.5, 3.5: each seen 0.5 s late, with
    # 2, 3 and 4 polls: 9 polls over 6 s of generation
    median, mean, p90, rate = _schedule_figures([1.0, 2.0, 3.0], 1.5, 1.0)
    assert (median, mean, p90) == pytest.approx((0.5, 0.5, 0.5))
    assert rate == pytest.approx(9 / 6)


def test_the_cheapest_schedule_meeting_the_median_waits_for_half_the_tasks_to_end() -> None:
    rows, data = frontier(0.75)
    ends = sorted(t.total for t in uneven_mix(2000, random.Random(SIM_SEED)) if t.total < 20)
    cheapest, even = data["lag"], data["even"]
    assert cheapest["median_lag"] <= MIX_SHORT_LAG
    # nothing is polled before about half the tasks have ended...
    assert cheapest["first"] >= statistics.median(ends) - 2 * MIX_SHORT_LAG
    # ...so those tasks wait: a mean lag several times that of even polling at POLL_INTERVAL
    assert cheapest["mean_lag"] > 3 * even["mean_lag"]
    # a denser even schedule meets the median only at far more polls
    assert data["even_half"]["polls_per_s"] > 1.5 * cheapest["polls_per_s"]
    assert len(rows) == 4
