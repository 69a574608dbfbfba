"""What the briefing analyst is asked, what a valid answer is, and the offline template.

Bump PROMPT_VERSION whenever the instructions, the data layout or the schema change: it
is part of every cache key, so old answers are not reused for a new question.
"""

from datetime import datetime
from typing import Any

from agent_reports.core.analyst import Finding, Narrative, check_narrative, findings_field

PROMPT_VERSION = "briefing-v2"


class Briefing(Narrative):
    findings: list[Finding] = findings_field(6)


SCHEMA = Briefing

INSTRUCTIONS = """\
You write the one-page morning briefing for a team in New York. The data holds the
latest daily market report (summary and top movers), the last 24 hours of web-traffic
anomaly reports (counts by severity and the worst hours) and the latest weekly churn
report (summary and findings), each with its window; a source may be missing. Write a
summary of at most four sentences leading with what needs attention today, then up to
six findings. Each finding names in `subjects` the source it comes from (market,
anomalies or churn) and any tickers or hours it is about. Say plainly when a source is
missing or was degraded. Do not add facts that are not in the data."""


def prompt_data(inputs: dict[str, Any], missing: list[str]) -> dict[str, Any]:
    """The facts the model sees: the three sources' summaries and figures, never raw data."""
    return {**inputs, "missing": missing}


def known_subjects(data: dict[str, Any]) -> set[str]:
    subjects = {"market", "anomalies", "churn"}
    if data["market"]:
        subjects |= {m["ticker"] for m in data["market"]["top_movers"]}
    subjects |= {h["hour"] for h in data["anomalies"]["worst_hours"]}
    if data["churn"]:
        for finding in data["churn"]["findings"]:
            subjects |= set(finding["subjects"])
    return subjects


def check(narrative: Narrative, data: dict[str, Any]) -> None:
    check_narrative(narrative, known_subjects(data), max_findings=6)


def _degraded(source: dict[str, Any]) -> str:
    return " (written by the offline fallback)" if source.get("degraded") else ""


def offline_narrative(data: dict[str, Any]) -> Narrative:
    """A deterministic briefing from the same facts, for when no LLM is configured."""
    findings = []
    anomalies = data["anomalies"]
    counts = anomalies["by_severity"]
    flagged = {level: n for level, n in counts.items() if level != "none" and n}
    if flagged:
        worst = anomalies["worst_hours"][0]
        findings.append(
            Finding(
                title=f"Traffic anomalies: worst {worst['severity']} at {worst['hour']} UTC",
                detail="Hours by severity: "
                + ", ".join(f"{level} {n}" for level, n in flagged.items())
                + f". {worst['summary']}",
                subjects=["anomalies", worst["hour"]],
            )
        )
    elif anomalies["hours_found"] == 0:
        findings.append(
            Finding(
                title="No anomaly reports",
                detail=f"0 of the last {anomalies['hours_expected']} hours have an anomaly "
                "report: traffic was not checked.",
                subjects=["anomalies"],
            )
        )
    else:
        found, expected = anomalies["hours_found"], anomalies["hours_expected"]
        findings.append(
            Finding(
                title="No traffic anomalies"
                + ("" if found == expected else f" in the {found} hours reported"),
                detail=f"{found} of {expected} hours reported, none anomalous"
                + ("." if found == expected else f"; {expected - found} hours not reported."),
                subjects=["anomalies"],
            )
        )
    market = data["market"]
    if market:
        movers = [m["ticker"] for m in market["top_movers"][:3]]
        findings.append(
            Finding(
                title=f"Markets on {market['partition']}{_degraded(market)}",
                detail=market["summary"],
                subjects=["market", *movers],
            )
        )
    churn = data["churn"]
    if churn:
        findings.append(
            Finding(
                title=f"Churn, week of {churn['partition']}{_degraded(churn)}",
                detail=churn["summary"],
                subjects=["churn"],
            )
        )
    as_of = datetime.fromisoformat(data["as_of"])
    summary = (
        f"Briefing as of {as_of:%Y-%m-%d %H:%M} New York time: "
        + ("; ".join(f.title for f in findings[:1]))
        + "."
        + (f" Missing: {', '.join(data['missing'])}." if data["missing"] else "")
    )
    return Narrative(summary=summary, findings=findings)
