"""Market metrics for one day from daily OHLCV rows: pure pandas, no Dagster.

Per ticker trading that day:
- `close` (the raw close, as traded) and `adj_close` (the file's adjusted close, or None);
- `return_1d`: price / the previous trading day's price − 1;
- `volatility_20d`: standard deviation (ddof 1) of the last 20 daily log returns, × √252;
- `volume_ratio_20d`: volume / mean volume of the previous 20 trading days;
- `price_basis`: the price the returns use: `adj_close` when the file has one on every
  row of the window, else `close`, divided through any probable split (`close, split-
  adjusted`): a raw move by a split ratio (2:1, 3:1, 3:2, 1:10 ...) is read as a split;
- `split`: the day's probable split (`ratio`, the raw move, and the `evidence`: the
  adjusted close, or the size of the move alone), or None.
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


# Split ratios as (new shares, old shares): a 2:1 split halves the price, a 1:10 reverse
# split multiplies it by ten.
SPLIT_RATIOS = ((2, 1), (3, 1), (4, 1), (5, 1), (8, 1), (10, 1), (20, 1), (3, 2), (5, 4))
SPLIT_TOLERANCE = 0.03  # how close the raw move must be to a ratio, relative


def split_ratio(move: float) -> tuple[int, int] | None:
    """The split a price ratio (today / yesterday) matches, forward or reverse, if any."""
    if not math.isfinite(move) or move <= 0:
        return None
    for new, old in SPLIT_RATIOS:
        for ratio in ((new, old), (old, new)):
            if abs(move * ratio[0] / ratio[1] - 1) < SPLIT_TOLERANCE:
                return ratio
    return None


def price_basis(history: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str, list]:
    """The prices and volumes that returns and volume ratios use, the basis' name and the
    probable splits as (row, ratio, evidence).

    The adjusted close when every row has one; else the raw close with each probable
    split divided through the earlier rows (and their volumes multiplied), so a 2:1 split
    reads as the day's real move, not −50%.
    """
    closes = history["close"].to_numpy(dtype="float64")
    volumes = history["volume"].to_numpy(dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero price: the checks block it
        moves = closes[1:] / closes[:-1]
    adjusted = history["adj_close"].to_numpy(dtype="float64") if "adj_close" in history else None
    if adjusted is not None and len(adjusted) and np.isfinite(adjusted).all():
        # The adjusted close already holds the split: the raw move beyond it is the split.
        with np.errstate(divide="ignore", invalid="ignore"):
            adjusted_moves = moves / (adjusted[1:] / adjusted[:-1])
        splits = [
            (i + 1, ratio, "adjusted close")
            for i, move in enumerate(adjusted_moves)
            if (ratio := split_ratio(move)) is not None
        ]
        return adjusted, volumes, "adj_close", splits
    splits = [
        (i + 1, ratio, "price move")
        for i, move in enumerate(moves)
        if (ratio := split_ratio(move)) is not None
    ]
    if not splits:
        return closes, volumes, "close", []
    factor = np.ones(len(closes))
    for row, (new, old), _ in splits:
        factor[:row] *= new / old
    return closes / factor, volumes * factor, "close, split-adjusted", splits


def ticker_metrics(history: pd.DataFrame) -> dict[str, Any]:
    """Metrics of the last row of one ticker's history (sorted by date, the day last)."""
    prices, volumes, basis, splits = price_basis(history)
    raw = history["close"].to_numpy(dtype="float64")
    return_1d = prices[-1] / prices[-2] - 1 if len(prices) >= 2 else None
    volatility = None
    if len(prices) >= RETURN_WINDOW + 1:
        log_returns = np.diff(np.log(prices[-(RETURN_WINDOW + 1) :]))
        volatility = float(np.std(log_returns, ddof=1) * math.sqrt(TRADING_DAYS_PER_YEAR))
    volume_ratio = None
    if len(volumes) >= VOLUME_WINDOW + 1:
        previous = volumes[-(VOLUME_WINDOW + 1) : -1].mean()
        volume_ratio = volumes[-1] / previous if previous > 0 else None
    split = None
    if splits and splits[-1][0] == len(raw) - 1:
        _, (new, old), evidence = splits[-1]
        raw_move = raw[-1] / raw[-2] - 1
        split = {"ratio": f"{new}:{old}", "raw_return_1d": _finite(raw_move), "evidence": evidence}
    adj_close = history["adj_close"].iloc[-1] if "adj_close" in history else None
    return {
        "close": _finite(raw[-1]),
        "adj_close": _finite(adj_close) if adj_close is not None else None,
        "return_1d": _finite(return_1d) if return_1d is not None else None,
        "volatility_20d": _finite(volatility) if volatility is not None else None,
        "volume_ratio_20d": _finite(volume_ratio) if volume_ratio is not None else None,
        "price_basis": basis,
        "split": split,
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
    movers = top_movers(tickers)
    by_ticker = dict(list(history.groupby("ticker")))
    return {
        "date": day.isoformat(),
        "trading_day": bool(tickers),
        "tickers": tickers,
        "top_movers": movers,
        "recent_prices": {m["ticker"]: recent_prices(by_ticker[m["ticker"]]) for m in movers},
    }


def recent_prices(history: pd.DataFrame, count: int = RETURN_WINDOW + 1) -> list[list[Any]]:
    """The last `count` [day, price] pairs of one ticker on its returns' price basis (the
    report's chart; not shown to the model)."""
    prices, _, _, _ = price_basis(history)
    days = history["date"].dt.strftime("%Y-%m-%d").tolist()
    return [[d, _finite(p)] for d, p in zip(days[-count:], prices[-count:], strict=True)]


def top_movers(tickers: dict[str, dict[str, Any]], count: int = TOP_MOVERS) -> list[dict[str, Any]]:
    """The largest absolute one-day moves, ties broken by ticker for a stable order."""
    moves = [(t, m["return_1d"]) for t, m in tickers.items() if m["return_1d"] is not None]
    moves.sort(key=lambda item: (-abs(item[1]), item[0]))
    return [{"ticker": t, "return_1d": r} for t, r in moves[:count]]
