"""A monthly budget per analysis, in tokens and in USD, so a runaway backfill cannot spend
without limit.

Every reply's tokens (prompt + completion, invalid replies included) are added to the
analysis' total for the calendar month (UTC) in which they were spent, in a small durable
table (SQLite under the state dir, or the ledger database when AGENT_REPORTS_LEDGER_URL
is set). Before each request the analyst checks that total against the limit; once it is
reached the analysis degrades to the offline template instead of overspending, until the
month turns. Spending happens in real time, so the month comes from the wall clock (the
clock is injectable for tests), not from the partition.

Check and spend are not one transaction: requests already in flight when the limit is
reached still complete and are counted, so the overshoot is at most the tokens of the
requests in flight at once (`AnalystResource.max_concurrency`). Cache hits cost nothing.

Limits: AGENT_REPORTS_TOKEN_BUDGET_<ANALYSIS> (e.g. ..._MARKET=200000), else
AGENT_REPORTS_TOKEN_BUDGET for every analysis; unset means unlimited, 0 means no requests.
In money: AGENT_REPORTS_USD_BUDGET_<ANALYSIS>, else AGENT_REPORTS_USD_BUDGET (e.g. 5.00);
the cost of each reply is added beside its tokens when the model's price is known, and a
USD limit with an unknown price fails the run before any request (see prices.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from agent_reports.core import settings


class BudgetSpent(RuntimeError):
    """The analysis' monthly token budget is used up; the message is the report's reason."""


_metadata = sa.MetaData()
token_spend = sa.Table(
    "llm_token_spend",
    _metadata,
    sa.Column("analysis", sa.String(100), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),  # YYYY-MM, UTC
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
# Its own table, so an existing token table needs no migration.
usd_spend = sa.Table(
    "llm_usd_spend",
    _metadata,
    sa.Column("analysis", sa.String(100), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("unpriced_tokens", sa.BigInteger, nullable=False),  # tokens of unknown cost
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def default_budget_url() -> str:
    """The ledger database when one is configured, else its own SQLite file: the SQLite
    delivery ledger holds its lock while an email is sent, and spending must not wait."""
    return settings.database_url("llm_budget.sqlite")


def limits_from_env(
    analyses: Iterable[str] | None = None,
    prefix: str = "AGENT_REPORTS_TOKEN_BUDGET",
    read: Callable[[str], float | None] | None = None,
) -> dict[str, Any]:
    """The analyses with a limit of their own, `<prefix>_<ANALYSIS>` (tokens by default, or
    USD with `read=_usd_amount`); a bad value fails loudly."""
    limits = {}
    for analysis in settings.analysis_names() if analyses is None else analyses:
        own = (read or _token_count)(f"{prefix}_{analysis.upper()}")
        if own is not None:
            limits[analysis] = own
    return limits


def _usd_amount(name: str) -> float | None:
    value = settings.env(name)
    if value is None:
        return None
    try:
        amount = float(value.replace("_", "").lstrip("$"))
    except ValueError:
        amount = -1.0
    if not amount >= 0:
        raise ValueError(f"{name} must be an amount in USD (>= 0, e.g. 5.00), not {value!r}")
    return amount


def _token_count(name: str) -> int | None:
    value = settings.env(name)
    if value is None:
        return None
    try:
        count = int(value.replace("_", ""))
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{name} must be a whole number of tokens (>= 0), not {value!r}")
    return count


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TokenBudget:
    """Monthly token spend per analysis, checked before and recorded after each request."""

    def __init__(
        self,
        url: str | None = None,
        limits: Mapping[str, int] | None = None,
        default_limit: int | None = None,
        clock: Callable[[], datetime] = _utc_now,
        usd_limits: Mapping[str, float] | None = None,
        default_usd_limit: float | None = None,
    ):
        url = url or default_budget_url()
        if url.startswith("sqlite"):  # a connection per use: no file handles left per run
            options = {"connect_args": {"timeout": 120}, "poolclass": sa.pool.NullPool}
        else:
            options = {}
        self.engine = sa.create_engine(url, **options)
        _metadata.create_all(self.engine)
        self.limits = dict(limits or {})
        self.default_limit = default_limit
        self.usd_limits = dict(usd_limits or {})
        self.default_usd_limit = default_usd_limit
        self.clock = clock

    @classmethod
    def from_env(cls, url: str | None = None) -> TokenBudget:
        """Limits from AGENT_REPORTS_TOKEN_BUDGET[_<ANALYSIS>] and ..._USD_BUDGET[_<ANALYSIS>]."""
        return cls(
            url,
            limits_from_env(),
            _token_count("AGENT_REPORTS_TOKEN_BUDGET"),
            usd_limits=limits_from_env(prefix="AGENT_REPORTS_USD_BUDGET", read=_usd_amount),
            default_usd_limit=_usd_amount("AGENT_REPORTS_USD_BUDGET"),
        )

    def month(self, at: datetime | None = None) -> str:
        """The UTC calendar month, YYYY-MM, of `at` (default: now)."""
        return (at or self.clock()).astimezone(UTC).strftime("%Y-%m")

    def limit(self, analysis: str) -> int | None:
        return self.limits.get(analysis, self.default_limit)

    def usd_limit(self, analysis: str) -> float | None:
        return self.usd_limits.get(analysis, self.default_usd_limit)

    @property
    def has_usd_limits(self) -> bool:
        return bool(self.usd_limits) or self.default_usd_limit is not None

    def spent_usd(self, analysis: str, month: str | None = None) -> tuple[float, int]:
        """This month's cost in USD, and the tokens whose cost is unknown."""
        query = sa.select(usd_spend.c.usd, usd_spend.c.unpriced_tokens).where(
            usd_spend.c.analysis == analysis, usd_spend.c.month == (month or self.month())
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return (row.usd, row.unpriced_tokens) if row else (0.0, 0)

    def spent(self, analysis: str, month: str | None = None) -> int:
        query = sa.select(token_spend.c.tokens).where(
            token_spend.c.analysis == analysis, token_spend.c.month == (month or self.month())
        )
        with self.engine.connect() as connection:
            return connection.execute(query).scalar_one_or_none() or 0

    def check(self, analysis: str) -> None:
        """Raise BudgetSpent when the analysis has used either limit for this month."""
        limit, usd_limit = self.limit(analysis), self.usd_limit(analysis)
        month = self.month()
        if limit is not None:
            used = self.spent(analysis, month)
            if used >= limit:
                raise BudgetSpent(
                    f"monthly token budget of {limit} tokens for {analysis} is spent "
                    f"({used} used in {month})"
                )
        if usd_limit is not None:
            usd, _ = self.spent_usd(analysis, month)
            if usd >= usd_limit:
                raise BudgetSpent(
                    f"monthly budget of ${usd_limit:.2f} for {analysis} is spent "
                    f"(${usd:.4f} used in {month})"
                )

    def spend(self, analysis: str, tokens: int, usd: float | None = None) -> None:
        """Add `tokens` (and their cost, or to the unpriced tokens when it is unknown) to
        this month's totals, atomically (concurrent spenders all count)."""
        now = self.clock()
        key = {"analysis": analysis, "month": self.month(now), "updated_at": now}
        unpriced = tokens if usd is None else 0
        with self.engine.begin() as connection:
            insert = _dialect_insert(connection)
            connection.execute(
                insert(token_spend)
                .values(**key, tokens=tokens)
                .on_conflict_do_update(
                    index_elements=["analysis", "month"],
                    set_={"tokens": token_spend.c.tokens + tokens, "updated_at": now},
                )
            )
            connection.execute(
                insert(usd_spend)
                .values(**key, usd=usd or 0.0, unpriced_tokens=unpriced)
                .on_conflict_do_update(
                    index_elements=["analysis", "month"],
                    set_={
                        "usd": usd_spend.c.usd + (usd or 0.0),
                        "unpriced_tokens": usd_spend.c.unpriced_tokens + unpriced,
                        "updated_at": now,
                    },
                )
            )


def _dialect_insert(connection: sa.Connection) -> Callable:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"the token budget supports sqlite and postgresql, not {dialect}")
    return insert
