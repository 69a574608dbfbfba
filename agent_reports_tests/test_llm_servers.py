"""What real servers do, scripted on a real llmock server, through Dagster runs of the market
analysis: a refused output mode, hangs, garbage, wrong figures, invented names, money.
"""

import json
import os
import time
from collections.abc import Iterator

import pytest
from dagster import DagsterInstance

from agent_reports.core.budget import TokenBudget
from agent_reports.definitions import defs
from agent_reports_tests.conftest import (
    BIN,
    LLMServer,
    free_port,
    start_process,
    stop_process,
    wait_for_port,
)
from agent_reports_tests.test_llm_faults import _metadata, _record

DAY, DAY_2 = "2024-03-05", "2024-03-06"
VALID = {
    "summary": "ALPH led a mixed session.",
    "findings": [{"title": "ALPH moved", "detail": "A notable move.", "subjects": ["ALPH"]}],
}
# What llama.cpp's server (llama-cpp-python 0.3.36) answers to a json_schema request.
LLAMA_CPP_REFUSAL = (
    "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', "
    "'type'), 'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"
)


@pytest.fixture
def llm(llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> LLMServer:
    llm_server.use(monkeypatch)
    for name in (
        "AGENT_REPORTS_LLM_OUTPUT_MODE",
        "AGENT_REPORTS_LLM_REPORT_SECONDS",
        "AGENT_REPORTS_LLM_MAX_TOKENS",
        "AGENT_REPORTS_LLM_PRICE_PER_MILLION",
        "AGENT_REPORTS_LLM_INSTRUCTIONS_IN",
        "AGENT_REPORTS_USD_BUDGET",
        "AGENT_REPORTS_USD_BUDGET_MARKET",
    ):
        monkeypatch.delenv(name, raising=False)
    return llm_server


def _quality_check(result):
    [check] = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "report_is_grounded"
    ]
    return check


def _formats(requests: list[dict]) -> list[str]:
    return [(r["body"].get("response_format") or {}).get("type", "-") for r in requests]


def test_a_refused_json_schema_falls_back_to_json_object_for_the_rest_of_the_run(
    llm, isolated_dirs
):
    llm.script(
        {"type": "fail", "status": 500, "message": LLAMA_CPP_REFUSAL, "times": 2},
        {"type": "reply", "text": json.dumps(VALID), "times": None},
    )
    result = defs.resolve_job_def("market_job").execute_in_process(
        instance=DagsterInstance.ephemeral(),
        tags={
            "dagster/asset_partition_range_start": DAY,
            "dagster/asset_partition_range_end": DAY_2,
        },
        run_config={"resources": {"analyst": {"config": {"max_concurrency": 1}}}},
    )
    requests = llm.chat_requests()
    assert [r["status"] for r in requests] == [500, 500, 200, 200]
    # strict json_schema, then json_schema, then llama.cpp's json_object with the schema;
    # the second day starts there: the refusal is remembered for the run.
    assert _formats(requests) == ["json_schema", "json_schema", "json_object", "json_object"]
    assert requests[0]["body"]["response_format"]["json_schema"]["strict"] is True
    assert "strict" not in requests[1]["body"]["response_format"]["json_schema"]
    grammar = requests[2]["body"]["response_format"]["schema"]
    assert grammar["properties"]["findings"]["maxItems"] == 5
    for day in (DAY, DAY_2):
        record = _record(isolated_dirs, day)
        assert record["degraded"] is False and record["llm"]["output_mode"] == "json_object"
        assert _metadata(result, day)["llm_quality_score"] == 1.0


def test_a_forced_tool_call_answers(llm, isolated_dirs, run_partition, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_LLM_OUTPUT_MODE", "gpt-*=tool_call")
    llm.script({"type": "reply", "tool_calls": [{"name": "submit_report", "arguments": VALID}]})
    run_partition("market_job", DAY)
    [request] = llm.chat_requests()
    assert request["body"]["tool_choice"]["function"]["name"] == "submit_report"
    assert "response_format" not in request["body"]
    assert _record(isolated_dirs)["summary"] == VALID["summary"]


def test_a_stream_that_hangs_is_cut_sent_once_more_and_its_tokens_count(
    llm, isolated_dirs, run_partition, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_LLM_TIMEOUT_SECONDS", "1")
    llm.script(
        {"type": "stream_fault", "kind": "stall", "after_chunks": 3, "stall_seconds": 30},
        {"type": "reply", "text": json.dumps(VALID), "times": None},
    )
    result = run_partition("market_job", DAY)
    hung, answered = llm.chat_requests()
    # The client gave up after 1 s and closed the stream: the server stopped serving it.
    assert hung["completed"] is False and hung["stall_waited"] < 5
    assert answered["status"] == 200 and answered["completed"] is True
    metadata = _metadata(result)
    assert _record(isolated_dirs)["degraded"] is False
    assert metadata["llm_requests"] == 2 and metadata["llm_tokens_estimated"] is True
    # The hung attempt's prompt is counted (estimated), on top of the answered one's.
    spent = metadata["llm_prompt_tokens"] + metadata["llm_completion_tokens"]
    assert metadata["llm_prompt_tokens"] > 1.5 * (spent - metadata["llm_prompt_tokens"])
    assert metadata["llm_tokens_month_to_date"] == spent == TokenBudget().spent("market")


def test_a_prompt_that_keeps_timing_out_is_sent_twice_at_most(
    llm, isolated_dirs, run_partition, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_LLM_TIMEOUT_SECONDS", "1")  # max_retries stays 4
    llm.script({"type": "delay", "seconds": 3, "times": None})
    run_partition("market_job", DAY)
    assert len(llm.chat_requests()) == 2
    assert "timed out (no reply within 1 s, 2 attempts)" in _record(isolated_dirs)["notes"][0]


@pytest.fixture(scope="module")
def trickling_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    """A second llmock that sends each streamed chunk 250 ms after the previous one."""
    port = free_port()
    log = tmp_path_factory.mktemp("llmock-trickle") / "llmock.log"
    process = start_process(
        [str(BIN / "llmock"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        log,
        env={**os.environ, "LLMOCK_STREAM_CHUNK_DELAY_MS": "250"},
    )
    try:
        wait_for_port(port, process)
        yield LLMServer(port)
    finally:
        stop_process(process)


def test_a_reply_still_streaming_at_the_timeout_is_cut_and_not_sent_again(
    trickling_llm, isolated_dirs, run_partition, monkeypatch
):
    """Text is still arriving when the 1.5 s are up: the same prompt would be as slow again."""
    trickling_llm.reset()
    trickling_llm.use(monkeypatch)
    monkeypatch.setenv("AGENT_REPORTS_LLM_TIMEOUT_SECONDS", "1.5")
    trickling_llm.reply_json(VALID)
    result = run_partition("market_job", DAY)
    [cut] = trickling_llm.chat_requests()
    assert cut["completed"] is False
    assert "still streaming after 1.5 s" in _record(isolated_dirs)["notes"][0]
    assert _metadata(result)["llm_tokens_estimated"] is True


def test_the_report_time_budget_bounds_every_attempt(
    llm, isolated_dirs, run_partition, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_LLM_TIMEOUT_SECONDS", "30")
    monkeypatch.setenv("AGENT_REPORTS_LLM_REPORT_SECONDS", "1.5")
    llm.script({"type": "delay", "seconds": 30, "times": None})
    started = time.monotonic()
    result = run_partition("market_job", DAY)
    assert time.monotonic() - started < 25  # the attempt alone would have waited 30 s
    assert _metadata(result)["llm_requests"] == 1  # no time was left for a second one
    assert "time budget of 1.5 s is spent" in _record(isolated_dirs)["notes"][0]


@pytest.mark.parametrize(
    ("summary", "reason"),
    [
        (":{", "summary is not a readable sentence"),
        ("ALPH rose 57.3% on heavy volume.", "figures not in the data"),
        ("ZZZQ led the session, ahead of ALPH.", "names not in the data: ZZZQ in summary"),
    ],
)
def test_a_bad_narrative_is_retried_with_its_reason_then_degraded(
    llm, isolated_dirs, run_partition, summary, reason
):
    llm.reply_json({**VALID, "summary": summary})
    result = run_partition("market_job", DAY)
    _first, *retries = llm.chat_requests()
    assert len(retries) == 2
    for retry in retries:  # the model is told what was wrong, under its rejected reply
        rejected, told = retry["body"]["messages"][-2:]
        assert rejected["role"] == "assistant" and summary in rejected["content"]
        assert told["role"] == "user" and reason in told["content"]
    record = _record(isolated_dirs)
    assert record["degraded"] is True and reason in record["notes"][0]
    assert record["llm"]["quality_score"] < 0.5
    assert _metadata(result)["llm_quality_score"] == record["llm"]["quality_score"]
    assert _quality_check(result).passed is False


def test_a_raw_newline_inside_a_string_is_accepted(llm, isolated_dirs, run_partition):
    """JSON with an unescaped line break in a string, as a llama.cpp grammar lets through."""
    text = json.dumps(VALID).replace("A notable move.", "A notable\nmove.")  # a raw line break
    llm.script({"type": "reply", "text": text})
    run_partition("market_job", DAY)
    assert _record(isolated_dirs)["findings"][0]["detail"] == "A notable\nmove."


def test_a_reply_accepted_on_the_second_try_scores_lower_and_warns(
    llm, isolated_dirs, run_partition
):
    llm.script(
        {"type": "reply", "text": json.dumps({**VALID, "summary": "ALPH fell 99.9%."})},
        {"type": "reply", "text": json.dumps(VALID), "times": None},
    )
    result = run_partition("market_job", DAY)
    assert len(llm.chat_requests()) == 2
    record = _record(isolated_dirs)
    assert record["degraded"] is False and record["llm"]["quality_score"] == 0.5
    check = _quality_check(result)
    assert check.passed is False and "quality score 0.5" in check.metadata["problems"].value


def test_a_local_model_has_an_unknown_cost_not_zero(llm, isolated_dirs, run_partition):
    llm.reply_json(VALID)
    result = run_partition("market_job", DAY)
    assert _metadata(result)["llm_cost_usd"] == "unknown"
    assert _record(isolated_dirs)["llm"]["cost_usd"] is None
    again = run_partition("market_job", DAY)  # a cache hit: no request, nothing spent
    assert _metadata(again)["llm_cost_usd"] == 0.0
    assert _record(isolated_dirs)["llm"]["cost_usd"] is None  # the same bytes as before


def test_a_usd_budget_stops_requests_once_spent(llm, isolated_dirs, run_partition, monkeypatch):
    monkeypatch.setenv("AGENT_REPORTS_LLM_PRICE_PER_MILLION", "1000,2000")
    monkeypatch.setenv("AGENT_REPORTS_USD_BUDGET_MARKET", "0.50")
    llm.reply_json(VALID)
    first = _metadata(run_partition("market_job", DAY))
    cost = (first["llm_prompt_tokens"] * 1000 + first["llm_completion_tokens"] * 2000) / 1e6
    assert first["llm_cost_usd"] == pytest.approx(cost) and cost > 0.5
    assert _record(isolated_dirs)["llm"]["cost_usd"] == pytest.approx(cost)
    assert TokenBudget().spent_usd("market") == (pytest.approx(cost), 0)
    second = _metadata(run_partition("market_job", DAY_2), DAY_2)
    assert second["degraded"] is True and second["llm_requests"] == 0
    assert (
        "monthly budget of $0.50 for market is spent" in _record(isolated_dirs, DAY_2)["notes"][0]
    )
    assert len(llm.chat_requests()) == 1


def test_a_usd_budget_with_an_unknown_price_fails_before_any_request(
    llm, run_partition, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_USD_BUDGET", "5")
    llm.reply_json(VALID)
    result = run_partition("market_job", DAY, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    message = failure.event_specific_data.error.to_string()
    assert "the price of gpt-4o-mini is unknown" in message
    assert "AGENT_REPORTS_LLM_PRICE_PER_MILLION" in message
    assert llm.chat_requests() == []
