"""The run lock (agent_reports/core/run_lock.py): two runs of one analysis launched outside
the queue (`dagster asset materialize` and `execute_in_process`, each in its own process,
started together) never execute steps at the same time, on an SQLite instance (file lock)
and on a PostgreSQL one (advisory lock); a SIGKILLed holder releases it; a waiter that
gives up names the holder; a PostgreSQL restart does not hand a live holder's lock over.

The market steps are made slow by the LLM server (a real HTTP server answering after a
delay), so the two runs really contend.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from agent_reports.core.run_lock import (
    FileLock,
    Holder,
    PostgresLock,
    RunLockTimeout,
    acquire,
    postgres_dsn,
)
from agent_reports_tests.conftest import LLMServer, start_process, stop_process
from agent_reports_tests.stack_harness import ThrowawayPostgres, running_cluster

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAY = "2024-03-05"
REPLY = {
    "summary": "ALPH led a mixed session.",
    "findings": [{"title": "ALPH moved", "detail": "A notable move.", "subjects": ["ALPH"]}],
}
EXECUTE_IN_PROCESS = """
import sys
from dagster import DagsterInstance
from agent_reports.definitions import defs
with DagsterInstance.get() as instance:
    job = defs.resolve_job_def("market_job")
    result = job.execute_in_process(partition_key=sys.argv[1], instance=instance)
    sys.exit(0 if result.success else 1)
"""
STEP_ENDS = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE}


def _launchers(day: str) -> dict[str, list[str]]:
    cli = [str(BIN / "dagster"), "asset", "materialize", "-m", "agent_reports.definitions"]
    return {
        "cli": [*cli, "--select", "group:market", "--partition", day],
        "execute_in_process": [sys.executable, "-c", EXECUTE_IN_PROCESS, day],
    }


@pytest.fixture(params=["sqlite", "postgres"])
def dagster_home(request: pytest.FixtureRequest, isolated_dirs: Path, monkeypatch) -> Path:
    """DAGSTER_HOME with ./dagster.yaml (SQLite) or deploy/dagster.yaml (its database)."""
    home = isolated_dirs / "dagster_home"
    home.mkdir()
    if request.param == "postgres":
        for name, value in request.getfixturevalue("postgres_db").items():
            monkeypatch.setenv(name, value)
        shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    else:
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:  # its schema, before two processes race for it
        instance.get_runs(limit=1)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    return home


@pytest.fixture
def slow_llm(llm_server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> LLMServer:
    """Every LLM request answered after 4 s (an uncached market report takes that long)."""
    llm_server.use(monkeypatch)
    llm_server.script({"type": "delay", "seconds": 4, "times": None})
    llm_server.reply_json(REPLY)
    return llm_server


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return start_process(args, log, cwd=log.parent)


def _step_windows(instance: DagsterInstance) -> dict[str, tuple[float, float]]:
    """{run id: (first step start, last step end)} from the instance's event log."""
    windows = {}
    for run in instance.get_runs():
        events = [e for e in instance.all_logs(run.run_id) if e.is_dagster_event]
        starts = [
            e.timestamp for e in events if e.dagster_event_type == DagsterEventType.STEP_START
        ]
        ends = [e.timestamp for e in events if e.dagster_event_type in STEP_ENDS]
        windows[run.run_id] = (min(starts), max(ends))
    return windows


def _in_step(instance: DagsterInstance, step: str) -> bool:
    runs = instance.get_runs()
    return bool(runs) and any(
        e.dagster_event_type == DagsterEventType.STEP_START and e.step_key == step
        for e in instance.all_logs(runs[0].run_id)
        if e.is_dagster_event
    )


def _messages(instance: DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


@pytest.mark.parametrize("first", ["cli", "execute_in_process"])
def test_two_in_process_runs_never_execute_steps_together(
    first: str, dagster_home: Path, slow_llm: LLMServer, isolated_dirs: Path
) -> None:
    launchers = _launchers(DAY)
    order = [first, *(name for name in launchers if name != first)]
    processes = {}
    for name in order:  # started together: the second a moment after the first
        processes[name] = _start(launchers[name], isolated_dirs / f"{name}.log")
        time.sleep(0.2)
    codes = {name: process.wait(timeout=240) for name, process in processes.items()}
    logs = {name: (isolated_dirs / f"{name}.log").read_text(errors="replace") for name in order}
    assert codes == dict.fromkeys(order, 0), {n: logs[n][-3000:] for n in order}

    with DagsterInstance.get() as instance:
        windows = _step_windows(instance)
        assert len(windows) == 2, windows
        (a, (a_start, a_end)), (b, (b_start, b_end)) = sorted(windows.items(), key=lambda w: w[1])
        # The run that got the lock second waited for it, naming the first as the holder.
        waited = [m for m in _messages(instance, b) if "waiting, held by run" in m]
        tags = {
            run.run_id: run.tags.get("agent_reports/run_lock", "") for run in instance.get_runs()
        }
    assert waited and a in waited[0], waited
    assert a_end <= b_start, (a_start, a_end, b_start, b_end)  # no step of b before a's last
    assert all(f"held by run {run_id}" in tag for run_id, tag in tags.items()), tags
    kind = "postgresql" if "DAGSTER_PG_DB" in os.environ else "file"
    assert all(f"({kind})" in tag for tag in tags.values()), tags
    assert len(slow_llm.chat_requests()) == 1  # the second run read the first's cached answer


def test_killed_holder_releases_the_lock(
    dagster_home: Path, llm_server: LLMServer, monkeypatch, isolated_dirs: Path
) -> None:
    llm_server.use(monkeypatch)
    llm_server.script({"type": "delay", "seconds": 60, "times": None})  # the holder hangs
    llm_server.reply_json(REPLY)
    launchers = _launchers(DAY)
    holder = _start(launchers["execute_in_process"], isolated_dirs / "holder.log")
    try:
        with DagsterInstance.get() as instance:
            deadline = time.monotonic() + 120
            while not _in_step(instance, "market_report"):  # the holder waits for the LLM
                assert holder.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
            (held,) = instance.get_runs()
            assert f"held by run {held.run_id}" in held.tags["agent_reports/run_lock"]
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
            llm_server.reset()  # the follower's request is answered at once
            llm_server.reply_json(REPLY)
            started = time.monotonic()
            follower = subprocess.run(
                launchers["cli"], capture_output=True, text=True, timeout=240, cwd=isolated_dirs
            )
            took = time.monotonic() - started
            assert follower.returncode == 0, follower.stderr[-3000:]
            runs = instance.get_runs()
            (after,) = [r for r in runs if r.run_id != held.run_id]
            messages = _messages(instance, after.run_id)
    finally:
        stop_process(holder)
    taken = [m for m in messages if m.startswith("run lock market")]
    assert taken and "waited 0." in taken[0], taken  # no wait: the dead holder held nothing
    assert not [m for m in messages if "waiting, held by" in m]
    assert took < 60


# ---------------------------------------------------------------------- the lock itself


def _holder(run_id: str) -> Holder:
    return Holder(run_id, os.getpid(), "test-host", "2024-03-05T00:00:00+00:00")


def test_a_waiter_that_gives_up_names_the_holder(isolated_dirs: Path) -> None:
    path = isolated_dirs / "locks" / "market.lock"
    first, second = FileLock(path, "market"), FileLock(path, "market")
    assert first.try_acquire(_holder("run-a")) is None
    with pytest.raises(RunLockTimeout, match=r"'market' is held by run run-a \(pid \d+"):
        acquire(second, _holder("run-b"), timeout=1, on_wait=lambda holder: None, poll=0.1)
    first.release()
    taken, waited = acquire(second, _holder("run-b"), timeout=1, on_wait=print)
    assert waited < 1 and taken.run_id == "run-b" and taken.since != _holder("run-b").since
    second.release()


@pytest.fixture
def restartable_postgres() -> Iterator[ThrowawayPostgres]:
    with running_cluster() as cluster:
        yield cluster


def test_postgres_restart_does_not_hand_over_a_live_holders_lock(
    restartable_postgres: ThrowawayPostgres,
) -> None:
    pg = restartable_postgres.settings("postgres")
    url = f"postgresql+psycopg2://postgres:@127.0.0.1:{pg['DAGSTER_PG_PORT']}/postgres"
    dsn = postgres_dsn(url)
    holder, waiter = PostgresLock(dsn, "market"), PostgresLock(dsn, "market")
    assert holder.try_acquire(_holder("run-a")) is None
    assert waiter.try_acquire(_holder("run-b")).run_id == "run-a"

    restartable_postgres.stop("fast")  # every session, and so the advisory lock, is gone
    restartable_postgres.start()
    # Right after the restart the waiter may get the advisory lock before the holder has
    # reconnected; the record's heartbeat predates the restart, so the holder keeps it.
    seen = set()
    for _ in range(12):  # 6 s: the holder reconnects and re-takes it (2 s heartbeat)
        seen.add(acquire_once(waiter))
        time.sleep(0.5)
    assert "run-a" in seen and "acquired" not in seen, seen
    assert holder.still_held()

    done = threading.Event()
    threading.Timer(2, lambda: (holder.release(), done.set())).start()
    _, waited = acquire(waiter, _holder("run-b"), timeout=30, on_wait=lambda h: None, poll=0.2)
    assert done.is_set() and waited >= 1.5
    waiter.release()


def acquire_once(lock: PostgresLock) -> str:
    """Who holds it after one try ('acquired' would be a handover), or the error's name
    (the waiter's own connection broke in the restart)."""
    try:
        other = lock.try_acquire(_holder("run-b"))
    except Exception as error:
        return type(error).__name__
    return "acquired" if other is None else other.run_id
