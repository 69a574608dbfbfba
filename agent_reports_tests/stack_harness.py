"""The production-like stack of deploy/stack.sh (code server, webserver and daemon as separate
processes on PostgreSQL) for tests, driven over GraphQL like dagster_stack.DagsterStack, and a
throwaway PostgreSQL cluster that a test may stop and start.

Every stack is started and stopped through deploy/stack.sh itself, with its own STACK_DIR and
free ports; the process-group and pid-file logic is deploy/stack.py's, loaded from there.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from agent_reports_tests.conftest import free_port
from agent_reports_tests.dagster_stack import DagsterStack, Run

REPO = Path(__file__).resolve().parents[1]
STEP_STATS = """query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { stepStats { stepKey startTime endTime } } } }"""
TERMINATE = """mutation($id: String!) { terminateRun(runId: $id) { __typename
  ... on TerminateRunFailure { message } ... on PythonError { message } } }"""
POOL_CLAIMS = """query($pool: String) { instance { concurrencyLimit(concurrencyKey: $pool) {
  claimedSlots { runId stepKey } } } }"""
LOCK_PID = re.compile(r"held by run \S+ \(pid (\d+) ")
STACK_SH = REPO / "deploy" / "stack.sh"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _load_stack_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_stack", REPO / "deploy" / "stack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


deploy_stack = _load_stack_module()


class StackProcesses:
    """Stands in for DagsterStack's `process`: "exited" once the webserver or the code server
    is gone (the daemon may be killed on purpose)."""

    def __init__(self, config: deploy_stack.Stack):
        self.config = config
        self.returncode: int | None = None

    def poll(self) -> int | None:
        for name in ("code-server", "webserver"):
            if deploy_stack.running_pid(self.config, name) is None:
                self.returncode = 1
        return self.returncode


@dataclass
class DeployedStack(DagsterStack):
    """A running deploy/stack.sh stack: GraphQL helpers plus its processes and logs."""

    env: dict[str, str] = field(default_factory=dict)
    config: deploy_stack.Stack | None = None

    def pid(self, name: str) -> int | None:
        return deploy_stack.running_pid(self.config, name)

    def kill_daemon(self) -> int:
        """SIGKILL the daemon's whole process group, as a crash or OOM kill would."""
        pid = self.pid("daemon")
        assert pid is not None, "the daemon is not running"
        deploy_stack.signal_group(pid, signal.SIGKILL, wait=30)
        return pid

    def step_window(self, run: Run) -> tuple[float, float] | None:
        """(first step start, last step end) of an ended run, None if no step started: when
        it executed, as opposed to when its worker started (it may wait for the run lock).
        A step cut short by a crash has no end of its own: the run's end stands for it."""
        result = self.graphql(STEP_STATS, {"id": run.run_id})["runOrError"]
        steps = [s for s in result.get("stepStats", []) if s["startTime"]]
        if not steps:
            return None
        ends = [s["endTime"] or run.end_time or float("inf") for s in steps]
        return min(s["startTime"] for s in steps), max(ends)

    def step_clashes(self, runs: list) -> list[tuple[str, str]]:
        """Pairs of runs whose steps executed at the same time."""
        windows = [(r.run_id, self.step_window(r)) for r in runs]
        windows = [(run_id, w) for run_id, w in windows if w]
        return [
            (a, b)
            for i, (a, wa) in enumerate(windows)
            for b, wb in windows[i + 1 :]
            if wa[0] < wb[1] and wb[0] < wa[1]
        ]

    def worker_pid(self, run_id: str) -> int | None:
        """The run worker's pid, from the run lock's record in the run's tags."""
        (run,) = self.runs(runIds=[run_id])
        found = LOCK_PID.search(run.tags.get("agent_reports/run_lock", ""))
        return int(found.group(1)) if found else None

    def terminate(self, run_id: str) -> None:
        """Cancel a run, as the UI's Terminate button does."""
        result = self.graphql(TERMINATE, {"id": run_id})["terminateRun"]
        if result["__typename"] != "TerminateRunSuccess":
            raise RuntimeError(f"terminate {run_id}: {result}")

    def claimed_slots(self, pool: str) -> list[dict]:
        return self.graphql(POOL_CLAIMS, {"pool": pool})["instance"]["concurrencyLimit"][
            "claimedSlots"
        ]

    def start(self) -> subprocess.CompletedProcess:
        """`deploy/stack.sh start`: brings back whichever process is not running."""
        return stack_cli("start", self.env)

    def log(self, name: str) -> str:
        return self.config.log_file(name).read_text(errors="replace")

    def log_tails(self, chars: int = 5000) -> str:
        return "\n".join(
            f"--- {name} log (tail) ---\n{self.log(name)[-chars:]}"
            for name in deploy_stack.PROCESSES
            if self.config.log_file(name).exists()
        )


def stack_cli(
    command: str, env: Mapping[str, str], timeout: float = 400
) -> subprocess.CompletedProcess:
    """Run `deploy/stack.sh <command>`; fail with its output if it fails."""
    result = subprocess.run(
        ["bash", str(STACK_SH), command],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr[-8000:]}"
        raise RuntimeError(f"stack.sh {command} failed ({result.returncode}):\n{output}")
    return result


@contextmanager
def deployed_stack(
    stack_dir: Path, pg: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Iterator[DeployedStack]:
    """deploy/stack.sh start on free ports with `pg` (DAGSTER_PG_*) and `env`; always stopped,
    with each process' log tail printed when the body fails."""
    environment = {
        **os.environ,
        **pg,
        **(env or {}),
        "STACK_DIR": str(stack_dir),
        "STACK_PORT": str(free_port()),
        "STACK_CODE_PORT": str(free_port()),
    }
    config = deploy_stack.Stack.from_env(environment)
    stack = DeployedStack(
        url=config.url,
        home=config.home,
        process=StackProcesses(config),
        env=environment,
        config=config,
    )
    try:
        stack.start()
        stack.load_location(timeout=120)
        yield stack
    except BaseException:
        print(stack.log_tails(), file=sys.stderr)
        raise
    finally:
        stack_cli("stop", environment, timeout=180)


# ------------------------------------------------------------ a throwaway PostgreSQL cluster


class ThrowawayPostgres:
    """A PostgreSQL 15 cluster of its own on a free loopback port, which a test may stop and
    start without touching the machine's cluster. initdb refuses root, so the cluster belongs
    to the `postgres` OS user, in a temporary folder it owns."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agent_reports_pg_"))
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")

    def _as_postgres(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def init(self) -> None:
        initdb = [str(PG_BIN / "initdb"), "-D", str(self.data), "--no-sync"]
        self._as_postgres(*initdb, "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.dir / "server.log")
        self._as_postgres(*self._pg_ctl, "-l", log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(*self._pg_ctl, "-m", mode, "-w", "stop")

    @property
    def _pg_ctl(self) -> list[str]:
        return [str(PG_BIN / "pg_ctl"), "-D", str(self.data)]

    def destroy(self) -> None:
        """Stop the cluster if it runs, and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            with suppress(subprocess.SubprocessError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def settings(self, db: str) -> dict[str, str]:
        """DAGSTER_PG_* for database `db` on this cluster (deploy/stack.sh creates it)."""
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": db,
        }


@contextmanager
def running_cluster() -> Iterator[ThrowawayPostgres]:
    """A started throwaway cluster, stopped and removed afterwards."""
    cluster = ThrowawayPostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
