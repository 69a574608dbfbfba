"""Backfill daily market partitions through the real daemons (`dagster dev`), two ways:

- per partition: one run per day, launched together; the market pool (limit 1) queues
  them, so each pays the run start-up and queue polling on its own;
- range: one partition backfill; BackfillPolicy.single_run() makes it one run for all days.

Offline analyst, demo data, a fresh DAGSTER_HOME and state per repeat. Prints seconds per
partition for both, their ratio, and the range's wall time from submission to the run's end
(split into backfill-daemon pick-up, queue, execution); medians over `--repeats`.
The issue's target: `--partitions 365` in under 90 s end to end.

    .venv/bin/python benchmarks/backfill.py --partitions 365 --per-run-partitions 30 --repeats 3
"""

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_reports_tests.dagster_stack import DagsterStack, Run, dagster_stack

MARKET_ASSETS = ["market_prices", "market_analysis", "market_report"]
FIRST_DAY = date(2024, 1, 1)
PER_RUN_FIRST_DAY = date(2025, 6, 1)  # disjoint from the range, so no cache is shared


def days(first: date, count: int) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range(count)]


def check(runs: list[Run], stack: DagsterStack, partitions: list[str]) -> None:
    failed = [r.run_id for r in runs if r.status != "SUCCESS"]
    done = set(stack.materializations("market_report"))
    if failed or not done.issuperset(partitions):
        raise SystemExit(f"failed runs {failed}; {len(set(partitions) - done)} not materialised")


def range_backfill(stack: DagsterStack, partitions: list[str]) -> dict[str, float]:
    """One partition backfill over `partitions`; times of its single run."""
    submitted = time.time()
    backfill = stack.launch_backfill(MARKET_ASSETS, partitions)
    stack.wait_until(lambda: stack.backfill_runs(backfill), timeout=600)
    runs = stack.wait_for_runs([r.run_id for r in stack.backfill_runs(backfill)], timeout=1800)
    check(runs, stack, partitions)
    (run,) = runs
    return {
        "wall": run.end_time - submitted,
        "pickup": run.creation_time - submitted,
        "queue": run.start_time - run.creation_time,
        "execution": run.end_time - run.start_time,
    }


def per_partition_runs(stack: DagsterStack, partitions: list[str]) -> dict[str, float]:
    """One market_job run per partition, all launched at once."""
    submitted = time.time()
    ids = [stack.launch_run("market_job", key) for key in partitions]
    runs = stack.wait_for_runs(ids, timeout=3600)
    check(runs, stack, partitions)
    return {
        "wall": max(r.end_time for r in runs) - submitted,
        "execution": statistics.median(r.end_time - r.start_time for r in runs),
    }


def repeat(args: argparse.Namespace, root: Path) -> tuple[dict, dict]:
    env = {
        "AGENT_REPORTS_ANALYST": "offline",
        "AGENT_REPORTS_REPORTS_DIR": str(root / "reports"),
        "AGENT_REPORTS_STATE_DIR": str(root / "state"),
    }
    with dagster_stack(root / "home", args.instance, "agent_reports.definitions", env) as stack:
        # The range first: on a fresh instance the pool's limit is created by the first
        # dequeue pass that sees it, which does not yet apply it to the runs it dequeues.
        whole = range_backfill(stack, days(FIRST_DAY, args.partitions))
        each = per_partition_runs(stack, days(PER_RUN_FIRST_DAY, args.per_run_partitions))
    return whole, each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=30, help="days in the range backfill")
    parser.add_argument(
        "--per-run-partitions", type=int, help="days run one per run (default: --partitions)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--instance", default="dagster.yaml", help="instance yaml (repo path)")
    args = parser.parse_args()
    args.per_run_partitions = args.per_run_partitions or args.partitions

    wholes, eaches = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="backfill-bench-") as root:
            whole, each = repeat(args, Path(root))
        wholes.append(whole)
        eaches.append(each)
        print(
            f"repeat {i + 1}: range {args.partitions} partitions {whole['wall']:.1f} s "
            f"(pick-up {whole['pickup']:.1f}, queue {whole['queue']:.1f}, "
            f"execution {whole['execution']:.1f}); per partition {args.per_run_partitions} "
            f"runs {each['wall']:.1f} s (median run {each['execution']:.1f} s)",
            flush=True,
        )

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    range_each = median(wholes, "wall") / args.partitions
    runs_each = median(eaches, "wall") / args.per_run_partitions
    print(f"\nmedians over {args.repeats} repeat(s)")
    print(f"one run per partition : {runs_each:8.3f} s/partition ({args.per_run_partitions} runs)")
    print(f"one run for the range : {range_each:8.3f} s/partition ({args.partitions} partitions)")
    print(f"ratio                 : {runs_each / range_each:8.1f}x")
    print(
        f"range wall time       : {median(wholes, 'wall'):8.1f} s end to end "
        f"(backfill daemon pick-up {median(wholes, 'pickup'):.1f} s, queue "
        f"{median(wholes, 'queue'):.1f} s, execution {median(wholes, 'execution'):.1f} s; "
        "target < 90 s for 365)"
    )


if __name__ == "__main__":
    main()
