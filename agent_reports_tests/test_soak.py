"""A short, seeded soak (benchmarks/soak.py) on the real stack: six hours of windows on a
compressed clock, a small backfill and manual re-runs, with one fault of every kind
(daemon and run worker SIGKILL, PostgreSQL restart, LLM 429/500/hang, SMTP 451 and a
dropped reply). The invariants the long soak reports hold here too."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_short_soak_keeps_every_promise() -> None:
    soak = _soak_module()
    config = soak.Config(
        seed=7,
        start="2024-03-04T02:00:00+00:00",  # six hours: anomalies, a market day, churn's week
        hours=6,
        sim_hour_seconds=5,
        faults_per_kind=1,
        backfill_days=3,
        manual_runs=2,
        drain_timeout=600,
    )
    figures = soak.soak(config)
    soak.print_figures(figures)

    assert len(figures["faults"]) == len(soak.FAULTS)
    assert figures["windows_due_by_analysis"] == {"anomalies": 6, "market": 1, "churn": 1}
    assert figures["windows_with_one_whole_report"] == figures["windows_due"]
    assert figures["backfill_windows_with_one_whole_report"] == 3
    assert figures["overlaps"] == 0, figures["overlaps_by_analysis"]
    assert figures["windows_failed_not_recovered"] == 0
    for channel in ("emails", "alerts"):
        counts = figures[channel]
        assert counts["duplicates_otherwise"] == 0, counts
        assert (
            counts["exactly_once"] + counts["duplicates_after_dropped_reply"]
            == (counts["window_recipients"])
        ), counts
    # churn's week reached both recipients (the only e-mailed report in these six hours)
    assert figures["emails"]["window_recipients"] == 2, figures["emails"]
