"""Which reports a briefing combines, chosen from the report files as of one instant.

Pure Python, no Dagster. The briefing reads only reports that its sources' schedules
had delivered by `as_of` (window end + the schedule's lag ≤ as_of), so a briefing never
describes a window that ends after its own moment and a re-run later reads what the
09:00 run could read, not what appeared since.
"""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# When each source's schedule delivers a window, after the window ends.
DELIVERED_AFTER_END = {
    "market": timedelta(hours=6),
    "anomalies": timedelta(minutes=5),
    "churn": timedelta(hours=7),
}
ANOMALY_HOURS = 24
SEVERITY_ORDER = ("none", "unknown", "low", "medium", "high", "critical")  # unknown: logs unread
TOP_ANOMALY_HOURS = 5


def _end(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["window_end"])


def _delivered(analysis: str, record: dict[str, Any], as_of: datetime) -> bool:
    return _end(record) + DELIVERED_AFTER_END[analysis] <= as_of


def _records_newest_first(folder: Path, as_of: datetime) -> list[Path]:
    """Report JSON files by partition key, newest first (keys sort by time), leaving out
    unread those whose key (its window's start, a UTC date first) is after `as_of`'s day."""
    if not folder.is_dir():
        return []
    last_day = as_of.astimezone(UTC).date().isoformat()
    return sorted((p for p in folder.glob("*.json") if p.stem[:10] <= last_day), reverse=True)


def latest_report(root: Path, analysis: str, as_of: datetime) -> dict[str, Any] | None:
    """The newest report of `analysis` delivered by `as_of`."""
    for path in _records_newest_first(root / analysis, as_of):
        record = json.loads(path.read_text())
        if _delivered(analysis, record, as_of):
            return record
    return None


def recent_reports(root: Path, analysis: str, as_of: datetime, span: timedelta) -> list[dict]:
    """Reports delivered by `as_of` whose windows end within `span` of the newest one due."""
    newest_end = as_of - DELIVERED_AFTER_END[analysis]
    records = []
    for path in _records_newest_first(root / analysis, as_of):
        record = json.loads(path.read_text())
        if _end(record) <= newest_end - span:
            break
        if _delivered(analysis, record, as_of):
            records.append(record)
    return sorted(records, key=lambda r: r["partition"])


def briefing_inputs(root: Path, as_of: datetime) -> dict[str, Any]:
    """The compact facts of one briefing: the three sources, each with what was missing."""
    market = latest_report(root, "market", as_of)
    churn = latest_report(root, "churn", as_of)
    hours = recent_reports(root, "anomalies", as_of, timedelta(hours=ANOMALY_HOURS))
    return {
        "as_of": as_of.isoformat(),
        "market": _market(market),
        "anomalies": _anomalies(hours),
        "churn": _churn(churn),
    }


def _source(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "partition": record["partition"],
        "window_end": record["window_end"],
        "summary": record["summary"],
        "degraded": record.get("degraded", False),
        "input_fingerprint": record["input_fingerprint"],
    }


def _market(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    metrics = record.get("metrics", {})
    return {
        **_source(record),
        "trading_day": metrics.get("trading_day"),
        "top_movers": metrics.get("top_movers", [])[:5],
    }


def _churn(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        **_source(record),
        "findings": [
            {"title": f["title"], "subjects": f.get("subjects", [])}
            for f in record.get("findings", [])[:5]
        ],
    }


def _severity(record: dict[str, Any]) -> str:
    severity = record.get("metrics", {}).get("severity", "none")
    return severity if severity in SEVERITY_ORDER else "none"


def _anomalies(records: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {level: 0 for level in SEVERITY_ORDER}
    for record in records:
        counts[_severity(record)] += 1
    worst = sorted(
        (r for r in records if _severity(r) != "none"),
        key=lambda r: (-SEVERITY_ORDER.index(_severity(r)), r["partition"]),
    )[:TOP_ANOMALY_HOURS]
    return {
        "hours_expected": ANOMALY_HOURS,
        "hours_found": len(records),
        "first_hour": records[0]["partition"] if records else None,
        "last_hour": records[-1]["partition"] if records else None,
        "by_severity": counts,
        "degraded_hours": sum(bool(r.get("degraded")) for r in records),
        "worst_hours": [
            {"hour": r["partition"], "severity": _severity(r), "summary": r["summary"]}
            for r in worst
        ],
    }


def missing_sources(inputs: dict[str, Any]) -> list[str]:
    """What the briefing could not include, in words for the report and the check."""
    missing = [name for name in ("market", "churn") if inputs[name] is None]
    anomalies = inputs["anomalies"]
    if anomalies["hours_found"] < anomalies["hours_expected"]:
        missing.append(
            f"anomalies: {anomalies['hours_expected'] - anomalies['hours_found']} of "
            f"{anomalies['hours_expected']} hours"
        )
    return missing
