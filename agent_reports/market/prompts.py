"""What the market analyst is asked, what a valid answer is, and the offline template.

Bump PROMPT_VERSION whenever the instructions, the data layout or the schema change: it
is part of every cache key, so old answers are not reused for a new question.
"""

from __future__ import annotations

from typing import Any

from agent_reports.core.analyst import Finding, Narrative, check_narrative, findings_field
from agent_reports.core.reports import format_value

PROMPT_VERSION = "market-v3"


class MarketNote(Narrative):
    findings: list[Finding] = findings_field(5)


SCHEMA = MarketNote

INSTRUCTIONS = """\
You are a sell-side market analyst writing the daily note for one trading day.
The data gives, per ticker, the close, the one-day return, the 20-day annualised
volatility and the volume relative to its 20-day average, plus the day's top movers.
Write a summary of at most four sentences on what moved and how unusual it was, then
up to five findings. Each finding names its tickers in `subjects`. Cite the figures;
say when a move is large relative to the ticker's own volatility or came on heavy
volume. Returns use the adjusted or split-adjusted price (`price_basis`); a ticker whose
`split` is set had a probable stock split: report it as a split, never as a crash.
Do not speculate about causes the data cannot show, and do not give advice."""


def prompt_data(metrics: dict[str, Any]) -> dict[str, Any]:
    """The compact statistics the model sees: the day's metrics, never raw rows."""
    return {
        "date": metrics["date"],
        "trading_day": metrics["trading_day"],
        "tickers": metrics["tickers"],
        "top_movers": metrics["top_movers"],
    }


def check(narrative: Narrative, data: dict[str, Any]) -> None:
    check_narrative(narrative, set(data["tickers"]))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else format_value("pct", value)


def offline_narrative(data: dict[str, Any]) -> Narrative:
    """A deterministic note from the same statistics, for when no LLM is configured."""
    if not data["trading_day"]:
        return Narrative(
            summary=f"No trading on {data['date']}: the source holds no prices for this day "
            "(weekend, holiday or missing data).",
            findings=[],
        )
    tickers = data["tickers"]
    returns = [m["return_1d"] for m in tickers.values() if m["return_1d"] is not None]
    up = sum(r > 0 for r in returns)
    mean = sum(returns) / len(returns) if returns else None
    summary = (
        f"{len(tickers)} tickers traded on {data['date']}: {up} rose and {len(returns) - up} "
        f"fell, with a mean one-day return of {_pct(mean)}."
    )
    findings = []
    for mover in data["top_movers"][:3]:
        m = tickers[mover["ticker"]]
        vol = m["volatility_20d"]
        daily_sigma = vol / 252**0.5 if vol else None
        size = (
            f", {abs(mover['return_1d']) / daily_sigma:.1f}× its typical daily move"
            if daily_sigma
            else ""
        )
        ratio = m["volume_ratio_20d"]
        volume = (
            f" on {format_value('ratio', ratio)} its 20-day average volume"
            if ratio is not None and not 0.67 <= ratio <= 1.5
            else ""
        )
        findings.append(
            Finding(
                title=f"{mover['ticker']} {_pct(mover['return_1d'])}",
                detail=f"Closed at {format_value('price', m['close'])}{size}{volume}.",
                subjects=[mover["ticker"]],
            )
        )
    for ticker, m in tickers.items():
        if m.get("split"):
            findings.append(
                Finding(
                    title=f"{ticker}: probable {m['split']['ratio']} split",
                    detail=f"The raw close moved {_pct(m['split']['raw_return_1d'])}, a split "
                    f"by its size; the return of {_pct(m['return_1d'])} uses the "
                    f"{m['price_basis']}.",
                    subjects=[ticker],
                )
            )
    return Narrative(summary=summary, findings=findings)
