"""What the churn analyst is asked, what a valid answer is, and the offline template.

The model sees aggregated statistics only: counts, rates, the model's AUC, segments of at
least MIN_SEGMENT_SIZE customers, and the ten riskiest active customers by id with their
contract and charges. Customer text is untrusted: ids and segment labels that do not
look like ids or category names are replaced by a hash before they reach the prompt.
Bump PROMPT_VERSION whenever the instructions, the data layout or the schema change.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from agent_reports.core.analyst import (
    Finding,
    InvalidReply,
    Narrative,
    check_narrative,
    findings_field,
)
from agent_reports.core.reports import format_value

PROMPT_VERSION = "churn-v2"
PROMPT_TOP_CUSTOMERS = 10
MIN_SEGMENT_SIZE = 10
MAX_ACTIONS = 5
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_SAFE_LABEL = re.compile(r"[A-Za-z0-9 ._()/+&-]{1,40}")


class ChurnNarrative(Narrative):
    """Findings on the riskiest segments and customers, plus concrete retention actions."""

    findings: list[Finding] = findings_field(5)
    actions: list[Finding] = findings_field(MAX_ACTIONS)


SCHEMA = ChurnNarrative

INSTRUCTIONS = """\
You are a customer-retention analyst writing the weekly churn report for a subscription
business. The data gives the customer base at the end of the week (active, churned,
churn rate), a churn model's cross-validated ROC AUC and its risk distribution over
active customers, churn rates and lift by segment (contract, tenure band, payment
method, internet service), and the riskiest active customers.
Write a summary of at most four sentences: how many customers are at risk, how reliable
the model is, and where the risk concentrates. Then up to five findings on the segments
and customers that drive churn, citing rates and lift; each names its segments or
customer ids in `subjects`, exactly as spelled in the data. Then up to five concrete
retention actions (who to contact, with what offer or fix, why), each naming the
segments or customer ids it targets in `subjects`. Do not invent figures or customers."""


def safe_id(value: Any) -> str:
    text = str(value)
    return text if _SAFE_ID.fullmatch(text) else "id-" + _digest(text)


def safe_label(value: Any) -> str:
    text = str(value)
    return text if _SAFE_LABEL.fullmatch(text) else "label-" + _digest(text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def prompt_data(metrics: dict[str, Any]) -> dict[str, Any]:
    """The compact statistics the model sees: aggregates and a few ids, never raw rows."""
    model = metrics["model"]
    segments = {
        column: [
            {**{k: row[k] for k in row if k != "segment"}, "segment": safe_label(row["segment"])}
            for row in rows
            if row["customers"] >= MIN_SEGMENT_SIZE
        ]
        for column, rows in metrics["segments"].items()
    }
    top = [
        {
            "customer_id": safe_id(row["customer_id"]),
            "risk": row["risk"],
            "tenure_months": row["tenure"],
            "monthly_charges": row["monthly_charges"],
            **{
                key: safe_label(row[key])
                for key in ("contract", "payment_method", "internet_service")
                if row.get(key) is not None
            },
        }
        for row in metrics["top_at_risk"][:PROMPT_TOP_CUSTOMERS]
    ]
    return {
        "week": {"start": metrics["week_start"], "end": metrics["week_end"]},
        "customers": metrics["customers"],
        "model": {k: model.get(k) for k in ("status", "roc_auc", "training_rows", "churned_rows")},
        "risk": metrics["risk"] and {k: metrics["risk"][k] for k in ("expected_churners", "bands")},
        "segments": segments,
        "top_at_risk": top,
    }


def known_subjects(data: dict[str, Any]) -> set[str]:
    """What a finding or action may name: segments and customer ids present in the data."""
    names = {row["segment"] for rows in data["segments"].values() for row in rows}
    names |= {row["customer_id"] for row in data["top_at_risk"]}
    return names | set(data["segments"])


def check(narrative: ChurnNarrative, data: dict[str, Any]) -> None:
    subjects = known_subjects(data)
    check_narrative(narrative, subjects, max_findings=5)
    if len(narrative.actions) > MAX_ACTIONS:
        raise InvalidReply(f"{len(narrative.actions)} actions, at most {MAX_ACTIONS} allowed")
    check_narrative(Narrative(summary="-", findings=narrative.actions), subjects, MAX_ACTIONS)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else format_value("rate", value)


def _riskiest_segments(data: dict[str, Any], count: int = 3) -> list[tuple[str, dict[str, Any]]]:
    rows = [(column, row) for column, rows in data["segments"].items() for row in rows]
    rows = [(c, r) for c, r in rows if (r["lift"] or 0) > 1.1 and r["active"] > 0]
    rows.sort(key=lambda item: (-(item[1]["lift"] or 0), item[0], item[1]["segment"]))
    return rows[:count]


def offline_narrative(data: dict[str, Any]) -> ChurnNarrative:
    """A deterministic report from the same statistics, for when no LLM is configured."""
    customers, model, risk = data["customers"], data["model"], data["risk"]
    week = data["week"]["start"]
    left = customers["churned_this_week"]
    summary = (
        f"{customers['active']} active customers at the end of the week of {week}"
        + (f"; {left} left during the week" if left is not None else "")
        + f". The all-time churn rate is {_pct(customers['churn_rate'])}."
    )
    if model["status"] != "ok" or risk is None:
        return ChurnNarrative(
            summary=summary + " Not enough churned and active customers to train the model.",
            findings=[],
            actions=[],
        )
    summary += (
        f" The model (cross-validated ROC AUC {model['roc_auc']:.3f}) rates "
        f"{risk['bands']['high']} of them at high risk (50% or more) and "
        f"{risk['bands']['medium']} at medium risk (25-50%)."
    )
    findings, actions = [], []
    for column, row in _riskiest_segments(data):
        label = column.replace("_", " ")
        findings.append(
            Finding(
                title=f"{label}: {row['segment']} churns {row['lift']:.2f}× the base rate",
                detail=f"{row['churned']} of {row['customers']} customers left "
                f"({_pct(row['churn_rate'])}); its {row['active']} active customers have a "
                f"mean risk of {_pct(row['mean_risk_active'])}.",
                subjects=[row["segment"]],
            )
        )
        actions.append(
            Finding(
                title=f"Reach the {row['active']} active customers in {label} {row['segment']}",
                detail="Contact the riskiest first with an offer that removes the reason to "
                "leave: a discounted longer contract, automatic payment, or a service check.",
                subjects=[row["segment"]],
            )
        )
    top = data["top_at_risk"][:5]
    if top:
        ids = [row["customer_id"] for row in top]
        findings.append(
            Finding(
                title="Riskiest active customers",
                detail=", ".join(f"{row['customer_id']} ({_pct(row['risk'])})" for row in top)
                + ".",
                subjects=ids,
            )
        )
        actions.append(
            Finding(
                title="Call the five riskiest customers this week",
                detail="A personal call from the account team, before any automated campaign.",
                subjects=ids,
            )
        )
    return ChurnNarrative(summary=summary, findings=findings, actions=actions)
