"""Churn metrics for one week from the customer base: pure pandas and scikit-learn, no Dagster.

The view is the base as of the week's end (`customers_as_of`): customers who signed up
before it; churned if they left before it, active otherwise. Every customer whose
outcome is known that way trains a logistic regression (one-hot categories, scaled
numbers, log tenure), validated by stratified 5-fold cross-validation: each customer's
risk comes from the fold model that never saw them, so the active customers' risks and
the ROC AUC are both out of sample. Seeded folds and a deterministic solver give the same
figures on a re-run. Segments (contract, tenure band, payment method, internet service)
carry churn rates and lift over the base rate, the measurable drivers.
"""

from __future__ import annotations

import io
import math
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from agent_reports.core.customers import CATEGORICAL_COLUMNS
from agent_reports.core.reports import csv_bytes

AVG_MONTH_DAYS = 30.4375
FOLDS = 5
MIN_PER_CLASS = 10
TOP_AT_RISK = 50
SEGMENT_COLUMNS = ("contract", "tenure_band", "payment_method", "internet_service")
TENURE_BANDS = ((0, 12, "0-11 months"), (12, 24, "12-23 months"), (24, 48, "24-47 months"))
TENURE_BAND_LAST = "48+ months"
RISK_BANDS = (("high", 0.5), ("medium", 0.25), ("low", 0.0))
TOP_COLUMNS = (
    "customer_id",
    "risk",
    "contract",
    "tenure",
    "monthly_charges",
    "payment_method",
    "internet_service",
)


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def customers_as_of(customers: pd.DataFrame, end: date) -> pd.DataFrame:
    """The base as known at `end`: signed up before it; `churned` only if they left before it.

    With a signup date, tenure and total charges are recomputed for that day (the table's
    own values describe its snapshot date); without one they are used as read.
    """
    cutoff = pd.Timestamp(end)
    frame = customers.copy()
    if "signup_date" in frame:
        frame = frame[frame["signup_date"].isna() | (frame["signup_date"] < cutoff)].copy()
    if "churn_date" in frame:
        dated = frame["churn_date"].notna()
        frame["churned"] = np.where(dated, frame["churn_date"] < cutoff, frame["churned"])
        frame["churned"] = frame["churned"].astype(bool)
        frame.loc[dated & ~frame["churned"], "churn_date"] = pd.NaT
    if "signup_date" in frame:
        left = frame["churn_date"] if "churn_date" in frame else pd.Series(pd.NaT, frame.index)
        stop = left.where(frame["churned"] & left.notna(), cutoff)
        months = ((stop - frame["signup_date"]).dt.days // AVG_MONTH_DAYS).clip(lower=0)
        dated = frame["signup_date"].notna()
        frame["tenure"] = months.where(dated, frame["tenure"])
        recomputed = (frame["tenure"] * frame["monthly_charges"]).round(2)
        frame["total_charges"] = recomputed.where(dated, frame["total_charges"])
    return frame.reset_index(drop=True)


def tenure_band(tenure: pd.Series) -> pd.Series:
    bands = pd.Series(TENURE_BAND_LAST, index=tenure.index, dtype=object)
    for low, high, label in reversed(TENURE_BANDS):
        bands[(tenure >= low) & (tenure < high)] = label
    return bands


def model_features(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The model's inputs: numbers (blank total charges imputed as monthly × tenure) and the
    categorical columns the source has."""
    features = pd.DataFrame(index=frame.index)
    features["tenure"] = frame["tenure"]
    features["log_tenure"] = np.log1p(frame["tenure"])
    features["monthly_charges"] = frame["monthly_charges"]
    features["total_charges"] = frame["total_charges"].fillna(
        frame["monthly_charges"] * frame["tenure"]
    )
    categorical = ["contract", *[c for c in CATEGORICAL_COLUMNS if c in frame]]
    for column in categorical:
        features[column] = frame[column].astype(str)
    return features, ["tenure", "log_tenure", "monthly_charges", "total_charges"], categorical


def out_of_fold_risk(known: pd.DataFrame, seed: int) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Each customer's churn probability from the fold model that did not train on them,
    and the model's description with its cross-validated ROC AUC."""
    labels = known["churned"].to_numpy(dtype=int)
    counts = np.bincount(labels, minlength=2)
    info: dict[str, Any] = {
        "kind": "logistic regression (one-hot categories, scaled numbers, log tenure)",
        "training_rows": len(known),
        "churned_rows": int(counts[1]),
        "seed": seed,
    }
    if counts.min() < MIN_PER_CLASS:
        reason = f"too few customers of one outcome ({counts[1]} churned, {counts[0]} active)"
        return None, info | {"status": "insufficient_data", "reason": reason, "roc_auc": None}
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features, numeric, categorical = model_features(known)
    pipeline = make_pipeline(
        ColumnTransformer(
            [
                ("numbers", StandardScaler(), numeric),
                ("categories", OneHotEncoder(handle_unknown="ignore"), categorical),
            ]
        ),
        LogisticRegression(max_iter=2000),
    )
    folds = int(min(FOLDS, counts.min()))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    risk = cross_val_predict(pipeline, features, labels, cv=cv, method="predict_proba")[:, 1]
    auc = roc_auc_score(labels, risk)
    validation = f"stratified {folds}-fold cross-validation, out-of-fold predictions"
    return risk, info | {
        "status": "ok",
        "roc_auc": _r(auc),
        "validation": validation,
        "features": numeric + categorical,
    }


def _segments(known: pd.DataFrame, column: str, base_rate: float) -> list[dict[str, Any]]:
    rows = []
    for value, group in known.groupby(column, sort=True):
        churned = int(group["churned"].sum())
        rate = churned / len(group)
        active = group[~group["churned"]]
        mean_risk = active["risk"].mean() if len(active) and active["risk"].notna().any() else None
        rows.append(
            {
                "segment": str(value),
                "customers": len(group),
                "churned": churned,
                "churn_rate": _r(rate),
                "lift": _r(rate / base_rate) if base_rate else None,
                "active": len(active),
                "mean_risk_active": _r(mean_risk),
            }
        )
    return sorted(rows, key=lambda row: (-(row["churn_rate"] or 0), row["segment"]))


def _in_window(frame: pd.DataFrame, column: str, start: date, end: date) -> int | None:
    if column not in frame:
        return None
    values = frame[column]
    return int(((values >= pd.Timestamp(start)) & (values < pd.Timestamp(end))).sum())


def churn_metrics(
    customers: pd.DataFrame, start: date, end: date, seed: int = 0, top_n: int = TOP_AT_RISK
) -> dict[str, Any]:
    """The report's `metrics` for the week [start, end), JSON-safe and deterministic."""
    known = customers_as_of(customers, end).sort_values("customer_id", kind="stable")
    known = known.reset_index(drop=True)
    risk, model = out_of_fold_risk(known, seed)
    known["risk"] = np.round(risk, 4) if risk is not None else np.nan
    known["tenure_band"] = tenure_band(known["tenure"])
    churned = int(known["churned"].sum())
    base_rate = churned / len(known) if len(known) else 0.0
    active = known[~known["churned"]]
    return {
        "week_start": start.isoformat(),
        "week_end": end.isoformat(),
        "customers": {
            "known": len(known),
            "active": len(active),
            "churned": churned,
            "churn_rate": _r(base_rate),
            "churned_this_week": _in_window(customers, "churn_date", start, end),
            "signed_up_this_week": _in_window(customers, "signup_date", start, end),
        },
        "data": {
            "dated": any(
                c in customers and customers[c].notna().any() for c in ("signup_date", "churn_date")
            ),
            "imputed_total_charges": int(known["total_charges"].isna().sum()),
        },
        "model": model,
        "risk": _risk_summary(active["risk"]) if risk is not None else None,
        "segments": {
            column: _segments(known, column, base_rate)
            for column in SEGMENT_COLUMNS
            if column in known
        },
        "top_at_risk": _top_at_risk(active, top_n) if risk is not None else [],
        "trend": churn_trend(customers, end),
    }


TREND_WEEKS = 12
SPIKE_FACTOR = 2.0  # a week is a spike at twice the trend's median and
SPIKE_MIN_EXTRA = 5  # at least this many customers more


def churn_trend(customers: pd.DataFrame, end: date) -> dict[str, Any] | None:
    """Customers who left in each of the TREND_WEEKS weeks up to `end`, the median, and
    the spike weeks (SPIKE_FACTOR × the median, SPIKE_MIN_EXTRA more); None without churn
    dates."""
    if "churn_date" not in customers or not customers["churn_date"].notna().any():
        return None
    stop = pd.Timestamp(end)
    starts = [stop - pd.Timedelta(weeks=n) for n in range(TREND_WEEKS, 0, -1)]
    dates = customers["churn_date"]
    counts = [int(((dates >= s) & (dates < s + pd.Timedelta(weeks=1))).sum()) for s in starts]
    median = float(np.median(counts))
    spikes = [
        s.date().isoformat()
        for s, n in zip(starts, counts, strict=True)
        if n >= SPIKE_FACTOR * median and n >= median + SPIKE_MIN_EXTRA
    ]
    weeks = [
        {"week": s.date().isoformat(), "churned": n} for s, n in zip(starts, counts, strict=True)
    ]
    return {"weeks": weeks, "median": median, "spikes": spikes}


def _risk_summary(risk: pd.Series) -> dict[str, Any]:
    edges = np.linspace(0, 1, 11)
    counts, _ = np.histogram(risk.to_numpy(), bins=edges)
    bands, remaining = {}, risk
    for name, floor in RISK_BANDS:
        bands[name] = int((remaining >= floor).sum())
        remaining = remaining[remaining < floor]
    return {
        "expected_churners": _r(risk.sum(), 1),
        "mean": _r(risk.mean()) if len(risk) else None,
        "bands": bands,
        "histogram": [
            {"from": _r(lo, 1), "to": _r(hi, 1), "customers": int(n)}
            for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)
        ],
    }


def _top_at_risk(active: pd.DataFrame, top_n: int) -> list[dict[str, Any]]:
    ordered = active.assign(_neg=-active["risk"]).sort_values(["_neg", "customer_id"])
    rows = []
    for record in ordered.head(top_n).to_dict("records"):
        row = {column: record.get(column) for column in TOP_COLUMNS}
        row["risk"] = _r(row["risk"])
        row["tenure"] = int(row["tenure"])
        row["monthly_charges"] = _r(row["monthly_charges"], 2)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- outputs


def at_risk_csv(metrics: dict[str, Any]) -> bytes:
    """The top at-risk active customers as CSV (the email's attachment)."""
    rows = [
        [rank, *(row[c] for c in TOP_COLUMNS)] for rank, row in enumerate(metrics["top_at_risk"], 1)
    ]
    return csv_bytes(["rank", *TOP_COLUMNS], rows)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return buffer.getvalue()


def risk_chart(metrics: dict[str, Any]) -> bytes:
    """Histogram of the active customers' churn risk, as PNG bytes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3), layout="constrained")
    axes = figure.subplots()
    bins = metrics["risk"]["histogram"]
    axes.bar([b["from"] + 0.05 for b in bins], [b["customers"] for b in bins], width=0.09)
    axes.set(xlabel="churn risk", ylabel="active customers", xlim=(0, 1))
    axes.set_title("Risk distribution of active customers")
    return _png(figure)


def segment_chart(metrics: dict[str, Any]) -> bytes:
    """Churn rate by segment (contract, tenure band, payment method), as PNG bytes."""
    from matplotlib.figure import Figure

    columns = [c for c in ("contract", "tenure_band", "payment_method") if c in metrics["segments"]]
    figure = Figure(figsize=(6, 1.2 + 0.9 * len(columns) * 1.5), layout="constrained")
    axes_list = figure.subplots(len(columns), 1, squeeze=False)[:, 0]
    for axes, column in zip(axes_list, columns, strict=True):
        rows = sorted(metrics["segments"][column], key=lambda r: r["segment"])
        axes.barh([r["segment"][:30] for r in rows], [r["churn_rate"] for r in rows])
        axes.set_title(f"churn rate by {column.replace('_', ' ')}", fontsize=9)
        axes.set_xlim(0, 1)
        axes.tick_params(labelsize=8)
    return _png(figure)
