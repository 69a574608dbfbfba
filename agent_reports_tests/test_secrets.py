"""No secret in any artefact: a recognisable fake OpenAI key (used for real, against the
loopback LLM server) and fake SMTP/webhook secrets are set in the environment of a real
`dagster dev`; after a good run and a degraded one (the server failing), every file the
stack wrote (instance databases, compressed snapshots included, compute logs, process
logs, reports, the response cache, ledgers) and everything the webserver serves about
the runs (tags, run config, event log) is searched for them."""

import json
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_reports_tests.conftest import LLMServer
from agent_reports_tests.dagster_stack import DagsterStack, dagster_stack

SECRETS = {
    "OPENAI_API_KEY": "sk-agentreports-FAKE-7f3c9e1d2b4a6058",
    "AGENT_REPORTS_SMTP_PASSWORD": "smtp-FAKE-9d1e5c7a3b",
    "AGENT_REPORTS_WEBHOOK_TOKEN": "hook-FAKE-2c8f6a4e0d",
}
NARRATIVE = {"summary": "Quiet day across the tickers.", "findings": []}
RUN_DETAILS = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
  runConfigYaml tags { key value }
  eventConnection(limit: 5000) { events { __typename ... on MessageEvent { message } } } } } }"""
INSTANCE = "{ instance { info runLauncher { name } runQueuingSupported } }"

pytestmark = pytest.mark.timeout(400)


def texts_of(path: Path) -> Iterator[bytes]:
    """The file's bytes, and for an SQLite database every value in it, zlib-inflated where
    it is compressed (Dagster stores job and execution-plan snapshots that way)."""
    data = path.read_bytes()
    yield data
    if not data.startswith(b"SQLite format 3"):
        return
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    yield from _value_texts(value)
    except sqlite3.DatabaseError:
        pass  # an index or view name in sqlite_master: not a table
    finally:
        connection.close()


def _value_texts(value: object) -> Iterator[bytes]:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        return
    yield value
    try:
        inflated = zlib.decompress(value)
    except zlib.error:
        return
    yield inflated


def leaks(roots: list[Path], secrets: dict[str, str]) -> list[str]:
    """`file: NAME` for every file under `roots` holding a secret, in any form above."""
    found = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            for text in texts_of(path):
                found += [f"{path}: {n}" for n, s in secrets.items() if s.encode() in text]
    return sorted(set(found))


def test_the_scanner_finds_a_planted_secret(tmp_path: Path) -> None:
    """The check can fail: a secret in a plain file and one inside a compressed SQLite blob."""
    (tmp_path / "plain.log").write_text(f"key={SECRETS['OPENAI_API_KEY']}\n")
    with sqlite3.connect(tmp_path / "snapshots.db") as db:
        db.execute("CREATE TABLE snapshots (body BLOB)")
        blob = zlib.compress(json.dumps({"env": SECRETS["AGENT_REPORTS_WEBHOOK_TOKEN"]}).encode())
        db.execute("INSERT INTO snapshots VALUES (?)", (blob,))
    found = leaks([tmp_path], SECRETS)
    assert found == [
        f"{tmp_path / 'plain.log'}: OPENAI_API_KEY",
        f"{tmp_path / 'snapshots.db'}: AGENT_REPORTS_WEBHOOK_TOKEN",
    ]


def _run_market(stack: DagsterStack, day: str) -> dict:
    (run,) = stack.wait_for_runs([stack.launch_run("market_job", day)], timeout=180)
    assert run.status == "SUCCESS", run
    details = stack.graphql(RUN_DETAILS, {"id": run.run_id})["runOrError"]
    assert details["__typename"] == "Run"
    return details


def test_no_secret_in_any_artefact(isolated_dirs: Path, llm_server: LLMServer) -> None:
    env = {
        **SECRETS,
        "OPENAI_BASE_URL": llm_server.base_url,
        "AGENT_REPORTS_ANALYST": "openai",
    }
    home = isolated_dirs / "dagster_home"
    with dagster_stack(home, "dagster.yaml", "agent_reports.definitions", env) as stack:
        llm_server.reply_json(NARRATIVE)
        good = _run_market(stack, "2024-03-05")
        llm_server.reset()
        llm_server.script({"type": "fail", "status": 500, "times": None})
        degraded = _run_market(stack, "2024-03-06")
        served = json.dumps([good, degraded, stack.graphql(INSTANCE)])

    reports = isolated_dirs / "reports" / "market"
    written = {d: json.loads((reports / f"2024-03-{d}.json").read_text()) for d in ("05", "06")}
    # The key was really used: one report written by the model, one degraded when it failed.
    assert written["05"]["generated_by"] == "gpt-4o-mini" and not written["05"]["degraded"]
    assert written["06"]["degraded"]
    assert "LLM API answered HTTP 500" in " ".join(written["06"]["notes"])

    roots = [home, isolated_dirs / "reports", isolated_dirs / "state"]
    assert leaks(roots, SECRETS) == []
    assert not [name for name, secret in SECRETS.items() if secret in served]
