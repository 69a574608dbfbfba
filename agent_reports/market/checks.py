"""Market asset checks: the input is sound before any metric is computed (blocking), and
the report is grounded (a warning, so a degraded day is visible, not hidden)."""

import json
from collections.abc import Callable

import pandas as pd
from dagster import AssetCheckResult, AssetChecksDefinition, asset_check

from agent_reports.core.input_checks import rows_mostly_read
from agent_reports.core.publishing import report_quality_check
from agent_reports.core.resources import ReportStoreResource
from agent_reports.market.assets import market_prices, market_report
from agent_reports.market.partitions import ANALYSIS, market_partitions

MAX_LISTED_ROWS = 20


def _price_check(
    name: str, description: str, find_bad: Callable[[pd.DataFrame], pd.DataFrame]
) -> AssetChecksDefinition:
    @asset_check(
        asset=market_prices,
        name=name,
        description=description,
        blocking=True,
        partitions_def=market_partitions,
    )
    def _check(market_prices: dict[str, pd.DataFrame]) -> AssetCheckResult:
        bad = pd.concat([find_bad(frame) for frame in market_prices.values()]).drop_duplicates()
        listed = bad.head(MAX_LISTED_ROWS).astype(str).to_dict("records")
        return AssetCheckResult(
            passed=bad.empty,
            metadata={"bad_rows": len(bad), "examples": json.dumps(listed)},
            description=None if bad.empty else f"{len(bad)} row(s) fail: {description}",
        )

    return _check


def _missing_or_not_positive(frame: pd.DataFrame) -> pd.DataFrame:
    """A missing open/high/low/close/volume, a price ≤ 0 or a negative volume (a zero
    close would read as a −100% crash). The adjusted close may be absent, not ≤ 0."""
    prices = frame[["open", "high", "low", "close"]]
    adjusted = frame["adj_close"] if "adj_close" in frame else pd.Series(dtype="float64")
    bad = prices.isna().any(axis=1) | (prices <= 0).any(axis=1)
    bad |= frame["volume"].isna() | (frame["volume"] < 0) | (adjusted <= 0).reindex(frame.index)
    return frame[bad.fillna(False).astype(bool)]


def _high_below_low(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["high"] < frame["low"]]


def _duplicates(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.duplicated(["date", "ticker"], keep=False)]


prices_present_and_positive = _price_check(
    "prices_present_and_positive",
    "no missing open/high/low/close/volume, no price ≤ 0, no negative volume",
    _missing_or_not_positive,
)
high_not_below_low = _price_check("high_not_below_low", "high ≥ low on every row", _high_below_low)
one_row_per_ticker_day = _price_check(
    "one_row_per_date_and_ticker", "no duplicate (date, ticker)", _duplicates
)


@asset_check(asset=market_prices, partitions_def=market_partitions)
def input_rows_mostly_read(market_prices: dict[str, pd.DataFrame]) -> AssetCheckResult:
    """At most a tenth of the rows read were rejected (core/input_checks.py)."""
    return rows_mostly_read(market_prices)


@asset_check(asset=market_report, partitions_def=market_partitions)
def report_is_grounded(context, reports: ReportStoreResource) -> AssetCheckResult:
    """Each report of the run exists, has a summary, and was not degraded to the template."""
    return report_quality_check(reports.path(), ANALYSIS, context.partition_keys)


market_checks = [
    prices_present_and_positive,
    high_not_below_low,
    one_row_per_ticker_day,
    input_rows_mostly_read,
    report_is_grounded,
]
