"""What one hourly anomaly run costs as history grows, with the log store (core/log_store.py).

Generates rotated daily files as logrotate leaves them with `dateext`, `compress` and
`delaycompress` (`access.log-YYYYMMDD.gz` ..., yesterday as `access.log.1`, today as
`access.log`), about 96,000 lines a day (the demo generator at 10x its volume), once,
under `--data-dir`. Then for 8, 32 and 128 days of history, each in a fresh state dir:

- first ingest: the whole folder into the store (lines/s);
- scheduled hour: as the schedule runs it, warmed by the previous hour's run: an hour of
  lines is appended to `access.log`, then ingest what is new + read the hour and its
  baseline hours from the store + features + verdict (what the anomaly assets compute,
  without Dagster's constant orchestration cost). Median of `--repeats` hours; the ratio
  to 8 days is the figure the target is about (128 days <= 1.2x of 8 days);
- monthly audit: the compliance reader over 30 days of the store + the policy scan (on the
  largest history);
- raw reader (8 days only, for comparison): the pre-store path, every file parsed per run.

    .venv/bin/python benchmarks/history_cost.py              # 8, 32, 128 days, 5 repeats
    .venv/bin/python benchmarks/history_cost.py --days 8 32 --repeats 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

FIRST_DAY = datetime(2024, 1, 1, tzinfo=UTC)
SCALE = 10  # the demo's volume times this: about 96,000 lines a day


def day_lines(day: int) -> list[bytes]:
    """The 24 hours of lines of day number `day` (from FIRST_DAY), one bytes per hour."""
    from agent_reports.core import access_logs_demo as demo

    demo.PEAK_REQUESTS = 1200 * SCALE  # in this process only
    first = int((FIRST_DAY + timedelta(days=day)).timestamp()) // 3600
    return [demo.hour_lines(7, hour) for hour in range(first, first + 24)]


def write_days(pool: Path, days: int) -> int:
    """Day files `<pool>/day-<n>.gz` (and the raw text of the last day), generated once."""
    pool.mkdir(parents=True, exist_ok=True)
    lines = 0
    began = time.perf_counter()
    for day in range(days):
        target = pool / f"day-{day:04d}.gz"
        if target.exists():
            continue
        text = b"".join(day_lines(day))
        lines += text.count(b"\n")
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(text, compresslevel=1))
        tmp.rename(target)
    if lines:
        print(f"generated {lines:,} lines in {time.perf_counter() - began:.0f} s under {pool}")
    return lines


def rotated_folder(pool: Path, target: Path, days: int, total: int) -> tuple[Path, int]:
    """A logs folder holding the last `days` of the pool's `total` days, as logrotate leaves
    them (dated .gz files, the newest day plain as access.log.1), and today's first hour
    in access.log. Every history ends on the same day, so each scheduled hour reads the
    same lines whatever the history. Returns the folder and the next hour to run."""
    logs = target / "logs"
    shutil.rmtree(target, ignore_errors=True)
    logs.mkdir(parents=True)
    for day in range(total - days, total - 1):
        stamp = (FIRST_DAY + timedelta(days=day + 1)).strftime("%Y%m%d")
        os.link(pool / f"day-{day:04d}.gz", logs / f"access.log-{stamp}.gz")
    with gzip.open(pool / f"day-{total - 1:04d}.gz", "rb") as yesterday:
        (logs / "access.log.1").write_bytes(yesterday.read())
    today = int((FIRST_DAY + timedelta(days=total)).timestamp()) // 3600
    (logs / "access.log").write_bytes(hour_text(today))
    return target, today + 1


def hour_text(hour: int) -> bytes:
    from agent_reports.core import access_logs_demo as demo

    demo.PEAK_REQUESTS = 1200 * SCALE
    return demo.hour_lines(7, hour)


def anomaly_run(data: Path, hour: int) -> int:
    """One scheduled hour: what anomalies_traffic and anomalies_detection compute; returns
    the lines read (the same for every history: the hour and its baseline)."""
    from agent_reports.anomalies.analysis import (
        LOOKBACK_HOURS,
        HourlyTraffic,
        detect,
        partition_traffic,
    )
    from agent_reports.core.sources import FileSource

    at = lambda h: datetime.fromtimestamp(h * 3600, UTC)  # noqa: E731
    traffic, lines = HourlyTraffic(), 0
    for chunk in FileSource(data).access_logs(at(hour - LOOKBACK_HOURS), at(hour + 1)):
        traffic.add(chunk)
        lines += chunk.records.num_rows + chunk.malformed.num_rows
    window = partition_traffic(traffic, hour)
    detect(window["features"], window["baseline"])
    return lines


def raw_run(data: Path, hour: int) -> None:
    """The same hour through the pre-store reader: every file parsed."""
    from agent_reports.anomalies.analysis import LOOKBACK_HOURS, HourlyTraffic, partition_traffic
    from agent_reports.core.access_logs import log_files, read_access_logs

    at = lambda h: datetime.fromtimestamp(h * 3600, UTC)  # noqa: E731
    chunks = read_access_logs(log_files(data / "logs"), at(hour - LOOKBACK_HOURS), at(hour + 1))
    partition_traffic(HourlyTraffic().add_all(chunks), hour)


def monthly_audit(data: Path, end_hour: int) -> int:
    """The compliance reader and policy scan over the 30 days before `end_hour`."""
    from agent_reports.compliance.analysis import (
        PolicyConfig,
        PolicyScan,
        parse_allowlist,
        parse_prefixes,
    )
    from agent_reports.compliance.logs import ReadStats, month_records
    from agent_reports.core.sources import FileSource

    end = datetime.fromtimestamp(end_hour * 3600, UTC)
    scan = PolicyScan(PolicyConfig(parse_allowlist(None), parse_prefixes(None)))
    for chunk in month_records(FileSource(data), end - timedelta(days=30), end, ReadStats()):
        scan.add(chunk)
    scan.findings()
    return scan.lines


def timed(function, *args) -> tuple[float, object]:
    began = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - began, result


def measure(pool: Path, work: Path, days: int, total: int, repeats: int, raw: bool) -> dict:
    from agent_reports.core.log_store import folder_store

    data, hour = rotated_folder(pool, work / f"days-{days}", days, total)
    os.environ["AGENT_REPORTS_STATE_DIR"] = str(work / f"state-{days}")
    shutil.rmtree(work / f"state-{days}", ignore_errors=True)
    seconds, summary = timed(folder_store(data / "logs").ingest, data / "logs")
    result = {"days": days, "ingest_s": seconds, "ingest_lines": summary.lines}
    access = data / "logs" / "access.log"
    runs = []
    for repeat in range(repeats + 1):  # the first is the previous hour's run: the warm-up
        with open(access, "ab") as file:
            file.write(hour_text(hour + repeat))
        elapsed, lines = timed(anomaly_run, data, hour + repeat)
        if repeat:
            runs.append(elapsed)
    result["hour_s"], result["hour_lines"] = statistics.median(runs), lines
    if raw:
        result["raw_hour_s"] = statistics.median(
            timed(raw_run, data, hour + repeats)[0] for _ in range(max(1, repeats // 2))
        )
    result["audit"] = (data, hour + repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "agent-reports-history-logs",
        help="where the generated day files are kept between invocations",
    )
    args = parser.parse_args()
    write_days(args.data_dir, max(args.days))  # every history ends on the pool's last day
    results = []
    with tempfile.TemporaryDirectory(prefix="history-cost-") as tmp:
        for days in sorted(args.days):
            results.append(
                measure(args.data_dir, Path(tmp), days, max(args.days), args.repeats, days == 8)
            )
            r = results[-1]
            print(
                f"{days:4d} days: first ingest {r['ingest_lines']:,} lines in "
                f"{r['ingest_s']:.1f} s ({r['ingest_lines'] / r['ingest_s']:,.0f} lines/s); "
                f"scheduled hour {r['hour_s']:.2f} s for {r['hour_lines']:,} lines "
                f"(median of {args.repeats})"
                + (f"; raw reader {r['raw_hour_s']:.2f} s" if "raw_hour_s" in r else ""),
                flush=True,
            )
        base = results[0]["hour_s"]
        for r in results:
            print(f"ratio {r['days']:4d} / {results[0]['days']} days: {r['hour_s'] / base:.2f}x")
        data, hour = results[-1]["audit"]
        audits = [timed(monthly_audit, data, hour) for _ in range(3)]
        lines = audits[0][1]
        print(
            f"monthly audit over 30 days ({results[-1]['days']}-day store): "
            f"{statistics.median(a[0] for a in audits):.2f} s for {lines:,} lines (median of 3)"
        )
        print(json.dumps([{k: v for k, v in r.items() if k != "audit"} for r in results]))


if __name__ == "__main__":
    main()
