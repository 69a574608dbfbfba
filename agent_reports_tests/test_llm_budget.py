"""The monthly token budget per analysis: real Dagster runs against a real llmock server
(its replies report token usage), spend recorded in a real SQLite database."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest

from agent_reports.core.budget import BudgetSpent, TokenBudget
from agent_reports_tests.conftest import LLMServer

DAY_1, DAY_2 = "2024-03-05", "2024-03-06"
VALID = {
    "summary": "ALPH led a mixed session.",
    "findings": [{"title": "ALPH moved", "detail": "A notable move.", "subjects": ["ALPH"]}],
}


@pytest.fixture
def llm(llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> LLMServer:
    llm_server.use(monkeypatch)
    for name in (
        "AGENT_REPORTS_TOKEN_BUDGET",
        "AGENT_REPORTS_TOKEN_BUDGET_MARKET",
        "AGENT_REPORTS_FAIL_ON_LLM_ERROR",
        "AGENT_REPORTS_LEDGER_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    llm_server.reply_json(VALID)
    return llm_server


def _record(isolated_dirs, day: str) -> dict:
    return json.loads((isolated_dirs / "reports" / "market" / f"{day}.json").read_text())


def _metadata(result) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "market_report"
    ]
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def _this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def test_a_spent_budget_degrades_without_asking_and_cache_hits_are_free(
    llm, run_partition, isolated_dirs, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_TOKEN_BUDGET_MARKET", "50")
    first = _metadata(run_partition("market_job", DAY_1))
    spent = first["llm_prompt_tokens"] + first["llm_completion_tokens"]
    assert first["degraded"] is False and spent > 50  # one request may overshoot
    assert first["llm_tokens_month_to_date"] == spent
    assert len(llm.chat_requests()) == 1

    second = _metadata(run_partition("market_job", DAY_2))
    assert len(llm.chat_requests()) == 1  # no request once the budget is spent
    reason = (
        f"monthly token budget of 50 tokens for market is spent ({spent} used in {_this_month()})"
    )
    record = _record(isolated_dirs, DAY_2)
    assert record["degraded"] is True and record["generated_by"] == "offline"
    assert reason in record["notes"][0]
    assert second["degraded"] is True and second["llm_requests"] == 0
    assert second["llm_tokens_month_to_date"] == spent

    again = _metadata(run_partition("market_job", DAY_1))  # answered before: from the cache
    assert again["llm_cache_hit"] is True and again["degraded"] is False
    assert len(llm.chat_requests()) == 1

    monkeypatch.setenv("AGENT_REPORTS_TOKEN_BUDGET_MARKET", "1000000")  # raised: asks again
    assert _metadata(run_partition("market_job", DAY_2))["degraded"] is False
    assert len(llm.chat_requests()) == 2


def test_the_default_budget_applies_unless_the_analysis_has_its_own(
    llm, run_partition, isolated_dirs, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_TOKEN_BUDGET", "0")
    run_partition("market_job", DAY_1)
    assert _record(isolated_dirs, DAY_1)["degraded"] is True
    assert "budget of 0 tokens for market" in _record(isolated_dirs, DAY_1)["notes"][0]
    assert llm.chat_requests() == []
    monkeypatch.setenv("AGENT_REPORTS_TOKEN_BUDGET_MARKET", "1_000_000")
    run_partition("market_job", DAY_1)
    assert _record(isolated_dirs, DAY_1)["degraded"] is False
    assert len(llm.chat_requests()) == 1


def test_a_spent_budget_degrades_even_where_llm_errors_fail_the_run(
    llm, run_partition, isolated_dirs, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_TOKEN_BUDGET_MARKET", "0")
    monkeypatch.setenv("AGENT_REPORTS_FAIL_ON_LLM_ERROR", "all")
    assert run_partition("market_job", DAY_1).success
    assert _record(isolated_dirs, DAY_1)["degraded"] is True


def test_the_spend_survives_a_new_process(llm, run_partition):
    spent = _metadata(run_partition("market_job", DAY_1))["llm_tokens_month_to_date"]
    code = "from agent_reports.core.budget import TokenBudget; print(TokenBudget().spent('market'))"
    output = subprocess.run(
        [sys.executable, "-c", code], env=os.environ, capture_output=True, text=True, check=True
    ).stdout
    assert int(output) == spent > 0


def test_last_months_spend_does_not_count(llm, run_partition, isolated_dirs, monkeypatch):
    long_ago = TokenBudget(clock=lambda: datetime(2020, 1, 15, tzinfo=UTC))
    long_ago.spend("market", 10_000)
    monkeypatch.setenv("AGENT_REPORTS_TOKEN_BUDGET_MARKET", "5000")
    run_partition("market_job", DAY_1)
    assert _record(isolated_dirs, DAY_1)["degraded"] is False
    assert len(llm.chat_requests()) == 1
    assert long_ago.spent("market") == 10_000  # January 2020's record is kept, not reset


def test_a_new_utc_month_starts_a_new_budget(isolated_dirs):
    now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
    budget = TokenBudget(limits={"market": 100}, clock=lambda: now)  # reads `now` below
    budget.spend("market", 120)
    with pytest.raises(
        BudgetSpent, match=r"100 tokens for market is spent \(120 used in 2026-11\)"
    ):
        budget.check("market")
    budget.check("churn")  # other analyses keep their own (here unlimited) budget

    now = datetime(2026, 12, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # still Nov, UTC
    with pytest.raises(BudgetSpent):
        budget.check("market")
    now = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    budget.check("market")
    assert budget.spent("market") == 0 and budget.spent("market", "2026-11") == 120


@pytest.fixture(params=["sqlite", "postgresql"])
def budget_url(request, isolated_dirs) -> str | None:
    """None: the default SQLite file under the state dir; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    pg = request.getfixturevalue("postgres_db")
    host = f"{pg['DAGSTER_PG_HOST']}:{pg['DAGSTER_PG_PORT']}"
    return f"postgresql+psycopg2://{pg['DAGSTER_PG_USER']}@{host}/{pg['DAGSTER_PG_DB']}"


def test_concurrent_spending_loses_no_tokens(budget_url):
    budget = TokenBudget(budget_url)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: budget.spend("market", 7), range(80)))
    fresh = TokenBudget(budget_url)
    assert fresh.spent("market") == 560 and fresh.spent("churn") == 0
    budget.engine.dispose()
    fresh.engine.dispose()


def test_a_malformed_budget_fails_the_run_before_any_request(llm, run_partition, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_TOKEN_BUDGET_MARKET", "lots")
    result = run_partition("market_job", DAY_1, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert "AGENT_REPORTS_TOKEN_BUDGET_MARKET must be a whole number of tokens" in (
        failure.event_specific_data.error.to_string()
    )
    assert llm.chat_requests() == []
