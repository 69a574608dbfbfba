"""Operations: the parts that make sure no window is silently missed.

`catchup` launches windows the scheduler missed, `freshness` declares how fresh each
analysis must be, `alerts` raises stale-analysis and failed-run alerts once per incident.

Sensors have no scheduled time of their own, so the ones here read "now" from the
`clock` resource: the wall clock in production, a fixed instant in tests, which makes an
evaluation a pure function of (instance, instant).
"""

from datetime import UTC, datetime

from dagster import ConfigurableResource
from pydantic import Field


class ClockResource(ConfigurableResource):
    """Where sensors get the current time: `fixed_time` pins it (tests, drills)."""

    fixed_time: str | None = Field(
        default=None, description="ISO 8601 instant with offset; empty: the wall clock"
    )

    def now(self) -> datetime:
        if self.fixed_time:
            moment = datetime.fromisoformat(self.fixed_time)
            if moment.tzinfo is None:
                raise ValueError("ClockResource.fixed_time needs a UTC offset")
            return moment.astimezone(UTC)
        return datetime.now(UTC)
