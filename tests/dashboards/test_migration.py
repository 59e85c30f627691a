"""Tests for vlab.dashboards.migration: bytes remaining per pre-copy round, fed by hand or by polling."""

from __future__ import annotations

import pytest

from tests.dashboards.waiting import wait_until
from vlab.dashboards import MigrationView
from vlab.errors import VlabError

MIB = 2**20


def poll_record(round_: int, remaining: int, t: float) -> dict[str, float]:
    return {"round": round_, "remaining": remaining, "transferred": 256 * MIB - remaining, "time": t}


def test_one_bar_per_round_what_the_round_had_to_send_and_the_latest_poll_in_the_headline() -> None:
    with MigrationView(interval=0) as view:
        view.add(poll_record(1, 200 * MIB, 0.1))
        view.add(poll_record(1, 150 * MIB, 0.2))
        view.add(poll_record(2, 40 * MIB, 0.4))
        view.add(poll_record(2, 30 * MIB, 0.5))
        assert [r["remaining"] for r in view.rounds] == [200 * MIB, 40 * MIB]
        assert list(view.chart.data[0].x) == [1, 2]
        assert list(view.chart.data[0].y) == [200.0, 40.0]
        assert view.summary.value.startswith("round 2: 30.0 MiB remaining")


def test_polling_from_live_updates_records_the_migration_as_it_goes() -> None:
    script = iter([poll_record(1, 100 * MIB, 0.1), None, poll_record(2, 20 * MIB, 0.3),
                   {**poll_record(3, 1 * MIB, 0.5), "status": "completed"}])
    with MigrationView(poll=lambda: next(script, None), threshold=4 * MIB, interval=0.01) as view:
        view.start_updates()
        assert wait_until(lambda: len(view.rounds) >= 3)
    assert [r["round"] for r in view.rounds] == [1, 2, 3]
    text = view.text()
    assert text.splitlines()[0].endswith("round 3 (completed): 1.00 MiB remaining, 255 MiB sent, 0.50 s")
    assert "downtime budget: 4.00 MiB" in text


def test_initial_rounds_and_a_model_line() -> None:
    rounds = [poll_record(1, 64 * MIB, 0.1), poll_record(2, 8 * MIB, 0.2)]
    with MigrationView(rounds, predicted=[60 * MIB, 10 * MIB]) as view:
        assert [t.name for t in view.chart.data] == ["measured", "model"]
        assert list(view.chart.data[1].y) == [60.0, 10.0]


def test_a_record_without_the_documented_keys_is_refused() -> None:
    with MigrationView() as view, pytest.raises(VlabError, match="lacks transferred"):
        view.add({"round": 1, "remaining": 5, "time": 0.0})
