"""Market metrics checked against an independent, plain-Python computation."""

import math
import statistics
from datetime import date, timedelta

import pandas as pd
import pytest

from agent_reports.core.sources import DemoSource
from agent_reports.market.analysis import history_window, market_metrics
from agent_reports.market.prompts import offline_narrative, prompt_data


def _frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["date", "ticker", "open", "high", "low", "close", "volume"])
    frame["date"] = pd.to_datetime(frame["date"])
    return frame


def _series(ticker: str, days: int, start: date = date(2024, 1, 1)) -> list[tuple]:
    """Weekday rows with closes and volumes that vary irregularly."""
    rows, day, i = [], start, 0
    while len(rows) < days:
        if day.weekday() < 5:
            close = 100 + 7 * math.sin(i * 1.3) + i * 0.4
            volume = 1000 + 300 * math.cos(i * 0.7) + 10 * i
            rows.append((day.isoformat(), ticker, close, close + 1, close - 1, close, volume))
            i += 1
        day += timedelta(days=1)
    return rows


def test_metrics_match_an_independent_computation() -> None:
    rows = _series("AAA", 30) + _series("BBB", 12)
    frame = _frame(rows)
    last_day = date.fromisoformat(rows[29][0])
    metrics = market_metrics(frame, last_day)

    closes = [r[5] for r in rows[:30]]
    volumes = [r[6] for r in rows[:30]]
    log_returns = [math.log(b / a) for a, b in zip(closes[-21:-1], closes[-20:], strict=True)]
    expected = {
        "close": closes[-1],
        "return_1d": closes[-1] / closes[-2] - 1,
        "volatility_20d": statistics.stdev(log_returns) * math.sqrt(252),
        "volume_ratio_20d": volumes[-1] / statistics.mean(volumes[-21:-1]),
    }
    got = metrics["tickers"]["AAA"]
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-5), name
    assert metrics["trading_day"] is True


def test_short_history_gives_none_not_a_guess() -> None:
    rows = _series("AAA", 30) + _series("BBB", 12)
    frame = _frame(rows)
    day = date.fromisoformat(rows[29][0])
    bbb_last = date.fromisoformat(rows[-1][0])
    assert "BBB" not in market_metrics(frame, day)["tickers"]  # BBB did not trade that day
    bbb = market_metrics(frame, bbb_last)["tickers"]["BBB"]
    assert bbb["return_1d"] is not None
    assert bbb["volatility_20d"] is None  # 12 closes < 21
    assert bbb["volume_ratio_20d"] is None


def test_top_movers_are_ranked_by_absolute_return() -> None:
    day = date(2024, 1, 3)
    frame = _frame(
        [
            ("2024-01-02", "UP", 1, 1, 1, 100.0, 10),
            ("2024-01-03", "UP", 1, 1, 1, 103.0, 10),
            ("2024-01-02", "DOWN", 1, 1, 1, 100.0, 10),
            ("2024-01-03", "DOWN", 1, 1, 1, 90.0, 10),
            ("2024-01-02", "FLAT", 1, 1, 1, 100.0, 10),
            ("2024-01-03", "FLAT", 1, 1, 1, 100.0, 10),
        ]
    )
    movers = market_metrics(frame, day)["top_movers"]
    assert [m["ticker"] for m in movers] == ["DOWN", "UP", "FLAT"]
    assert movers[0]["return_1d"] == pytest.approx(-0.1)


def test_a_day_without_trading_is_a_report_that_says_so() -> None:
    saturday = date(2024, 3, 9)
    prices = DemoSource().market_prices(*history_window(saturday))
    metrics = market_metrics(prices, saturday)
    assert metrics == {
        "date": "2024-03-09",
        "trading_day": False,
        "tickers": {},
        "top_movers": [],
        "recent_prices": {},
    }
    narrative = offline_narrative(prompt_data(metrics))
    assert "No trading on 2024-03-09" in narrative.summary
    assert narrative.findings == []


def test_demo_source_is_the_same_whatever_window_reads_it() -> None:
    source = DemoSource(seed=3)
    wide = source.market_prices(date(2023, 12, 1), date(2024, 2, 1))
    narrow = source.market_prices(date(2024, 1, 10), date(2024, 1, 20))
    in_narrow = wide[(wide["date"] >= "2024-01-10") & (wide["date"] < "2024-01-20")]
    pd.testing.assert_frame_equal(in_narrow.reset_index(drop=True), narrow)
    assert set(narrow["date"].dt.weekday) <= {0, 1, 2, 3, 4}
    assert pd.Timestamp("2024-01-15") not in set(narrow["date"])  # Martin Luther King Jr. Day
    assert (narrow["high"] >= narrow["low"]).all()
    assert not DemoSource(seed=4).market_prices(date(2024, 1, 10), date(2024, 1, 20)).equals(narrow)
