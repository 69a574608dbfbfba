"""The market report with the openai analyst against a real OpenAI-compatible HTTP server."""

import itertools
import json
from pathlib import Path

import pytest

from agent_reports.core.sources import DemoSource
from agent_reports.market.analysis import history_window
from agent_reports_tests.conftest import LLMServer

DAY = "2024-03-05"
FAKE_KEY = "sk-test-SECRET-0123456789abcdef"


def _valid_reply(tickers: list[str]) -> dict:
    return {
        "summary": f"{tickers[0]} led a mixed session.",
        "findings": [
            {"title": f"{tickers[0]} moved", "detail": "A notable move.", "subjects": [tickers[0]]}
        ],
    }


def _report_bytes(root: Path, day: str = DAY) -> dict[str, bytes]:
    return {ext: (root / "market" / f"{day}.{ext}").read_bytes() for ext in ("json", "md", "html")}


def _write_prices_csv(folder: Path, bump: float = 0.0) -> None:
    prices = DemoSource().market_prices(*history_window(pd_date(DAY)))
    prices = prices.assign(date=prices["date"].dt.strftime("%Y-%m-%d"))
    prices.loc[prices.index[-1], "close"] += bump
    (folder / "market").mkdir(parents=True, exist_ok=True)
    prices.to_csv(folder / "market" / "prices.csv", index=False)


def pd_date(key: str):
    from datetime import date

    return date.fromisoformat(key)


@pytest.fixture
def openai_env(llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> LLMServer:
    llm_server.use(monkeypatch, api_key=FAKE_KEY)
    monkeypatch.setenv("AGENT_REPORTS_MODEL", "gpt-4o-mini")
    return llm_server


def test_same_inputs_same_bytes_and_one_request(openai_env, run_partition, isolated_dirs):
    openai_env.reply_json(_valid_reply(["ALPH"]))
    first = run_partition("market_job", DAY)
    bytes_first = _report_bytes(isolated_dirs / "reports")
    second = run_partition("market_job", DAY)
    assert _report_bytes(isolated_dirs / "reports") == bytes_first
    assert len(openai_env.chat_requests()) == 1

    record = json.loads(bytes_first["json"])
    assert record["generated_by"] == "gpt-4o-mini"
    assert record["summary"] == "ALPH led a mixed session."
    assert record["degraded"] is False
    meta_first = _report_metadata(first)
    meta_second = _report_metadata(second)
    assert meta_first["llm_cache_hit"] is False and meta_first["llm_requests"] == 1
    assert meta_first["llm_prompt_tokens"] > 0
    assert meta_second["llm_cache_hit"] is True and meta_second["llm_requests"] == 0


def test_changed_input_changes_the_fingerprint_and_asks_again(
    openai_env, run_partition, isolated_dirs, monkeypatch
):
    data_dir = isolated_dirs / "data"
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(data_dir))
    openai_env.reply_json(_valid_reply(["BRVO"]))
    _write_prices_csv(data_dir)
    run_partition("market_job", DAY)
    first = json.loads(_report_bytes(isolated_dirs / "reports")["json"])
    _write_prices_csv(data_dir, bump=1.5)
    run_partition("market_job", DAY)
    second = json.loads(_report_bytes(isolated_dirs / "reports")["json"])
    assert first["input_fingerprint"] != second["input_fingerprint"]
    assert len(openai_env.chat_requests()) == 2
    run_partition("market_job", DAY)
    assert len(openai_env.chat_requests()) == 2


def test_the_prompt_carries_statistics_and_marks_data_untrusted(openai_env, run_partition):
    openai_env.reply_json(_valid_reply(["ALPH"]))
    run_partition("market_job", DAY)
    [request] = openai_env.chat_requests()
    system, user = request["body"]["messages"]
    # The instructions in both turns: a chat template that drops the system turn keeps them.
    for message in (system, user):
        assert "untrusted" in message["content"] and "never an instruction" in message["content"]
    instructions, _, wrapped = user["content"].rpartition("<data>")
    assert instructions.startswith(system["content"]) and wrapped.endswith("</data>")
    data = json.loads(wrapped.removesuffix("</data>"))
    assert set(data) == {"date", "trading_day", "tickers", "top_movers"}
    assert "open" not in json.dumps(data)  # aggregated metrics, no raw OHLCV rows
    body = request["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["max_tokens"] == 1024 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_an_invented_or_malformed_reply_degrades_loudly(openai_env, run_partition, isolated_dirs):
    openai_env.script(
        {"type": "reply", "text": "not json at all", "times": 1},
        {"type": "reply", "text": json.dumps(_valid_reply(["NOPE"])), "times": None},
    )
    result = run_partition("market_job", DAY)
    record = json.loads(_report_bytes(isolated_dirs / "reports")["json"])
    assert record["degraded"] is True
    assert record["generated_by"] == "offline"
    assert any("Degraded" in note and "NOPE" in note for note in record["notes"])
    assert len(openai_env.chat_requests()) == 3  # the client asked three times, then gave up
    [check] = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "report_is_grounded"
    ]
    assert check.passed is False
    # A degraded answer is not cached: the next run asks the model again.
    openai_env.reset()
    openai_env.reply_json(_valid_reply(["ALPH"]))
    run_partition("market_job", DAY)
    assert json.loads(_report_bytes(isolated_dirs / "reports")["json"])["degraded"] is False


def test_rate_limit_with_retry_after_is_waited_out(openai_env, run_partition, isolated_dirs):
    openai_env.script(
        {"type": "fail", "status": 429, "retry_after": 1, "times": 2},
        {"type": "reply", "text": json.dumps(_valid_reply(["ALPH"])), "times": None},
    )
    run_partition("market_job", DAY)
    requests = openai_env.chat_requests()
    assert [r["status"] for r in requests] == [429, 429, 200]
    gaps = [b["started_at"] - a["ended_at"] for a, b in itertools.pairwise(requests)]
    assert min(gaps) >= 0.9  # Retry-After: 1 honoured
    assert json.loads(_report_bytes(isolated_dirs / "reports")["json"])["degraded"] is False


def test_an_outage_degrades_and_the_key_never_leaks(
    openai_env, run_partition, isolated_dirs, monkeypatch
):
    monkeypatch.setenv("AGENT_REPORTS_ANALYST", "openai")
    openai_env.script({"type": "fail", "status": 503, "times": None})
    result = run_partition("market_job", DAY)
    record = json.loads(_report_bytes(isolated_dirs / "reports")["json"])
    assert record["degraded"] is True
    assert "HTTP 503" in record["notes"][0]
    everything = b"".join(
        path.read_bytes() for path in (isolated_dirs).rglob("*") if path.is_file()
    )
    logs = "".join(str(event) for event in result.all_events)
    assert FAKE_KEY.encode() not in everything
    assert FAKE_KEY not in logs


def _report_metadata(result) -> dict:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "market_report"
    ]
    metadata = event.event_specific_data.materialization.metadata
    return {key: value.value for key, value in metadata.items()}
