"""`make run` and `make stop`: the local Dagster (`dg dev`) started, and stopped, by pid.

    python tools/dev.py run [--host H] [--port P]   pool limits, then `dg dev` in the foreground
    python tools/dev.py stop                         stops what `run` started
    python tools/dev.py pools                        only the pool limits (`make stack` uses it)

`run` starts `dg dev` in its own process group and writes that group's id to
`$DAGSTER_HOME/dev.pid`. SIGINT, SIGTERM and SIGHUP reaching `run` (Ctrl-C, `kill %1`, a
supervisor, or `make` passing on a SIGTERM) stop the group: `dg dev` started as a bare
background job of a non-interactive shell would ignore SIGINT itself. `stop` reads the pid
file and stops that group, never processes found by name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL_LIMIT = 1
GRACE_SECONDS = 30.0


def pid_file() -> Path:
    return Path(os.environ["DAGSTER_HOME"]) / "dev.pid"


def set_pool_limits(pools: list[str], limit: int = POOL_LIMIT) -> list[str]:
    """Give each pool `limit` slots, writing only the pools that differ; returns those.

    Dagster 1.13 creates a pool's limit from `default_limit` only in the first dequeue pass
    that sees the pool, and does not apply it in that pass: on a fresh instance a burst of
    runs queued together would all start. Setting the limits first closes that gap.
    """
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        changed = [p for p in pools if storage.get_concurrency_info(p).slot_count != limit]
        for pool in changed:
            storage.set_concurrency_slots(pool, limit)
    return changed


def group_alive(pgid: int) -> bool:
    """Whether the group still has a process, and its leader (if alive) is our `dg dev`: a
    pid file left by a crash must not make `stop` signal whatever reused the number."""
    try:  # empty for a leader that has exited but not been reaped: judge by the group
        leader = Path(f"/proc/{pgid}/cmdline").read_bytes()
    except OSError:
        leader = b""
    if leader and b"dg\x00dev" not in leader:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace: float = GRACE_SECONDS) -> bool:
    """SIGINT the leader (`dg dev` then shuts its webserver, daemon and code server down),
    then SIGTERM and SIGKILL the group if it outlives `grace`. True when something ran."""
    if not group_alive(pgid):
        return False
    steps = ((os.kill, signal.SIGINT), (os.killpg, signal.SIGTERM), (os.killpg, signal.SIGKILL))
    for send, sig in steps:
        with contextlib.suppress(ProcessLookupError):
            send(pgid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.2)
        if not group_alive(pgid):
            break
        grace = 10.0
    return True


def analysis_pools() -> list[str]:
    """The built-in analyses' pools, then each YAML-declared analysis' (its `pool`, else its
    `name`), read from the defs.yaml files: importing the code location would cost seconds."""
    import yaml

    from agent_reports.core.settings import ANALYSES

    pools = list(ANALYSES)
    for path in sorted((REPO / "agent_reports" / "defs").glob("*/defs.yaml")):
        attributes = (yaml.safe_load(path.read_text()) or {}).get("attributes") or {}
        pool = attributes.get("pool") or attributes.get("name")
        if isinstance(pool, str) and pool not in pools:
            pools.append(pool)
    return pools


def pools() -> int:
    """Pool limit 1 for every analysis, in the instance DAGSTER_HOME names."""
    changed = set_pool_limits(analysis_pools())
    print(f"pool limits: {', '.join(changed) + ' set to 1' if changed else 'unchanged (1 each)'}")
    return 0


def run(host: str, port: int) -> int:
    path = pid_file()
    if path.exists() and group_alive(int(path.read_text().strip())):
        print(f"already running (process group {path.read_text().strip()}): `make stop` first")
        return 1
    pools()
    stopped_by: list[str] = []
    children: list[subprocess.Popen] = []

    def forward(signum: int, _frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        for child in children:
            print(f"\n{stopped_by[-1]}: stopping dagster (process group {child.pid})", flush=True)
            stop_group(child.pid)

    # Handlers first: the child then starts with SIGINT at its default even when this
    # process inherited it ignored (a background job of a non-interactive shell), so
    # `dg dev` turns SIGINT into its own orderly shutdown.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    # `-w workspace.yaml` and the cwd $DAGSTER_HOME: dg dev given a workspace starts Dagster
    # where it is run (without one it moves to the project folder), so Dagster does not warn
    # that the repository's dagster.yaml, the template `make run` copies to $DAGSTER_HOME,
    # is not the instance file.
    process = subprocess.Popen(
        [str(BIN / "dg"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", host, "-p", str(port)],
        cwd=os.environ["DAGSTER_HOME"],
        env={**os.environ, "VIRTUAL_ENV": str(BIN.parent)},
        start_new_session=True,
    )
    children.append(process)
    path.write_text(f"{process.pid}\n")
    try:
        code = process.wait()
    finally:
        stop_group(process.pid)
        path.unlink(missing_ok=True)
    return 0 if stopped_by else code


def stop() -> int:
    path = pid_file()
    if not path.exists():
        print(f"nothing to stop: no {path}")
        return 0
    pgid = int(path.read_text().strip())
    started = time.monotonic()
    ran = stop_group(pgid)
    path.unlink(missing_ok=True)
    if ran:
        print(f"stopped dagster (process group {pgid}) in {time.monotonic() - started:.1f} s")
    else:
        print(f"process group {pgid} had already ended")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--host", default="127.0.0.1")
    run_parser.add_argument("--port", type=int, default=3000)
    commands.add_parser("stop")
    commands.add_parser("pools")
    args = parser.parse_args()
    if args.command == "run":
        return run(args.host, args.port)
    return stop() if args.command == "stop" else pools()


if __name__ == "__main__":
    sys.exit(main())
