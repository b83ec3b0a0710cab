"""The API's EMF lines (imagegw.infra.apimetrics) are Powertools' own, to the byte: written
without Powertools' metric set for every request, they say what `Metrics.flush_metrics` and
`single_metric` would have printed (the dashboard and alarms of template.yaml read them)."""

from __future__ import annotations

import json
import re

import pytest
from aws_lambda_powertools.metrics import Metrics

from imagegw.infra import apimetrics

STAMP = re.compile(r'"Timestamp": ?\d+')


def recorder(lags: int) -> apimetrics.Recorder:
    figures = apimetrics.Recorder()
    figures.counts.update({"Requests": 1, "Generations": 1, "ImagesGenerated": 4})
    figures.seconds["GenerationSeconds"] = [3.012]
    figures.seconds["DetectionLag"] = [0.1 * i for i in range(lags)]
    figures.codes.update({"provider_error": 1, "rate_limited": 2})
    return figures


@pytest.mark.parametrize("lags", [2, 150], ids=["few-values", "more-than-a-line-holds"])
def test_the_lines_are_powertools_lines(
    lags: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given metrics on (as deployed), and a request's figures written the way Powertools
    # writes them (its metric set shared by every instance: emptied first)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    Metrics(namespace=apimetrics.NAMESPACE).clear_metrics()
    apimetrics._write_through_powertools(recorder(lags))
    theirs = capsys.readouterr().out

    # When the API writes them
    apimetrics.write(recorder(lags))
    ours = capsys.readouterr().out

    # Then the lines are the same but for the moment they were stamped
    assert STAMP.sub("", ours) == STAMP.sub("", theirs)
    assert len(ours.splitlines()) == 3 + (lags > apimetrics.MAX_VALUES)
    for line in ours.splitlines():
        assert json.loads(line)["_aws"]["Timestamp"] > 0


def test_a_request_s_lines_are_written_whole_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given metrics on and a stdout that keeps each write apart (unbuffered, as on Lambda,
    # where another writer's line could come between two writes)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    writes: list[str] = []

    class Unbuffered:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    monkeypatch.setattr("sys.stdout", Unbuffered())

    # When a request's figures (a line of figures and two of error codes) are written
    apimetrics.write(recorder(2))

    # Then they are one write of whole lines
    assert len(writes) == 1
    lines = writes[0].split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert [json.loads(line)["_aws"]["Timestamp"] > 0 for line in lines[:-1]] == [True] * 3
