"""What the triage analyst is asked, what a valid answer is, and the offline template.

The model sees compact statistics only (features, the code's anomalies and their
evidence), never log lines. It explains; it does not judge: the severity and the list of
anomalies in the report come from code, whatever the reply says. Bump PROMPT_VERSION when
the instructions, the data layout or the schema change.
"""

from typing import Any

from pydantic import Field

from agent_reports.core.analyst import (
    TEXT_CHARS,
    Finding,
    InvalidReply,
    Narrative,
    check_narrative,
    findings_field,
)
from agent_reports.core.reports import format_value

PROMPT_VERSION = "anomalies-v3"

INSTRUCTIONS = """\
You are an on-call site reliability engineer triaging one hour of web-server traffic.
The data gives the hour's features (requests, 4xx/5xx rates, latency percentiles, bytes,
distinct clients, top client share, share of new user agents), the anomalies found by
a statistical detector against a seasonal baseline (metric, observed value, expected
range, score, severity) and their evidence (top clients, paths, user agents), and the
coverage: how many log lines of the hour were read, parsed and skipped, per file. When the
severity is "unknown", the logs were mostly unreadable: say so, name the files, and do not
describe the traffic as normal.
Write a summary of at most three sentences, up to five findings (each names the metrics,
paths or clients it is about in `subjects`), `probable_cause`: what most likely happened,
and `look_first`: the first thing the on-call engineer should check. Do not change or
dispute the detector's severity, and do not invent figures."""


class TriageNote(Narrative):
    """The narrative plus the triage fields."""

    findings: list[Finding] = findings_field(5)
    probable_cause: str = Field(max_length=TEXT_CHARS)
    look_first: str = Field(max_length=TEXT_CHARS)


SCHEMA = TriageNote


def prompt_data(verdict: dict[str, Any], features: dict[str, Any], partition: str) -> dict:
    """Compact statistics for the model: no raw lines, no malformed samples."""
    shown = {k: v for k, v in features.items() if k != "malformed_samples"}
    return {
        "hour": partition,
        "severity": verdict["severity"],
        "anomalies": verdict["anomalies"],
        "features": shown,
    }


def known_subjects(data: dict[str, Any]) -> set[str]:
    """Metric names, and the names in the evidence and top lists."""
    subjects = set(data["features"]) | {a["metric"] for a in data["anomalies"]}
    for value in data["features"].values():
        if isinstance(value, list):
            subjects |= {
                item["name"] for item in value if isinstance(item, dict) and "name" in item
            }
    subjects |= {f["file"] for f in data["features"]["coverage"]["files"]}
    for anomaly in data["anomalies"]:
        for items in anomaly["evidence"].values():
            subjects |= {item["name"] for item in items}
    return subjects


def check(note: TriageNote, data: dict[str, Any]) -> None:
    check_narrative(note, known_subjects(data))
    if not note.probable_cause.strip() or not note.look_first.strip():
        raise InvalidReply("probable_cause or look_first is empty")


_CAUSES = {
    "rate_5xx": ("a server-side failure", "the error logs of the paths with most 5xx"),
    "rate_4xx": ("clients hitting missing or forbidden paths", "the paths with most 4xx"),
    "latency_p95_ms": ("a slow endpoint or a saturated backend", "the slowest paths"),
    "latency_p50_ms": ("a general slowdown", "backend saturation and the slowest paths"),
    "top_client_share": ("one client flooding the site", "the top client and its user agent"),
    "new_user_agent_share": ("a new crawler or bot", "the new user agents"),
    "requests": ("a change in traffic volume", "upstream routing and the top clients"),
    "bytes": ("a change in response sizes or volume", "the top paths"),
    "distinct_clients": ("a change in the client population", "the top clients"),
}


def metric_format(metric: str) -> str:
    """How a feature's values read (reports.format_value): rates and shares as
    percentages, counts as integers, latencies as plain numbers."""
    if metric.startswith("rate_") or metric.endswith("_share"):
        return "rate"
    return "int" if metric in ("requests", "bytes", "distinct_clients") else "num"


def shown(anomaly: dict[str, Any], key: str) -> str:
    """One of an anomaly's values in its metric's format."""
    return format_value(metric_format(anomaly["metric"]), anomaly[key])


def _describe(anomaly: dict[str, Any]) -> Finding:
    names = [item["name"] for items in anomaly["evidence"].values() for item in items[:1]]
    return Finding(
        title=f"{anomaly['metric']} {anomaly['severity']} (score {anomaly['score']:+.1f})",
        detail=(
            f"Observed {shown(anomaly, 'observed')}, expected {shown(anomaly, 'expected_low')}"
            f" – {shown(anomaly, 'expected_high')} (baseline median "
            f"{shown(anomaly, 'baseline_median')})."
        ),
        subjects=[anomaly["metric"], *names],
    )


def offline_narrative(data: dict[str, Any]) -> TriageNote:
    """A deterministic note from the same statistics, for when no LLM is configured."""
    features, anomalies = data["features"], data["anomalies"]
    if data["severity"] == "unknown":
        coverage = features["coverage"]
        unread = coverage["lines_skipped"] + coverage["lines_untimed"]
        names = ", ".join(f["file"] for f in coverage["files"]) or "no file"
        return TriageNote(
            summary=f"Unknown: {unread} of {coverage['lines_read']} log lines of {data['hour']} "
            f"could not be read ({names}); no verdict on this hour's traffic.",
            findings=[],
            probable_cause="The log format changed or is not a supported one.",
            look_first="The log format of the files listed (docs/log-formats.md).",
        )
    if not anomalies:
        return TriageNote(
            summary=f"No anomalies in {data['hour']} UTC: {features['requests']:,} requests, "
            "every feature within its expected range.",
            findings=[],
            probable_cause="Normal traffic.",
            look_first="Nothing to look at.",
        )
    first = anomalies[0]
    cause, look = _CAUSES.get(first["metric"], ("an unusual pattern", "the evidence"))
    return TriageNote(
        summary=f"{len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} in "
        f"{data['hour']} UTC (severity {data['severity']}); "
        f"the strongest is {first['metric']} at {shown(first, 'observed')} against an "
        f"expected {shown(first, 'expected_low')} – {shown(first, 'expected_high')}.",
        findings=[_describe(a) for a in anomalies[:5]],
        probable_cause=f"Most likely {cause}.",
        look_first=f"Check {look}.",
    )
