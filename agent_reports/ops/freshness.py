"""How fresh each analysis must be, declared once as Dagster freshness policies.

The policies sit on the report assets, so the UI (and Dagster's freshness daemon) shows
each analysis as fresh or stale. The numbers are "one period plus slack" since the last
report: a daily market report every 25 h, an hourly anomaly report every 2 h, a weekly
churn report every 8 days, a monthly audit every 32 days; the briefing must be
materialised between 09:00 and 09:30 New York each weekday.

`freshness_state` evaluates the same two policy kinds the same way as Dagster's
evaluators, but at an instant it is given, so the alert sensor can be tested at fixed
instants.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetKey,
    AssetSpec,
    Definitions,
    FreshnessPolicy,
    TimeWindow,
    TimeWindowPartitionsDefinition,
    apply_freshness_policy,
)

FRESHNESS: dict[AssetKey, FreshnessPolicy] = {
    AssetKey("market_report"): FreshnessPolicy.time_window(fail_window=timedelta(hours=25)),
    AssetKey("anomalies_report"): FreshnessPolicy.time_window(fail_window=timedelta(hours=2)),
    AssetKey("churn_report"): FreshnessPolicy.time_window(fail_window=timedelta(days=8)),
    AssetKey("compliance_report"): FreshnessPolicy.time_window(fail_window=timedelta(days=32)),
    AssetKey("briefing_report"): FreshnessPolicy.cron(
        deadline_cron="30 9 * * 1-5",
        lower_bound_delta=timedelta(minutes=30),
        timezone="America/New_York",
    ),
}


def with_freshness(defs: Definitions) -> Definitions:
    """The same definitions with each report asset carrying its freshness policy."""

    def apply(spec: AssetSpec) -> AssetSpec:
        policy = FRESHNESS.get(spec.key)
        return apply_freshness_policy(spec, policy) if policy else spec

    return defs.map_asset_specs(func=apply)


@dataclass(frozen=True)
class Freshness:
    """The state of one asset at one instant, and what makes an incident unique."""

    state: str  # PASS | WARN | FAIL | UNKNOWN (never materialised)
    detail: str
    incident: str | None = None  # the same while one incident lasts


def latest_cron_tick(cron: str, timezone: str, now: datetime) -> datetime:
    """The last tick of `cron` at or before `now`: the start of the partition that a
    cron-based partitions definition has at `now` (a public way to walk a cron)."""
    ticks = TimeWindowPartitionsDefinition(
        cron_schedule=cron, timezone=timezone, start=now - timedelta(days=400), fmt="%Y%m%d%H%M"
    )
    keys = ticks.get_partition_keys_in_time_window(TimeWindow(now - timedelta(days=32), now))
    windows = [ticks.time_window_for_partition_key(key) for key in keys]
    return max(t for w in windows for t in (w.start, w.end) if t <= now)


def freshness_state(
    policy: FreshnessPolicy, last_update: datetime | None, now: datetime
) -> Freshness:
    """Dagster's rule for the policy, evaluated at `now` (see the module docstring)."""
    if last_update is None:
        return Freshness("UNKNOWN", "never materialised")
    if hasattr(policy, "fail_window"):
        age = now - last_update
        fail = policy.fail_window.to_timedelta()
        warn = policy.warn_window.to_timedelta() if policy.warn_window else None
        detail = f"last report {_hours(age)} ago (limit {_hours(fail)})"
        if age >= fail:
            return Freshness("FAIL", detail, f"no-update-since:{last_update.isoformat()}")
        if warn is not None and age >= warn:
            return Freshness("WARN", detail)
        return Freshness("PASS", detail)
    tick = latest_cron_tick(policy.deadline_cron, policy.timezone, now)
    lower = tick - policy.lower_bound_delta
    detail = (
        f"expected between {lower.isoformat()} and {tick.isoformat()}, "
        f"last {last_update.isoformat()}"
    )
    if last_update >= lower:
        return Freshness("PASS", detail)
    return Freshness("FAIL", detail, f"deadline:{tick.astimezone(UTC).isoformat()}")


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"
