"""What one hourly anomaly run costs as history grows, with the log store (core/log_store.py).

Generates rotated daily files as logrotate leaves them with `dateext`, `compress` and
`delaycompress` (`access.log-YYYYMMDD.gz` ..., yesterday as `access.log.1`, today as
`access.log`), about 130,000 lines a day (the demo generator at 10x its volume, with its
daily and weekly curves), once, under `--data-dir`. Then for 8, 32 and 128 days of
history, each in a fresh state dir:

- first ingest: the whole folder into the store (lines/s);
- scheduled hour: as the schedule runs it, warmed by the previous hour's run: an hour of
  lines is appended to `access.log`, then ingest what is new + read the hour and its
  baseline hours from the store + features + verdict (what the anomaly assets compute,
  without Dagster's constant orchestration cost). Every history ends on the same day, so
  each run reads the same lines. The histories take turns, hour after hour, so a change
  in the machine's load hits them alike. Median of `--repeats` hours; the ratio to 8 days
  is the figure the target is about (128 days <= 1.2x of 8 days);
- monthly audit: the compliance reader over 30 days of the store + the policy scan (on the
  largest history);
- raw reader (8 days only, for comparison): the pre-store path, every file parsed per run.

    .venv/bin/python benchmarks/history_cost.py              # 8, 32, 128 days, 5 repeats
    .venv/bin/python benchmarks/history_cost.py --days 8 32 --repeats 3
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

FIRST_DAY = datetime(2024, 1, 1, tzinfo=UTC)
SCALE = 10  # the demo's volume times this: about 130,000 lines a day


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


@dataclass
class History:
    """One logs folder of `days` days with its own store, and the next hour to run."""

    days: int
    data: Path
    state: Path
    hour: int
    ingest_s: float = 0.0
    ingest_lines: int = 0
    runs: list[float] = field(default_factory=list)
    lines: int = 0

    def use(self) -> None:
        os.environ["AGENT_REPORTS_STATE_DIR"] = str(self.state)

    def first_ingest(self) -> None:
        from agent_reports.core.log_store import folder_store

        self.use()
        self.ingest_s, summary = timed(folder_store(self.data / "logs").ingest, self.data / "logs")
        self.ingest_lines = summary.lines

    def scheduled_hour(self) -> float:
        """The next hour's lines appended to access.log, then that hour's run."""
        self.use()
        with open(self.data / "logs" / "access.log", "ab") as file:
            file.write(hour_text(self.hour))
        elapsed, self.lines = timed(anomaly_run, self.data, self.hour)
        self.hour += 1
        return elapsed


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
    days = sorted(args.days)
    write_days(args.data_dir, days[-1])  # every history ends on the pool's last day
    with tempfile.TemporaryDirectory(prefix="history-cost-") as tmp:
        histories = []
        for n in days:
            data, hour = rotated_folder(args.data_dir, Path(tmp) / f"days-{n}", n, days[-1])
            history = History(n, data, Path(tmp) / f"state-{n}", hour)
            history.first_ingest()
            rate = history.ingest_lines / history.ingest_s
            print(
                f"{n:4d} days: first ingest {history.ingest_lines:,} lines in "
                f"{history.ingest_s:.1f} s ({rate:,.0f} lines/s)",
                flush=True,
            )
            history.scheduled_hour()  # the previous hour's run: the warm-up
            histories.append(history)
        # Round-robin, so a change in the machine's load hits every history alike.
        for _ in range(args.repeats):
            for history in histories:
                history.runs.append(history.scheduled_hour())
        base = histories[0]
        for history in histories:
            ratios = [t / b for t, b in zip(history.runs, base.runs, strict=True)]
            median = statistics.median(history.runs)
            print(
                f"{history.days:4d} days: scheduled hour {median:.2f} s "
                f"for {history.lines:,} lines (median of {args.repeats}); ratio to "
                f"{base.days} days {median / statistics.median(base.runs):.2f}x"
                f" (median of per-round ratios {statistics.median(ratios):.2f}x)",
                flush=True,
            )
        base.use()
        raw = statistics.median(timed(raw_run, base.data, base.hour - 1)[0] for _ in range(2))
        print(f"{base.days:4d} days, pre-store raw reader: {raw:.2f} s (median of 2)")
        largest = histories[-1]
        largest.use()
        audits = [timed(monthly_audit, largest.data, largest.hour) for _ in range(3)]
        print(
            f"monthly audit over 30 days ({largest.days}-day store): "
            f"{statistics.median(a[0] for a in audits):.2f} s for {audits[0][1]:,} lines "
            "(median of 3)"
        )


if __name__ == "__main__":
    main()
