"""`make run` and `make stop` as a user runs them: the real Makefile, `tools/dev.py` and
`dg dev`, started like a background job (its own session, so SIGINT starts ignored),
against a fresh DAGSTER_HOME under the test's tmp dir.

Checked: the UI is served; the start-up log holds no warning the project can avoid; the
pool limits are written on the first start only; `make stop` and SIGINT to the job's
process group each end every process `make run` started, close the port and remove the
pid file.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent_reports_tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
# Python warnings (BetaWarning, SupersessionWarning, ...), Dagster's "dagster.yaml in the
# current folder" and dg's "virtual environment does not match".
AVOIDABLE = re.compile(
    r"\b\w+Warning\b|Found a dagster instance configuration|does not match the virtual environment"
)


def _served(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
            return True
    except OSError:
        return False


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


def _group(pgid: int) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _pgid(p) == pgid]


def _pgid(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.Error):
        return None


@pytest.fixture
def make_env(tmp_path: Path) -> dict[str, str]:
    if subprocess.run(["make", "-q", ".venv/.runtime-stamp"], cwd=REPO).returncode != 0:
        pytest.skip("the runtime install is not up to date: run `make run` once (make test does)")
    return {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}


def _start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        ["make", "run", f"PORT={port}"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A background job of a non-interactive shell starts with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    _wait(lambda: _served(port) or process.poll() is not None, 240, "UI not served")
    assert process.poll() is None, log.read_text()
    return process


def _stopped(process: subprocess.Popen, pgid: int, port: int, pid_file: Path) -> None:
    assert process.wait(timeout=90) == 0
    _wait(lambda: not _group(pgid), 30, f"processes left in group {pgid}")
    assert not _served(port)
    assert not pid_file.exists()


@pytest.fixture
def leave_nothing_running(make_env: dict[str, str]) -> Iterator[None]:
    """A failed assertion must not leave `make run`'s processes serving: kill what is left."""
    yield
    pid_file = Path(make_env["DAGSTER_HOME"]) / "dev.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.usefixtures("leave_nothing_running")
def test_make_run_serves_quietly_and_make_stop_or_sigint_ends_it(
    make_env: dict[str, str], tmp_path: Path
) -> None:
    port, pid_file = free_port(), Path(make_env["DAGSTER_HOME"]) / "dev.pid"
    log = tmp_path / "make_run.log"
    process = _start(make_env, port, log)
    pgid = int(pid_file.read_text())
    assert len(_group(pgid)) >= 3  # dg dev, its webserver, daemon and code server
    text = log.read_text(errors="replace")
    startup = text[: text.index("Serving dagster-webserver")]
    assert (
        "pool limits: market, anomalies, churn, compliance, briefing, signups set to 1" in startup
    )
    assert not AVOIDABLE.findall(startup), [
        line for line in startup.splitlines() if AVOIDABLE.search(line)
    ]

    stop = subprocess.run(["make", "stop"], cwd=REPO, env=make_env, capture_output=True, text=True)
    assert stop.returncode == 0 and f"stopped dagster (process group {pgid})" in stop.stdout
    _stopped(process, pgid, port, pid_file)

    # Again, stopped by SIGINT to the job's process group (Ctrl-C, `kill -INT %1`).
    second_log = tmp_path / "make_run_2.log"
    process = _start(make_env, port, second_log)
    pgid = int(pid_file.read_text())
    assert "pool limits: unchanged" in second_log.read_text()
    os.killpg(process.pid, signal.SIGINT)
    _stopped(process, pgid, port, pid_file)
