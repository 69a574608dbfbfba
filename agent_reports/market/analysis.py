"""Market metrics for one day from daily OHLCV rows: pure pandas, no Dagster.

Per ticker trading that day:
- `close`;
- `return_1d`: close / the previous trading day's close − 1;
- `volatility_20d`: standard deviation (ddof 1) of the last 20 daily log returns, × √252;
- `volume_ratio_20d`: volume / mean volume of the previous 20 trading days.
A metric without enough history is None. "Previous trading day" is the ticker's previous
row, so weekends and holidays are skipped naturally.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd

RETURN_WINDOW = 20
VOLUME_WINDOW = 20
TRADING_DAYS_PER_YEAR = 252
# Calendar days of history read before a day: 20 returns need 21 closes, and 45 calendar
# days hold at least 28 trading days even around year-end holidays.
LOOKBACK_DAYS = 45
TOP_MOVERS = 5


def history_window(day: date) -> tuple[date, date]:
    """The [start, end) window of rows the metrics of `day` need."""
    return day - timedelta(days=LOOKBACK_DAYS), day + timedelta(days=1)


def _finite(value: float) -> float | None:
    return round(float(value), 6) if value is not None and math.isfinite(value) else None


def ticker_metrics(history: pd.DataFrame) -> dict[str, Any]:
    """Metrics of the last row of one ticker's history (sorted by date, the day last)."""
    closes = history["close"].to_numpy(dtype="float64")
    volumes = history["volume"].to_numpy(dtype="float64")
    close = closes[-1]
    return_1d = closes[-1] / closes[-2] - 1 if len(closes) >= 2 else None
    volatility = None
    if len(closes) >= RETURN_WINDOW + 1:
        log_returns = np.diff(np.log(closes[-(RETURN_WINDOW + 1) :]))
        volatility = float(np.std(log_returns, ddof=1) * math.sqrt(TRADING_DAYS_PER_YEAR))
    volume_ratio = None
    if len(volumes) >= VOLUME_WINDOW + 1:
        previous = volumes[-(VOLUME_WINDOW + 1) : -1].mean()
        volume_ratio = volumes[-1] / previous if previous > 0 else None
    return {
        "close": _finite(close),
        "return_1d": _finite(return_1d) if return_1d is not None else None,
        "volatility_20d": _finite(volatility) if volatility is not None else None,
        "volume_ratio_20d": _finite(volume_ratio) if volume_ratio is not None else None,
    }


def market_metrics(prices: pd.DataFrame, day: date) -> dict[str, Any]:
    """The report's `metrics` for `day`, from rows up to and including it.

    A day without rows (weekend, holiday, no data) is `trading_day: False` with no
    tickers: a report that says so, not a failure.
    """
    history = prices[prices["date"] <= pd.Timestamp(day)].sort_values(["ticker", "date"])
    traded = sorted(history.loc[history["date"] == pd.Timestamp(day), "ticker"].unique())
    tickers = {
        ticker: ticker_metrics(rows)
        for ticker, rows in history.groupby("ticker")
        if ticker in traded
    }
    return {
        "date": day.isoformat(),
        "trading_day": bool(tickers),
        "tickers": tickers,
        "top_movers": top_movers(tickers),
    }


def top_movers(tickers: dict[str, dict[str, Any]], count: int = TOP_MOVERS) -> list[dict[str, Any]]:
    """The largest absolute one-day moves, ties broken by ticker for a stable order."""
    moves = [(t, m["return_1d"]) for t, m in tickers.items() if m["return_1d"] is not None]
    moves.sort(key=lambda item: (-abs(item[1]), item[0]))
    return [{"ticker": t, "return_1d": r} for t, r in moves[:count]]
