"""A production-like agent_reports stack on one machine, without containers.

Three processes, as a deployment runs them, against PostgreSQL (deploy/dagster.yaml):
`dagster code-server start` (the user-code gRPC server), `dagster-webserver` (reaching the
code server through a workspace file with a `grpc_server` entry, bound to 127.0.0.1 only)
and `dagster-daemon run`. Each runs in its own process group, so `stop` ends it together
with its children (the code server's run workers), with a pid file and a log under the
state folder:

    python deploy/stack.py start|stop|status      (deploy/stack.sh wraps this)

Settings from the environment: STACK_DIR (default <repo>/.stack), STACK_PORT (3000),
STACK_CODE_PORT (4266), DAGSTER_PG_HOST/_PORT/_USER/_PASSWORD/_DB (127.0.0.1, 5432,
postgres, "", agent_reports). Everything else in the environment (AGENT_REPORTS_*,
OPENAI_*) reaches the three processes and so the runs.

`start` starts whichever of the three is not running, so after a crash it brings back only
what is missing. It creates the database if missing and sets each analysis pool's limit to
1 before the daemon starts: Dagster 1.13 creates a pool's limit from `default_limit` only in
the first dequeue pass that sees the pool and does not apply it in that pass.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
MODULE = "agent_reports.definitions"
LOCATION = "agent_reports"
PROCESSES = ("code-server", "webserver", "daemon")  # start order; stop goes in reverse
PG_DEFAULTS = {
    "DAGSTER_PG_HOST": "127.0.0.1",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "postgres",
    "DAGSTER_PG_PASSWORD": "",
    "DAGSTER_PG_DB": "agent_reports",
}
LOCATIONS_QUERY = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
DAEMONS_QUERY = """{ instance { daemonHealth { allDaemonStatuses {
  daemonType required healthy lastHeartbeatTime } } } }"""


class StackError(RuntimeError):
    """The stack could not be started or stopped as asked."""


@dataclass(frozen=True)
class Stack:
    """Where one stack keeps its state, which ports it uses, and its database."""

    dir: Path
    port: int
    code_port: int
    pg: Mapping[str, str]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Stack:
        return cls(
            dir=Path(environ.get("STACK_DIR") or REPO / ".stack").resolve(),
            port=int(environ.get("STACK_PORT") or 3000),
            code_port=int(environ.get("STACK_CODE_PORT") or 4266),
            pg={name: environ.get(name) or value for name, value in PG_DEFAULTS.items()},
        )

    @property
    def home(self) -> Path:
        return self.dir / "dagster_home"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def workspace(self) -> Path:
        return self.dir / "workspace.yaml"

    def pid_file(self, name: str) -> Path:
        return self.dir / "run" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def command(self, name: str) -> list[str]:
        """The command line of one of the three processes."""
        workspace = ["-w", str(self.workspace)]
        if name == "code-server":
            server = ["code-server", "start", "-m", MODULE, "--location-name", LOCATION]
            return [str(BIN / "dagster"), *server, "-h", HOST, "-p", str(self.code_port)]
        if name == "webserver":
            return [str(BIN / "dagster-webserver"), *workspace, "-h", HOST, "-p", str(self.port)]
        return [str(BIN / "dagster-daemon"), "run", *workspace]

    def environment(self) -> dict[str, str]:
        """This process' environment with DAGSTER_HOME and the PostgreSQL settings."""
        return {**os.environ, **self.pg, "DAGSTER_HOME": str(self.home)}


# ----------------------------------------------------------------------- process groups


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def running_pid(stack: Stack, name: str) -> int | None:
    """The pid (= process group id) in the pid file, if that group is still alive and is
    ours (the pid was not reused by something else)."""
    try:
        pid = int(stack.pid_file(name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    if pid in _group_members(pid) and stack.command(name)[0] in cmdline:
        return pid
    return None


def signal_group(pgid: int, sig: signal.Signals, wait: float) -> bool:
    """Send `sig` to the group; True once no member is left (within `wait` seconds)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait
    while _group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_group(pgid: int, wait: float = 20) -> None:
    """TERM the whole group, then KILL whatever is left."""
    if not signal_group(pgid, signal.SIGTERM, wait):
        signal_group(pgid, signal.SIGKILL, wait)


def spawn(stack: Stack, name: str) -> int:
    """Start one process in its own session (so its own process group) and record its pid."""
    with open(stack.log_file(name), "ab") as log:
        process = subprocess.Popen(
            stack.command(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=stack.environment(),
            cwd=REPO,
            start_new_session=True,
        )
    stack.pid_file(name).write_text(f"{process.pid}\n")
    return process.pid


# ------------------------------------------------------------------------- set-up steps


def prepare(stack: Stack) -> None:
    """Folders, $DAGSTER_HOME/dagster.yaml and the workspace file pointing at the code server."""
    for folder in (stack.home, stack.dir / "run", stack.dir / "logs"):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "deploy" / "dagster.yaml", stack.home / "dagster.yaml")
    stack.workspace.write_text(
        "load_from:\n"
        "  - grpc_server:\n"
        f"      host: {HOST}\n"
        f"      port: {stack.code_port}\n"
        f"      location_name: {LOCATION}\n"
    )


def ensure_database(pg: Mapping[str, str]) -> None:
    """Create the instance database if it does not exist yet."""
    import psycopg2
    from psycopg2 import sql

    try:
        connection = psycopg2.connect(
            host=pg["DAGSTER_PG_HOST"],
            port=pg["DAGSTER_PG_PORT"],
            user=pg["DAGSTER_PG_USER"],
            password=pg["DAGSTER_PG_PASSWORD"],
            dbname="postgres",
            connect_timeout=10,
        )
    except psycopg2.OperationalError as error:
        where = f"{pg['DAGSTER_PG_HOST']}:{pg['DAGSTER_PG_PORT']}"
        raise StackError(f"PostgreSQL at {where} is not reachable: {error}") from None
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg["DAGSTER_PG_DB"],))
            if cursor.fetchone() is None:
                cursor.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg["DAGSTER_PG_DB"]))
                )
    finally:
        connection.close()


def set_pool_limits(stack: Stack) -> None:
    """Pool limit 1 for every analysis pool, in the stack's instance: `tools/dev.py pools`,
    the same step `make run` takes, in one process (it creates the schema of a fresh
    database first)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "dev.py"), "pools"],
        capture_output=True,
        text=True,
        env=stack.environment(),
        cwd=stack.dir,
        timeout=180,
        check=False,
    )
    if done.returncode:
        raise StackError(f"setting pool limits failed:\n{done.stdout}{done.stderr}")


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise StackError(json.dumps(answer["errors"])[:2000])
    return answer["data"]


def location_loaded(stack: Stack) -> bool:
    """Whether the webserver answers and has loaded the code location from the code server."""
    try:
        data = graphql(stack.url, LOCATIONS_QUERY)["workspaceOrError"]
    except (OSError, urllib.error.URLError, StackError):
        return False
    for entry in data.get("locationEntries", []):
        state = entry["locationOrLoadError"] or {}
        if entry["name"] != LOCATION or entry["loadStatus"] != "LOADED":
            continue
        if state.get("__typename") == "PythonError":
            raise StackError(f"code location {LOCATION} failed to load: {state['message']}")
        return state.get("__typename") == "RepositoryLocation"
    return False


def daemons_healthy(stack: Stack, since: float) -> bool:
    """Whether every daemon the instance requires (run queue, backfills, schedules, sensors,
    run monitoring...) is healthy and has sent a heartbeat after `since` (epoch seconds): a
    daemon killed a moment ago still looks healthy by its last heartbeat."""
    try:
        statuses = graphql(stack.url, DAEMONS_QUERY)["instance"]["daemonHealth"]
    except (OSError, urllib.error.URLError, StackError):
        return False
    required = [s for s in statuses["allDaemonStatuses"] if s["required"]]
    return bool(required) and all(
        s["healthy"] and (s["lastHeartbeatTime"] or 0) > since for s in required
    )


def code_server_listening(stack: Stack) -> bool:
    """The code server opens its port once it has loaded the definitions."""
    with socket.socket() as sock:
        return sock.connect_ex((HOST, stack.code_port)) == 0


def wait_for(
    stack: Stack,
    what: str,
    condition: Callable[[Stack], bool],
    started: Mapping[str, int],
    timeout: float,
) -> None:
    """Poll `condition(stack)`; fail early if a process started for it has died meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition(stack):
        dead = [name for name, pid in started.items() if not _group_members(pid)]
        if dead:
            raise StackError(f"{', '.join(dead)} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise StackError(f"{what}: not reached within {timeout:.0f}s")
        time.sleep(0.5)


# ----------------------------------------------------------------------------- commands


def start(stack: Stack, timeout: float = 300) -> None:
    """Start whatever of the three processes is not running, and wait until the stack is up."""
    prepare(stack)
    running = {name: running_pid(stack, name) for name in PROCESSES}
    started: dict[str, int] = {}
    try:
        ensure_database(stack.pg)
        if running["code-server"] is None:
            started["code-server"] = spawn(stack, "code-server")
        if running["daemon"] is None:
            set_pool_limits(stack)  # while the code server loads its definitions
        wait_for(stack, "code server listening", code_server_listening, started, timeout)
        if running["webserver"] is None:
            started["webserver"] = spawn(stack, "webserver")
        wait_for(stack, "code location loaded in the webserver", location_loaded, started, timeout)
        since = time.time()
        if running["daemon"] is None:
            started["daemon"] = spawn(stack, "daemon")
        else:
            since = 0.0  # the running daemon's heartbeats count
        heartbeats = partial(daemons_healthy, since=since)
        wait_for(stack, "daemons heartbeating", heartbeats, started, timeout)
    except BaseException:
        for pid in reversed(started.values()):
            stop_group(pid)
        print_log_tails(stack)
        raise
    print(f"agent_reports stack up: {stack.url} (state in {stack.dir})")


def stop(stack: Stack) -> None:
    """Stop the daemon, the webserver and the code server (each process group), in that order."""
    for name in reversed(PROCESSES):
        pid = running_pid(stack, name)
        if pid is not None:
            stop_group(pid)
            print(f"{name}: stopped (pid {pid})")
        stack.pid_file(name).unlink(missing_ok=True)


def status(stack: Stack) -> bool:
    """Print each process' state and whether the UI serves the code location; True if all up."""
    pids = {name: running_pid(stack, name) for name in PROCESSES}
    for name, pid in pids.items():
        print(f"{name:12} {f'running (pid {pid})' if pid else 'stopped'}")
    loaded = location_loaded(stack)
    print(f"{'webserver':12} {stack.url} {'serves' if loaded else 'does not serve'} {LOCATION}")
    return loaded and all(pids.values())


def print_log_tails(stack: Stack, chars: int = 4000) -> None:
    for name in PROCESSES:
        log = stack.log_file(name)
        if log.exists():
            tail = log.read_text(errors="replace")[-chars:]
            print(f"--- {log} (tail) ---\n{tail}", file=sys.stderr)


def main(argv: list[str]) -> int:
    commands = {"start", "stop", "status"}
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: {Path(sys.argv[0]).name} start|stop|status", file=sys.stderr)
        return 2
    stack = Stack.from_env()
    try:
        if argv[0] == "start":
            start(stack)
        elif argv[0] == "stop":
            stop(stack)
        else:
            return 0 if status(stack) else 3
    except StackError as error:
        print(f"stack {argv[0]}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
