"""Access-log parsing throughput and peak memory, one core, against pyarrow's CSV reader.

Writes a Combined Log Format file (with request times) from the demo generator, then runs
each candidate in its own subprocess (so peak RSS is its own) `--repeat` times and prints
the median lines/s, the ratio to the baseline measured in the same run, and peak RSS:

- baseline: pyarrow.csv.open_csv streaming the file (space-delimited, quoted): reading only;
- agent_reports: the project's parser (core/access_logs.py: pyarrow RE2 + numpy), streamed;
- python_re: a per-line `re` loop with datetime parsing (the naive approach);
- polars / duckdb: regex extraction over the whole file, when those packages are installed.

    .venv/bin/python benchmarks/log_parse.py --lines 1000000
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_CORE = {
    "OMP_NUM_THREADS": "1",
    "POLARS_MAX_THREADS": "1",
    "ARROW_NUM_THREADS": "1",
}


def write_log(path: Path, lines: int) -> int:
    from agent_reports.core.access_logs_demo import hour_lines

    written, hour = 0, 474_000
    with open(path, "wb") as file:
        while written < lines:
            block = hour_lines(7, hour)
            file.write(block)
            written += block.count(b"\n")
            hour += 1
    return written


def run_baseline(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.csv as csv

    pa.set_cpu_count(1)
    reader = csv.open_csv(
        path,
        read_options=csv.ReadOptions(autogenerate_column_names=True, use_threads=False),
        parse_options=csv.ParseOptions(
            delimiter=" ", quote_char='"', escape_char="\\", invalid_row_handler=lambda r: "skip"
        ),
    )
    return sum(batch.num_rows for batch in reader)


def run_agent_reports(path: Path) -> int:
    from datetime import UTC, datetime

    import pyarrow as pa

    from agent_reports.core.access_logs import read_log_file

    pa.set_cpu_count(1)
    window = datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    return sum(chunk.records.num_rows for chunk in read_log_file(path, *window))


def run_python_re(path: Path) -> int:
    import re
    from datetime import datetime

    from agent_reports.core.access_logs import LINE_PATTERN

    pattern = re.compile(LINE_PATTERN.encode())
    rows = 0
    with open(path, "rb") as file:
        for line in file:
            match = pattern.match(line)
            if match:
                stamp = b"%s/%s/%s:%s:%s:%s %s%s%s" % match.group(
                    "day", "mon", "year", "hh", "mm", "ss", "tzsign", "tzh", "tzm"
                )
                datetime.strptime(stamp.decode(), "%d/%b/%Y:%H:%M:%S %z")
                rows += 1
    return rows


def run_polars(path: Path) -> int:
    import polars as pl

    from agent_reports.core.access_logs import LINE_PATTERN

    lines = pl.scan_csv(
        path, has_header=False, separator="\x01", quote_char=None, new_columns=["line"]
    )
    parsed = lines.select(pl.col("line").str.extract_groups(LINE_PATTERN.replace("?P<", "?<")))
    parsed = parsed.unnest("line").filter(pl.col("client").is_not_null())
    stamp = pl.concat_str(["day", "mon", "year", "hh", "mm", "ss", "tzsign", "tzh", "tzm"])
    parsed = parsed.with_columns(time=stamp.str.strptime(pl.Datetime, "%d%b%Y%H%M%S%z"))
    return parsed.select(pl.len()).collect(engine="streaming").item()


def run_duckdb(path: Path) -> int:
    import duckdb

    from agent_reports.core.access_logs import LINE_PATTERN

    pattern = LINE_PATTERN.replace("?P<", "?<")
    connection = duckdb.connect(config={"threads": 1})
    query = """
        SELECT count(*) FROM (
          SELECT regexp_extract(line, $pattern,
                                ['client', 'day', 'mon', 'year', 'hh', 'mm', 'ss', 'status']) AS f
          FROM read_csv($path, columns={{'line': 'VARCHAR'}}, delim=chr(1), quote='',
                        escape='', header=false)
        ) WHERE f.client <> ''
    """
    return connection.execute(query, {"pattern": pattern, "path": str(path)}).fetchone()[0]


CANDIDATES = {
    "baseline": run_baseline,
    "agent_reports": run_agent_reports,
    "python_re": run_python_re,
    "polars": run_polars,
    "duckdb": run_duckdb,
}


def child(name: str, path: Path) -> None:
    began = time.perf_counter()
    rows = CANDIDATES[name](path)
    took = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{rows} {took} {peak_mb}")


def measure(name: str, path: Path, repeat: int) -> tuple[int, float, float] | None:
    runs = []
    for _ in range(repeat):
        done = subprocess.run(
            [sys.executable, __file__, "--child", name, str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, **ONE_CORE},
        )
        if done.returncode != 0:
            print(f"{name}: skipped ({done.stderr.strip().splitlines()[-1][:120]})")
            return None
        rows, took, peak = done.stdout.split()
        runs.append((int(rows), float(took), float(peak)))
    return runs[0][0], statistics.median(r[1] for r in runs), max(r[2] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "access.log"
        lines = write_log(path, args.lines)
        size_mb = path.stat().st_size / 1e6
        print(f"{lines:,} lines, {size_mb:.0f} MB; median of {args.repeat} runs, one core each")
        baseline = None
        for name in args.candidates:
            result = measure(name, path, 1 if name == "python_re" else args.repeat)
            if result is None:
                continue
            rows, took, peak = result
            baseline = baseline or took
            print(
                f"{name:14s} {rows:>10,} rows {took:6.2f} s {lines / took:>12,.0f} lines/s "
                f"{took / baseline:5.2f}× baseline time  peak RSS {peak:6.0f} MB"
            )


if __name__ == "__main__":
    main()
