"""The run queue with the real daemons (`dagster dev`): no two runs of one analysis overlap,
runs of different analyses do, with SQLite storage (dagster.yaml) and with PostgreSQL
(deploy/dagster.yaml).

The code location is agent_reports_tests/two_pools.py: the market assets as shipped plus a
probe that holds each market run open a few seconds, and a slow asset in the anomalies
pool. Everything is launched over GraphQL, as the UI does, so it all goes through the queue.
"""

import sqlite3
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import pytest

from agent_reports_tests.conftest import stored_run_ids as postgres_runs_table
from agent_reports_tests.dagster_stack import DagsterStack, Run, dagster_stack, overlaps

PARTITIONS = [f"2024-03-{day:02d}" for day in range(4, 9)]
MANUAL_PARTITION = PARTITIONS[2]
MARKET_ASSETS = ["market_prices", "market_analysis", "market_report", "market_probe"]
ACTIVE = {"STARTING", "STARTED"}

pytestmark = pytest.mark.timeout(400)


def sqlite_run_ids(home: Path, _pg: dict[str, str]) -> set[str]:
    with sqlite3.connect(home / "history" / "runs.db") as connection:
        return {row[0] for row in connection.execute("SELECT run_id FROM runs")}


def postgres_run_ids(_home: Path, pg: dict[str, str]) -> set[str]:
    return postgres_runs_table(pg)


STORAGES = {
    "sqlite": ("dagster.yaml", sqlite_run_ids),
    "postgres": ("deploy/dagster.yaml", postgres_run_ids),
}


@pytest.fixture(params=sorted(STORAGES))
def storage(request: pytest.FixtureRequest) -> tuple[str, Callable, dict[str, str]]:
    """(instance yaml, how to read the stored run ids, extra env) for each storage."""
    instance_yaml, stored_run_ids = STORAGES[request.param]
    pg = request.getfixturevalue("postgres_db") if request.param == "postgres" else {}
    return instance_yaml, stored_run_ids, pg


def _statuses(stack: DagsterStack) -> dict[str, str]:
    return {run.run_id: run.status for run in stack.runs()}


def _held_in_queue(snapshot: dict[str, str], first: str, second: str, later: str) -> bool:
    """`second` waits QUEUED while `first` runs and `later` (queued after it) was dequeued."""
    return (
        snapshot.get(first) in ACTIVE
        and snapshot.get(second) == "QUEUED"
        and snapshot.get(later, "QUEUED") != "QUEUED"
    )


def test_one_market_run_at_a_time_other_pools_alongside(storage, isolated_dirs: Path) -> None:
    instance_yaml, stored_run_ids, pg = storage
    env = {
        **pg,
        "AGENT_REPORTS_ANALYST": "offline",
        # Held long enough that the other pool's run is dequeued (5 s queue polling) while
        # the first market run still executes: in process a market run takes about 4 s.
        "TWO_POOLS_MARKET_SECONDS": "15",
        "TWO_POOLS_OTHER_SECONDS": "10",
    }
    home = isolated_dirs / "dagster_home"
    with dagster_stack(home, instance_yaml, "agent_reports_tests.two_pools", env) as stack:
        # A first market run, dequeued on its own. Dagster 1.13 creates a pool's limit (from
        # default_limit) in the first dequeue pass that sees the pool but does not apply it
        # in that pass: runs queued together on a fresh instance would all start. A
        # deployment sets the pool limits before its first runs; here one run goes first.
        first = stack.launch_run("market_job", MANUAL_PARTITION)
        stack.wait_until(lambda: _statuses(stack).get(first) in ACTIVE, timeout=120)

        # Then a second run of the same partition, a backfill over it, and another pool's run.
        second = stack.launch_run("market_job", MANUAL_PARTITION)
        backfill = stack.launch_backfill(MARKET_ASSETS, PARTITIONS)
        other = stack.launch_run("other_pool_job")
        # The analysis declared in YAML: two runs of one window, held apart by its own pool,
        # whose limit is set first, as `make run` and `make stack` do (tools/dev.py pools).
        stack.set_pool_limit("signups", 1)
        signups = [stack.launch_run("signups_job", MANUAL_PARTITION) for _ in range(2)]

        snapshots = []

        def all_ended() -> bool:
            snapshots.append(_statuses(stack))
            backfill_runs = stack.backfill_runs(backfill)
            ids = [first, second, other, *signups] + [r.run_id for r in backfill_runs]
            return bool(backfill_runs) and all(
                snapshots[-1].get(i) in {"SUCCESS", "FAILURE", "CANCELED"} for i in ids
            )

        stack.wait_until(all_ended, timeout=300)
        runs = stack.runs()
        materialized = stack.materializations("market_report")
        limit = stack.pool_limit("market")

    # The queue really held the second market run: the other pool's run, queued after it,
    # was dequeued while it stayed QUEUED behind the first.
    trace = [[s.get(i) for i in (first, second, other)] for s in snapshots]
    assert any(_held_in_queue(s, first, second, other) for s in snapshots), trace
    assert limit == {"limit": 1, "usingDefaultLimit": True}

    assert {r.status for r in runs} == {"SUCCESS"}, [(r.job_name, r.status) for r in runs]
    market = [r for r in runs if r.job_name not in {"other_pool_job", "signups_job"}]
    signups_runs = [r for r in runs if r.job_name == "signups_job"]
    assert len(signups_runs) == 2 and not overlaps(*signups_runs), _timeline(runs)
    (other_run,) = [r for r in runs if r.job_name == "other_pool_job"]
    (range_run,) = [r for r in market if r.tags.get("dagster/backfill") == backfill]
    assert range_run.partitions == (PARTITIONS[0], PARTITIONS[-1])  # single_run: one run
    assert len(market) == 3

    clashes = [(a.run_id, b.run_id) for a, b in combinations(market, 2) if overlaps(a, b)]
    assert not clashes, _timeline(runs)
    assert any(overlaps(other_run, r) for r in market), _timeline(runs)

    # Every partition materialised once per run that covered it, and its report is on disk.
    assert sorted(materialized) == PARTITIONS
    for key in PARTITIONS:
        covering = [r.run_id for r in market if _covers(r, key)]
        assert sorted(materialized[key]) == sorted(covering), key
        assert (isolated_dirs / "reports" / "market" / f"{key}.json").is_file()

    # The runs are stored where the instance yaml says (the test's PostgreSQL database).
    assert stored_run_ids(home, pg) == {r.run_id for r in runs}


def _covers(run: Run, key: str) -> bool:
    keys = run.partitions
    return keys[0] <= key <= keys[-1]  # ISO dates sort as strings


def _timeline(runs: list[Run]) -> str:
    return "\n".join(
        f"{r.job_name:16} {r.partitions!s:30} {r.start_time:.1f} → {r.end_time:.1f}"
        for r in sorted(runs, key=lambda r: r.start_time or 0)
    )
