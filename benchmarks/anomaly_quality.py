"""Precision and recall of the hourly anomaly detector on demo traffic with labelled incidents.

The demo generator injects error bursts, traffic spikes and drops, crawler floods and
slow endpoints into about 3% of the hours (labels from `demo_incidents`). Every hour of
the evaluated span is judged with the same code the assets use; an hour counts as
flagged when its severity is at least `--min-severity`. Prints per-kind recall too.

    .venv/bin/python benchmarks/anomaly_quality.py --days 28
"""

import argparse
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from agent_reports.anomalies.analysis import (
    LOOKBACK_HOURS,
    SEVERITIES,
    HourlyTraffic,
    detect,
    partition_traffic,
)
from agent_reports.core.access_logs import parse_blocks
from agent_reports.core.access_logs_demo import demo_blocks, demo_incidents


def evaluate(seed: int, start: datetime, days: int, min_severity: str) -> dict:
    end = start + timedelta(days=days)
    scan_start = start - timedelta(hours=LOOKBACK_HOURS)
    chunks = parse_blocks(demo_blocks(seed, scan_start, end), "demo", scan_start, end)
    traffic = HourlyTraffic().add_all(chunks)
    labels = demo_incidents(seed, start, end)
    first = int(start.timestamp()) // 3600
    flagged = set()
    for hour in range(first, first + days * 24):
        window = partition_traffic(traffic, hour)
        verdict = detect(window["features"], window["baseline"])
        if SEVERITIES.index(verdict["severity"]) >= SEVERITIES.index(min_severity):
            flagged.add(hour)
    true_positive = flagged & set(labels)
    found = Counter(labels[h] for h in true_positive)
    return {
        "hours": days * 24,
        "incidents": len(labels),
        "flagged": len(flagged),
        "precision": len(true_positive) / len(flagged) if flagged else 1.0,
        "recall": len(true_positive) / len(labels) if labels else 1.0,
        "per_kind": {k: f"{found[k]}/{n}" for k, n in sorted(Counter(labels.values()).items())},
        "false_positives": sorted(flagged - set(labels)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11])
    parser.add_argument("--start", default="2024-02-01")
    parser.add_argument("--min-severity", default="low", choices=SEVERITIES[1:])
    args = parser.parse_args()
    start = datetime.fromisoformat(args.start).replace(tzinfo=UTC)
    totals = Counter()
    for seed in args.seeds:
        began = time.perf_counter()
        result = evaluate(seed, start, args.days, args.min_severity)
        took = time.perf_counter() - began
        print(
            f"seed {seed}: {result['hours']} hours, {result['incidents']} incidents, "
            f"{result['flagged']} flagged; precision {result['precision']:.3f}, "
            f"recall {result['recall']:.3f}; per kind {result['per_kind']}; {took:.1f} s"
        )
        if result["false_positives"]:
            print(f"  false positives (epoch hours): {result['false_positives'][:10]}")
        tp = round(result["precision"] * result["flagged"])
        totals.update(flagged=result["flagged"], incidents=result["incidents"], tp=tp)
    precision = totals["tp"] / totals["flagged"] if totals["flagged"] else 1.0
    recall = totals["tp"] / totals["incidents"] if totals["incidents"] else 1.0
    print(f"overall: precision {precision:.3f}, recall {recall:.3f} (target ≥ 0.9 for both)")


if __name__ == "__main__":
    main()
