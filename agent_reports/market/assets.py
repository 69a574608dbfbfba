"""Market assets: prices → metrics → report, per UTC day.

Each asset handles every partition of its run (one in a scheduled run, a whole range in
a single-run backfill) and returns `{partition_key: value}`; the prices are read once
for the whole range.
"""

import math
from datetime import date

import pandas as pd
from dagster import AssetExecutionContext, asset

from agent_reports.core.analyst import AnalystAnswer
from agent_reports.core.charts import price_chart
from agent_reports.core.csv_files import COVERAGE_COLUMNS, coverage_note, coverage_rows
from agent_reports.core.input_checks import input_failure
from agent_reports.core.publishing import (
    report_asset,
    report_from_answer,
    report_notes,
)
from agent_reports.core.reports import Chart, Note, Report, Table, format_value, notes_at
from agent_reports.core.resources import DataSourceResource
from agent_reports.core.sources import InputError, in_window, window_coverage
from agent_reports.market import prompts, tools
from agent_reports.market.analysis import TRADING_DAYS_PER_YEAR, history_window, market_metrics
from agent_reports.market.partitions import MARKET

TICKER_COLUMNS = ["ticker", "close", "adj close", "return 1d", "volatility 20d", "volume ratio 20d"]
COMMON = MARKET.asset_args()


def _days(context: AssetExecutionContext) -> dict[str, date]:
    return {key: date.fromisoformat(key) for key in context.partition_keys}


@asset(**COMMON, io_manager_key="range_io_manager", kinds={"pandas"})
def market_prices(
    context: AssetExecutionContext, source: DataSourceResource
) -> dict[str, pd.DataFrame]:
    """Daily OHLCV rows for the day and the 45 calendar days before it (the 20-day metrics
    need 21 closes)."""
    days = _days(context)
    start, _ = history_window(min(days.values()))
    _, end = history_window(max(days.values()))
    try:
        read = source.get().market_read(start, end)
    except InputError as error:
        raise input_failure("market", error) from None
    cache = read.coverage.pop("cache", None)  # differs run to run: kept out of the report
    if cache:
        context.log.info(f"parsed-file cache: {cache}")
    values = {}
    for key, day in days.items():
        window = in_window(read.prices, *history_window(day))
        window.attrs["coverage"] = window_coverage(read.coverage, window)
        values[key] = window
        day_rows = window[window["date"] == pd.Timestamp(day)]
        context.add_asset_metadata(
            {
                "day_rows": len(day_rows),
                "history_rows": len(window),
                "tickers": day_rows["ticker"].nunique(),
                "rows_read": read.coverage["rows_read"],
                "rows_rejected": read.coverage["rows_rejected"],
                "files": len(read.coverage["files"]),
                "files_not_read": len(read.coverage.get("ignored", [])),
            },
            partition_key=key,
        )
    return values


@asset(**COMMON, io_manager_key="range_io_manager")
def market_analysis(
    context: AssetExecutionContext, market_prices: dict[str, pd.DataFrame]
) -> dict[str, dict]:
    """Per-ticker close, 1-day return, 20-day volatility and volume ratio, plus top movers."""
    values = {}
    for key, day in _days(context).items():
        prices = market_prices[key]
        metrics = market_metrics(prices, day)
        metrics["input"] = prices.attrs.get("coverage", {})
        values[key] = metrics
        context.add_asset_metadata(
            {"trading_day": metrics["trading_day"], "tickers": len(metrics["tickers"])},
            partition_key=key,
        )
    return values


def build_market_report(key: str, metrics: dict, answer: AnalystAnswer) -> Report:
    adjusted = any(m.get("adj_close") is not None for m in metrics["tickers"].values())
    columns = TICKER_COLUMNS if adjusted else [c for c in TICKER_COLUMNS if c != "adj close"]
    formats = (
        TICKER_FORMATS
        if adjusted
        else [f for f, c in zip(TICKER_FORMATS, TICKER_COLUMNS, strict=True) if c != "adj close"]
    )
    rows = [
        [
            t,
            m["close"],
            *([m["adj_close"]] if adjusted else []),
            m["return_1d"],
            m["volatility_20d"],
            m["volume_ratio_20d"],
        ]
        for t, m in sorted(metrics["tickers"].items(), key=_by_move)
    ]
    coverage = metrics.get("input") or {}
    notes = notes_at("warning" if answer.degraded else "info", report_notes(answer))
    notes += [Note(coverage_note(coverage))] if coverage else []
    if not metrics["trading_day"]:
        notes.append(Note(no_trading_note(key, coverage)))
    notes += [
        Note(split_note(t, m), "warning") for t, m in metrics["tickers"].items() if m.get("split")
    ]
    return report_from_answer(
        MARKET,
        key,
        answer,
        findings=notable_findings(answer.narrative["findings"], metrics["tickers"]),
        metrics=metrics,
        tables=[Table("Tickers, largest move first", columns, rows, formats)]
        + (
            [Table("Input files", COVERAGE_COLUMNS, coverage_rows(coverage))]
            if coverage.get("files")
            else []
        ),
        notes=notes,
        charts=mover_charts(metrics),
        prompt_version=prompts.PROMPT_VERSION,
    )


@report_asset(
    MARKET,
    prompts,
    build_market_report,
    reads=["market_analysis", "market_prices"],
    tools=lambda key, _root, _metrics, prices: tools.tools(prices, key),
)
def market_report(_key: str, metrics: dict) -> dict:
    """The day's market note: metrics from code, narrative from the analyst (cached)."""
    return prompts.prompt_data(metrics)


TICKER_FORMATS = ["text", "price", "price", "pct", "rate", "ratio"]
CHARTED_MOVERS = 3
# A mover is worth a finding when its move is at least one typical daily move (its 20-day
# volatility / √252), or it traded on 1.5× its usual volume, or it split.
NOTABLE_SIGMAS = 1.0
NOTABLE_VOLUME = 1.5
NOTABLE_MOVE_WITHOUT_HISTORY = 0.02


def _by_move(item: tuple[str, dict]) -> tuple[float, str]:
    ticker, m = item
    return (-abs(m["return_1d"]) if m["return_1d"] is not None else 1.0, ticker)


def notable(m: dict) -> bool:
    """Whether a ticker's day is unusual enough to be a finding (see NOTABLE_SIGMAS)."""
    move, vol, volume = m["return_1d"], m["volatility_20d"], m["volume_ratio_20d"]
    if m.get("split") or (volume is not None and volume >= NOTABLE_VOLUME):
        return True
    if move is None:
        return False
    typical = vol / math.sqrt(TRADING_DAYS_PER_YEAR) if vol else None
    return abs(move) >= (NOTABLE_SIGMAS * typical if typical else NOTABLE_MOVE_WITHOUT_HISTORY)


def notable_findings(findings: list[dict], tickers: dict[str, dict]) -> list[dict]:
    """The analyst's findings less those whose tickers all had an ordinary day (a 0.3×
    move, average volume): code decides what is unusual, the model words it."""
    kept = []
    for finding in findings:
        named = [tickers[s] for s in finding.get("subjects", []) if s in tickers]
        if not named or any(notable(m) for m in named):
            kept.append(finding)
    return kept


def mover_charts(metrics: dict) -> list[Chart]:
    """A price line over the last 20 trading days for each of the top movers."""
    charts = []
    for mover in metrics["top_movers"][:CHARTED_MOVERS]:
        points = (metrics.get("recent_prices") or {}).get(mover["ticker"]) or []
        points = [(day, price) for day, price in points if price is not None]
        if len(points) >= 2:
            title = f"{mover['ticker']} {format_value('pct', mover['return_1d'])}"
            charts.append(price_chart(title, points, mover["return_1d"]))
    return charts


def split_note(ticker: str, metrics: dict) -> str:
    split = metrics["split"]
    return (
        f"{ticker}: probable {split['ratio']} split (raw close "
        f"{format_value('pct', split['raw_return_1d'])}, "
        f"by the {split['evidence']}); returns use the {metrics['price_basis']}."
    )


def no_trading_note(key: str, coverage: dict) -> str:
    """Why a day has no rows: outside the dates the files hold, or a day without trading."""
    first = min(
        (f["first_date"] for f in coverage.get("files", []) if f["first_date"]), default=None
    )
    last = max((f["last_date"] for f in coverage.get("files", []) if f["last_date"]), default=None)
    if first and not first <= key <= last:
        return f"No prices for this day: the market files hold {first} to {last}."
    return "No trading on this day: no prices in the source."
