"""Fixtures that start the real parts the tests talk to: an OpenAI-compatible HTTP server
(llmock), an SMTP server (aiosmtpd), and a PostgreSQL database the test creates and drops.
Each runs as a subprocess on a free loopback port and is stopped by signalling its process
group. Every test runs with its own report and state folders, never the repo's."""

from __future__ import annotations

import json
import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
PG_HOST = os.environ.get("AGENT_REPORTS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("AGENT_REPORTS_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("AGENT_REPORTS_TEST_PG_USER", "postgres")


# `make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). The files
# that start a whole Dagster stack (daemon, webserver, code server, `make run`, a browser)
# are time-sensitive on a 2-core machine: they stay together on one worker, one at a time,
# while the other worker takes the in-process tests.
STACK_TEST_FILES = {
    "test_stack_e2e.py",
    "test_soak.py",
    "test_run_lock.py",
    "test_run_queue.py",
    "test_make_run.py",
    "test_ui_market.py",
    "test_secrets.py",
    "test_deploy_security.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in STACK_TEST_FILES:
            item.add_marker(pytest.mark.xdist_group("stack"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def start_process(args: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen:
    """A subprocess in its own process group, output to `log_path`."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process in stop_process
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
    )


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    if process.stdout:
        process.stdout.close()


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Reports and state under the test's tmp dir; no key, model or other agent_reports
    setting from the developer's shell."""
    for name in [n for n in os.environ if n.startswith("AGENT_REPORTS_")]:
        if name.startswith("AGENT_REPORTS_TEST_"):  # where the test PostgreSQL is
            continue
        monkeypatch.delenv(name)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENT_REPORTS_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("AGENT_REPORTS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))  # the demo writes logs
    return tmp_path


# ------------------------------------------------------------------ OpenAI-compatible server


class LLMServer:
    """A running llmock server: script its replies and read back what it received."""

    def __init__(self, port: int):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def _call(self, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method="GET" if body is None else "POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def reset(self) -> None:
        self._call("/_llmock/reset", {})

    def script(self, *behaviors: dict) -> None:
        """Queue llmock behaviours, e.g. {"type": "fail", "status": 429, "retry_after": 1}."""
        self._call("/_llmock/scenario", {"behaviors": list(behaviors)})

    def reply_json(self, value: Any, times: int | None = None) -> None:
        """Answer chat requests with this JSON text (`times=None`: until reset)."""
        self.script({"type": "reply", "text": json.dumps(value), "times": times})

    def requests(self) -> list[dict]:
        return self._call("/_llmock/requests")["requests"]

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests() if r["path"].endswith("/chat/completions")]

    def use(self, monkeypatch: pytest.MonkeyPatch, api_key: str = "sk-test-not-a-real-key") -> None:
        """Point the openai analyst of in-process runs at this server."""
        monkeypatch.setenv("OPENAI_API_KEY", api_key)
        monkeypatch.setenv("OPENAI_BASE_URL", self.base_url)
        monkeypatch.setenv("AGENT_REPORTS_ANALYST", "openai")


@pytest.fixture(scope="session")
def llm_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMServer]:
    port = free_port()
    log = tmp_path_factory.mktemp("llmock") / "llmock.log"
    process = start_process(
        [str(BIN / "llmock"), "serve", "--host", "127.0.0.1", "--port", str(port)], log
    )
    try:
        wait_for_port(port, process)
        yield LLMServer(port)
    finally:
        stop_process(process)


@pytest.fixture
def llm_server(llm_server_process: LLMServer) -> LLMServer:
    """The session's llmock server, with no scripted behaviour and no recorded requests."""
    llm_server_process.reset()
    return llm_server_process


# ------------------------------------------------------------------------------- SMTP server


class SMTPServer:
    def __init__(self, port: int, maildir: Path):
        self.host, self.port, self.maildir = "127.0.0.1", port, maildir

    def messages(self) -> list[mailbox.MaildirMessage]:
        return list(mailbox.Maildir(self.maildir, create=False))


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SMTPServer]:
    """aiosmtpd storing every message it accepts in a Maildir."""
    port, maildir = free_port(), tmp_path / "maildir"
    process = start_process(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            f"127.0.0.1:{port}",
            "-c",
            "aiosmtpd.handlers.Mailbox",
            str(maildir),
        ],
        tmp_path / "smtp.log",
    )
    try:
        wait_for_port(port, process)
        yield SMTPServer(port, maildir)
    finally:
        stop_process(process)


# -------------------------------------------------------------------------------- PostgreSQL


def _pg_admin(sql: str) -> None:
    import psycopg2

    try:
        connection = psycopg2.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=5
        )
    except psycopg2.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as {PG_USER} ({error}); "
            "`make test` starts it with .ci/ensure-postgres",
            pytrace=False,
        )
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


@pytest.fixture
def postgres_db() -> Iterator[dict[str, str]]:
    """A fresh database, dropped afterwards; yields the DAGSTER_PG_* settings for it."""
    name = f"agent_reports_test_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "DAGSTER_PG_HOST": PG_HOST,
            "DAGSTER_PG_PORT": str(PG_PORT),
            "DAGSTER_PG_USER": PG_USER,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": name,
        }
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def stored_run_ids(pg: Mapping[str, str]) -> set[str]:
    """The run ids in the runs table of the instance database."""
    import psycopg2

    connection = psycopg2.connect(
        host=pg["DAGSTER_PG_HOST"],
        port=pg["DAGSTER_PG_PORT"],
        user=pg["DAGSTER_PG_USER"],
        dbname=pg["DAGSTER_PG_DB"],
        connect_timeout=10,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id FROM runs")
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


# ------------------------------------------------------------------------- in-process runs


@pytest.fixture
def instance(tmp_path: Path):
    """A real SQLite Dagster instance under the test's tmp dir: runs, event log, schedules."""
    from dagster import DagsterInstance

    home = tmp_path / "dagster_home"
    home.mkdir()
    with DagsterInstance.local_temp(tempdir=str(home)) as instance:
        yield instance


@pytest.fixture
def run_partition():
    """Run a job of the code location for one partition in this process (no queue, no daemon).

    Resources read the environment at run time, so monkeypatched variables apply.
    """
    from dagster import DagsterInstance

    from agent_reports.definitions import defs

    instance = DagsterInstance.ephemeral()

    def run(job_name: str, partition_key: str, raise_on_error: bool = True, **kwargs: Any):
        job = defs.resolve_job_def(job_name)
        return job.execute_in_process(
            partition_key=partition_key,
            instance=instance,
            raise_on_error=raise_on_error,
            **kwargs,
        )

    return run
