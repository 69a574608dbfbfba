"""Read-only tools the market analyst may call before it writes the day's note.

Built from the prices the report's partition already loaded (up to and including the day,
never later), so a result is a function of the window; see core/investigation.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pandas as pd

from agent_reports.core.investigation import Toolbox, ToolError, toolbox

MAX_DAYS = 30


def tools(prices: pd.DataFrame, day: str) -> Toolbox:
    """The market tools over `prices` as of `day` (YYYY-MM-DD)."""
    history = prices[prices["date"] <= pd.Timestamp(day)].sort_values(["date", "ticker"])
    rows = [
        {
            "date": row.date.strftime("%Y-%m-%d"),
            "ticker": str(row.ticker),
            "close": round(float(row.close), 4),
            "volume": int(row.volume) if pd.notna(row.volume) else None,
        }
        for row in history.itertuples(index=False)
    ]
    return toolbox([ticker_history(rows), volume_by_day(rows)], rows)


def ticker_history(rows: list[dict[str, Any]]) -> Callable[..., Any]:
    tickers = sorted({row["ticker"] for row in rows})

    def ticker_history(ticker: str, days: int = 10) -> dict[str, Any]:
        """A ticker's last `days` trading days up to the report's day (at most 30): date,
        close, one-day return and volume."""
        if ticker not in tickers:
            raise ToolError(f"unknown ticker {ticker!r}; known: {', '.join(tickers[:30])}")
        own = [row for row in rows if row["ticker"] == ticker][-(_days(days) + 1) :]
        history = [
            {**row, "return_1d": round(row["close"] / before["close"] - 1, 6)}
            for before, row in itertools.pairwise(own)
        ]
        return {
            "ticker": ticker,
            "days": [{k: v for k, v in r.items() if k != "ticker"} for r in history],
        }

    return ticker_history


def volume_by_day(rows: list[dict[str, Any]]) -> Callable[..., Any]:
    def volume_by_day(days: int = 10, ticker: str | None = None) -> dict[str, Any]:
        """Traded volume per day for the last `days` trading days (at most 30), for all
        tickers together or for one `ticker`."""
        chosen = [row for row in rows if ticker is None or row["ticker"] == ticker]
        if not chosen:
            raise ToolError(f"unknown ticker {ticker!r}")
        totals: dict[str, int] = {}
        for row in chosen:
            totals[row["date"]] = totals.get(row["date"], 0) + (row["volume"] or 0)
        dates = sorted(totals)[-_days(days) :]
        return {"ticker": ticker, "volume": [{"date": d, "volume": totals[d]} for d in dates]}

    return volume_by_day


def _days(days: int) -> int:
    if days < 1:
        raise ToolError("days must be at least 1")
    return min(days, MAX_DAYS)
