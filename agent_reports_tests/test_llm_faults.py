"""LLM API faults through real Dagster runs of the market analysis, against a real llmock server.

Covered already in test_market_llm.py, not repeated here: a single request's 429 with
Retry-After waited out, a 503 outage degrading without leaking the key, an invented or
malformed reply degrading and not being cached.
"""

import itertools
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from dagster import DagsterInstance

from agent_reports.core.analyst import MAX_RETRY_AFTER, retry_pause_seconds
from agent_reports.definitions import defs
from agent_reports_tests.conftest import (
    BIN,
    LLMServer,
    free_port,
    start_process,
    stop_process,
    wait_for_port,
)

DAY = "2024-03-05"
WEEK = ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08"]
FAKE_KEY = "sk-test-SECRET-faults-0123456789"
VALID = {
    "summary": "ALPH led a mixed session.",
    "findings": [{"title": "ALPH moved", "detail": "A notable move.", "subjects": ["ALPH"]}],
}


@pytest.fixture
def llm(llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> LLMServer:
    llm_server.use(monkeypatch, api_key=FAKE_KEY)
    for name in (
        "AGENT_REPORTS_LLM_TIMEOUT_SECONDS",
        "AGENT_REPORTS_LLM_MAX_RETRIES",
        "AGENT_REPORTS_FAIL_ON_LLM_ERROR",
        "AGENT_REPORTS_TOKEN_BUDGET",
        "AGENT_REPORTS_TOKEN_BUDGET_MARKET",
        "AGENT_REPORTS_LEDGER_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    return llm_server


def _record(isolated_dirs, day: str = DAY) -> dict:
    return json.loads((isolated_dirs / "reports" / "market" / f"{day}.json").read_text())


def _metadata(result, day: str = DAY) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "market_report" and e.partition == day
    ]
    return {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}


def _pending(server: LLMServer) -> list[dict]:
    """Scripted behaviours the server has not used up yet."""
    return server._call("/_llmock/scenario")["pending"]


def _failure_message(result) -> str:
    [failure] = result.get_step_failure_events()
    return failure.event_specific_data.error.to_string()  # with its cause


@pytest.fixture(scope="module")
def slow_llm_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    """A second llmock that takes 0.2 s over every answer, errors included."""
    port = free_port()
    log = tmp_path_factory.mktemp("llmock-slow") / "llmock.log"
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--latency-ms", "200"]
    process = start_process([str(BIN / "llmock"), *args], log)
    try:
        wait_for_port(port, process)
        yield LLMServer(port)
    finally:
        stop_process(process)


def test_a_429_pauses_every_thread_of_a_range_run(
    slow_llm_process, monkeypatch, isolated_dirs, caplog
):
    """Two threads, five days. Both first requests are in flight together; one gets a 429
    with Retry-After: 2 after 0.2 s, the other its answer after 0.5 s. From the 429 on,
    neither thread may send anything for 2 s: without the shared pause, the second
    thread's next request would arrive about 0.3 s after the 429."""
    llm = slow_llm_process
    llm.reset()
    llm.use(monkeypatch, api_key=FAKE_KEY)
    caplog.set_level(logging.WARNING, logger="agent_reports.core.analyst")
    llm.script(
        {"type": "fail", "status": 429, "retry_after": 2, "times": 1},
        {"type": "delay", "seconds": 0.3, "times": None},
        {"type": "reply", "text": json.dumps(VALID), "times": None},
    )
    result = defs.resolve_job_def("market_job").execute_in_process(
        instance=DagsterInstance.ephemeral(),
        tags={
            "dagster/asset_partition_range_start": WEEK[0],
            "dagster/asset_partition_range_end": WEEK[-1],
        },
        run_config={"resources": {"analyst": {"config": {"max_concurrency": 2}}}},
    )
    assert result.success

    requests = llm.chat_requests()  # times: the server's CLOCK_MONOTONIC
    assert [r["status"] for r in requests] == [429] + [200] * len(WEEK)
    refused_at = requests[0]["ended_at"]
    in_flight = [r for r in requests if r["started_at"] <= refused_at]
    later = sorted(r["started_at"] - refused_at for r in requests if r["started_at"] > refused_at)
    assert len(in_flight) == 2 and len(later) == len(WEEK) - 1
    assert later[0] >= 2.0, f"a request arrived {later[0]:.3f} s after the 429"
    pauses = [r for r in caplog.records if "rate limit (HTTP 429)" in r.getMessage()]
    assert len(pauses) == 1  # logged once per pause, whatever the number of threads
    assert FAKE_KEY not in pauses[0].getMessage()
    for day in WEEK:
        assert _record(isolated_dirs, day)["degraded"] is False
        assert _metadata(result, day)["degraded"] is False


@pytest.mark.parametrize(
    ("headers", "retries_taken", "expected"),
    [
        ({"retry-after": "2"}, 0, 2.0),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 0, 1.5),  # ms first, as the SDK
        ({"retry-after": "1000"}, 0, MAX_RETRY_AFTER),  # capped like the SDK's own wait
        ({}, 0, 0.5),  # no header: the SDK's exponential backoff for that retry
        ({}, 2, 2.0),
        ({}, 9, 8.0),
        ({"retry-after": "soon"}, 1, 1.0),
    ],
)
def test_how_long_a_429_pauses(headers, retries_taken, expected):
    assert retry_pause_seconds(headers, retries_taken) == pytest.approx(expected)


def test_a_429_retry_after_http_date_pauses_until_then():
    when = datetime.now(UTC) + timedelta(seconds=30)
    seconds = retry_pause_seconds({"retry-after": format_datetime(when, usegmt=True)}, 0)
    assert 28 <= seconds <= 30


def test_5xx_beyond_max_retries_degrades_with_backoff_and_asks_again_next_run(
    llm, run_partition, isolated_dirs, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_LLM_MAX_RETRIES", "2")
    llm.script({"type": "fail", "status": 500, "times": None})
    result = run_partition("market_job", DAY)
    requests = llm.chat_requests()
    assert [r["status"] for r in requests] == [500, 500, 500]  # 1 + max_retries from env
    first_gap, second_gap = (
        b["started_at"] - a["ended_at"] for a, b in itertools.pairwise(requests)
    )
    # The SDK's backoff: 0.5 s then 1 s, each shortened by up to 25 % of jitter.
    assert 0.37 <= first_gap <= 0.7 and 0.74 <= second_gap <= 1.3
    record = _record(isolated_dirs)
    assert record["degraded"] is True and record["generated_by"] == "offline"
    assert "HTTP 500" in record["notes"][0]
    assert _metadata(result)["degraded"] is True

    llm.reset()
    llm.reply_json(VALID)
    run_partition("market_job", DAY)
    assert len(llm.chat_requests()) == 1  # the degraded answer was not cached
    assert _record(isolated_dirs)["degraded"] is False


def test_a_hang_past_the_timeout_degrades_as_timed_out(
    llm, run_partition, isolated_dirs, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_LLM_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("AGENT_REPORTS_LLM_MAX_RETRIES", "1")
    llm.script(
        {"type": "delay", "seconds": 5, "times": 2},  # short: the server waits it out
        {"type": "reply", "text": json.dumps(VALID), "times": None},
    )
    result = run_partition("market_job", DAY)
    # Both hangs were used and the answer after them was not: two attempts, no third.
    assert [b["type"] for b in _pending(llm)] == ["reply"]
    record = _record(isolated_dirs)
    assert record["degraded"] is True
    assert "timed out (no reply within 1 s, 2 attempts)" in record["notes"][0]
    assert _metadata(result)["degraded"] is True


def test_an_invalid_reply_on_every_attempt_degrades_naming_it(llm, run_partition, isolated_dirs):
    llm.script({"type": "reply", "text": "not json at all", "times": None})
    result = run_partition("market_job", DAY)
    assert len(llm.chat_requests()) == 3  # invalid_reply_attempts
    record = _record(isolated_dirs)
    assert record["degraded"] is True
    assert (
        "3 replies from gpt-4o-mini were invalid; last: not the promised JSON"
        in (record["notes"][0])
    )
    metadata = _metadata(result)
    assert metadata["degraded"] is True
    assert metadata["llm_requests"] == 3 and metadata["llm_prompt_tokens"] > 0  # they cost


def test_degrade_on_failure_false_fails_the_run_with_a_clear_message(
    llm, run_partition, isolated_dirs
):
    llm.script({"type": "reply", "text": "not json at all", "times": None})
    result = run_partition(
        "market_job",
        DAY,
        raise_on_error=False,
        run_config={"resources": {"analyst": {"config": {"degrade_on_failure": False}}}},
    )
    assert not result.success
    message = _failure_message(result)
    assert "market: the LLM analyst failed (3 replies from gpt-4o-mini were invalid" in message
    assert "set to fail rather than degrade" in message
    assert FAKE_KEY not in "".join(str(event) for event in result.all_events)
    assert not (isolated_dirs / "reports" / "market" / f"{DAY}.json").exists()


@pytest.mark.parametrize(("setting", "fails"), [("churn, market", True), ("churn", False)])
def test_fail_on_llm_error_names_the_analyses_that_fail(
    llm, run_partition, isolated_dirs, monkeypatch, setting, fails
):
    monkeypatch.setenv("AGENT_REPORTS_LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("AGENT_REPORTS_FAIL_ON_LLM_ERROR", setting)
    llm.script({"type": "fail", "status": 503, "times": None})
    result = run_partition("market_job", DAY, raise_on_error=False)
    assert result.success is not fails
    if fails:
        assert "the LLM analyst failed (the LLM API answered HTTP 503" in _failure_message(result)
    else:
        assert _record(isolated_dirs)["degraded"] is True


def test_an_unknown_analysis_in_fail_on_llm_error_fails_loudly(llm, run_partition, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_FAIL_ON_LLM_ERROR", "markt")
    llm.reply_json(VALID)
    result = run_partition("market_job", DAY, raise_on_error=False)
    assert not result.success
    assert "names unknown analyses ['markt']" in _failure_message(result)
    assert llm.chat_requests() == []
