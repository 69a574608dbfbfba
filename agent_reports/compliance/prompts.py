"""What the compliance analyst is asked, what a valid answer is, and the offline template.

The analyst writes only the executive summary (and optional findings naming analyses,
rules or finding ids from the data); every figure and every finding's evidence comes
from code. Bump PROMPT_VERSION whenever the instructions, the data or the schema change.
"""

from __future__ import annotations

from typing import Any

from agent_reports.core.analyst import Finding, Narrative, check_narrative, findings_field

PROMPT_VERSION = "compliance-v4"


class AuditSummary(Narrative):
    findings: list[Finding] = findings_field(6)


SCHEMA = AuditSummary
PROMPT_ROWS = 40

INSTRUCTIONS = """\
You are the auditor writing the executive summary of a monthly compliance audit of a
scheduled reporting system. The data gives, per analysis, how many scheduled windows were
due in the month and how many were on time, late, missing or failed, degraded (written by
the offline template because the LLM failed), re-run or retried, and how many were not
scheduled (due before the analysis first ran in this instance, or after its schedule was
stopped: not a gap); a sample of the problem
windows; the counts of alerts and e-mails delivered or failed; and the access-log policy
findings (sensitive paths reached from outside the allow-list, bursts of 401/403,
personal data in URLs), already redacted; and what the log scan read, with its verdict:
`unknown` means the logs could not be read, so findings cannot be ruled out (say so
first, never report the month as clean). Write a summary of at most five sentences:
state whether every window produced its report, name the analyses with gaps, and the
most serious policy findings by id. Then up to six findings; each names in `subjects`
the analyses, rules or finding ids (F1, F2, ...) it is about. Cite the figures exactly.
Do not speculate about causes the data cannot show."""


def prompt_data(audit: dict[str, Any]) -> dict[str, Any]:
    """The compact view the model sees: counts, and bounded samples of rows."""
    problems = [w for w in audit["problem_windows"] if w["status"] != "not scheduled"]
    findings = audit["policy_findings"]
    return {
        "month": audit["month"],
        "coverage": audit["coverage"],
        "problem_windows": [
            {k: w[k] for k in ("analysis", "window", "status", "flags")}
            for w in problems[:PROMPT_ROWS]
        ],
        "problem_windows_total": len(problems),
        "deliveries": audit["delivery_counts"],
        "failed_deliveries": [
            {k: d[k] for k in ("report", "partition", "kind", "error")}
            for d in audit["deliveries"]
            if d["status"] != "sent"
        ][:PROMPT_ROWS],
        "log_lines_in_month": audit["log_lines"],
        "log_scan": {
            k: audit["log_scan"][k] for k in ("verdict", "reasons", "lines", "parsed", "skipped")
        },
        "policy_findings": [
            {k: f[k] for k in ("id", "rule", "client", "path", "count", "first", "last")}
            for f in findings[:PROMPT_ROWS]
        ],
        "policy_findings_total": len(findings),
    }


def known_subjects(data: dict[str, Any]) -> set[str]:
    rules = {"sensitive-path", "auth-failure-burst", "pii-email", "pii-card"}
    return set(data["coverage"]) | rules | {f["id"] for f in data["policy_findings"]}


def check(narrative: Narrative, data: dict[str, Any]) -> None:
    check_narrative(narrative, known_subjects(data), max_findings=6)


def _gaps(coverage: dict[str, dict[str, int]]) -> list[str]:
    gaps = []
    for analysis, c in coverage.items():
        parts = [f"{c[s]} {s}" for s in ("missing", "failed", "late") if c[s]]
        parts += [f"{c[f]} {f}" for f in ("degraded", "re-run", "retried") if c[f]]
        if parts:
            gaps.append(f"{analysis} ({', '.join(parts)})")
    return gaps


def _log_sentence(data: dict[str, Any]) -> str:
    scan = data["log_scan"]
    if scan["verdict"] == "unknown":
        return (
            f" The access-log scan is UNKNOWN ({'; '.join(scan['reasons'][:3])}): policy "
            f"findings cannot be ruled out; {data['policy_findings_total']} found in what "
            "was read."
        )
    return (
        f" The access-log scan of {scan['parsed']} lines in the month"
        f" ({scan['skipped']} more skipped as unreadable) found"
        f" {data['policy_findings_total']} policy finding(s)."
    )


def offline_narrative(data: dict[str, Any]) -> Narrative:
    """A deterministic summary from the same figures, for when no LLM is configured."""
    coverage = data["coverage"]
    unscheduled = sum(c.get("not scheduled", 0) for c in coverage.values())
    due = sum(c["windows"] for c in coverage.values()) - unscheduled
    produced = sum(c["ok"] + c["late"] for c in coverage.values())
    gaps = _gaps(coverage)
    sent = sum(c.get("sent", 0) for c in data["deliveries"].values())
    failed = sum(c.get("failed", 0) for c in data["deliveries"].values())
    summary = (
        f"In {data['month']}, {produced} of {due} scheduled windows produced their report"
        + (f"; exceptions: {'; '.join(gaps)}." if gaps else ", all on time.")
        + (f" {unscheduled} more were not scheduled." if unscheduled else "")
        + f" {sent} alert(s) and e-mail(s) went out, {failed} failed."
        + _log_sentence(data)
    )
    findings = [
        Finding(
            title=f"{f['id']}: {f['rule']} from {f['client']}",
            detail=f"{f['count']} request(s) to {f['path']} between {f['first']} and {f['last']}.",
            subjects=[f["id"]],
        )
        for f in data["policy_findings"][:5]
    ]
    return Narrative(summary=summary, findings=findings)
