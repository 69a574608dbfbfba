"""The market analysis, declared once: one UTC day per partition, run at 06:00 UTC for the
day before; its report is due 25 hours after the day ends."""

from datetime import timedelta

from dagster import DailyPartitionsDefinition

from agent_reports.core.declaration import Analysis, Deadline, Schedule

MARKET = Analysis(
    name="market",
    partitions=DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC"),
    schedule=Schedule(
        hour=6,
        description="Every day at 06:00 UTC: the previous UTC day's prices (run_key = the day).",
    ),
    lag=timedelta(hours=6),
    pool="market",
    deadline=Deadline(after_end=timedelta(hours=25)),
    owner="team:market-analytics",
    cadence="daily",
    description="Prices → metrics → report for one UTC day (or a range, in a backfill).",
    package=__package__,
)

# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, market_partitions = MARKET.name, MARKET.pool, MARKET.partitions
market_job = MARKET.job
