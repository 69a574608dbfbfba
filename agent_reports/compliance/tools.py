"""Read-only tools the compliance analyst may call before it writes the executive summary.

Built from the month's audit the report's partition already computed (policy findings
with their redacted evidence lines, problem windows with their run ids); see
core/investigation.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_reports.core.investigation import Toolbox, ToolError, toolbox


def tools(audit: dict[str, Any]) -> Toolbox:
    """The compliance tools over one month's `audit`."""
    findings = {str(f["id"]): f for f in audit["policy_findings"]}
    windows = audit["problem_windows"]
    return toolbox(
        [finding_evidence(findings), problem_windows(windows)],
        {"findings": findings, "windows": windows},
    )


def finding_evidence(findings: dict[str, dict[str, Any]]) -> Callable[..., Any]:
    def finding_evidence(finding_id: str) -> dict[str, Any]:
        """One policy finding in full: rule, client, path, first and last time, count and
        its evidence lines (file:line), personal data redacted."""
        if finding_id not in findings:
            known = ", ".join(sorted(findings)[:20]) or "none"
            raise ToolError(f"unknown finding {finding_id!r}; known: {known}")
        return findings[finding_id]

    return finding_evidence


def problem_windows(windows: list[dict[str, Any]]) -> Callable[..., Any]:
    def problem_windows(analysis: str) -> dict[str, Any]:
        """The month's problem windows of one analysis, with deadlines, runs and run ids."""
        rows = [w for w in windows if w["analysis"] == analysis]
        return {"analysis": analysis, "windows": rows[:20], "total": len(rows)}

    return problem_windows
