"""Access-log parsing throughput per format preset, one core, against pyarrow's CSV reader.

Writes the demo generator's traffic in each preset's format (one file per preset), then
runs, each in its own subprocess (so peak RSS is its own) `--repeat` times:

- baseline: pyarrow.csv.open_csv streaming the file (space-delimited, quoted): reading only;
- detected: the project's parser (core/access_logs.py) with the format detected per file;
- known: the same with the format given (as AGENT_REPORTS_LOG_FORMAT would);
- detection: the detector alone on the file's first lines (what "detected" adds).

It prints median CPU seconds and lines/s, the ratio to the baseline (the median over the
rounds of each round's ratio: every round runs each candidate once), the cost of
detection relative to the known-format parse, and peak RSS (VmHWM).

    .venv/bin/python benchmarks/log_parse.py --lines 1000000 --presets combined
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_CORE = {"OMP_NUM_THREADS": "1", "ARROW_NUM_THREADS": "1"}
_DEMO = re.compile(rb'^(?P<combined>.*") (?P<rt>\d+\.\d+)$')


def _render(preset: str, line: bytes) -> bytes:
    """A demo line (Combined + seconds) written as the preset writes it."""
    match = _DEMO.match(line)
    if match is None:  # the demo's own malformed lines stay as they are
        return line
    combined, seconds = match["combined"], match["rt"]
    rt = float(seconds)
    tails = {
        "common": None,
        "combined": b"",
        "combined_rt": b" %d" % int(rt * 1e6),  # Apache %D
        "nginx_main": b' "-"',
        "nginx_main_timed": b' "-" %s %s' % (seconds, seconds),
        "vhost_combined": b"",
        "combinedio": b" 312 4096",
        "traefik": b' 7 "web@docker" "http://10.0.0.7:80" %dms' % int(rt * 1e3),
    }
    if preset == "common":
        return combined.rsplit(b' "', 2)[0]
    prefix = b"www.example.com:443 " if preset == "vhost_combined" else b""
    return prefix + combined + tails[preset]


PRESETS = (
    "common",
    "combined",
    "combined_rt",
    "nginx_main",
    "nginx_main_timed",
    "vhost_combined",
    "combinedio",
    "traefik",
)


def write_logs(folder: Path, lines: int, presets: list[str]) -> dict[str, Path]:
    from agent_reports.core.access_logs_demo import hour_lines

    demo, hour = [], 474_000
    while len(demo) < lines:
        demo += hour_lines(7, hour).splitlines()
        hour += 1
    paths = {}
    for preset in presets:
        paths[preset] = folder / f"{preset}.log"
        paths[preset].write_bytes(b"\n".join(_render(preset, d) for d in demo[:lines]) + b"\n")
    return paths


def run_baseline(path: Path, preset: str) -> int:
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


def _parse(path: Path, log_format) -> int:
    from datetime import UTC, datetime

    import pyarrow as pa

    from agent_reports.core.access_logs import read_log_file

    pa.set_cpu_count(1)
    window = datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    chunks = read_log_file(path, *window, log_format=log_format)
    return sum(chunk.records.num_rows for chunk in chunks)


def run_detected(path: Path, preset: str) -> int:
    return _parse(path, None)


def run_known(path: Path, preset: str) -> int:
    from agent_reports.core.log_formats import PRESETS as FORMATS

    log_format = FORMATS[preset]
    return _parse(path, log_format.with_unit(1e-6) if log_format.rt_unit is None else log_format)


def run_detection(path: Path, preset: str) -> int:
    """Detection alone, as the parser runs it on a file's first block."""
    from agent_reports.core.access_logs import split_lines
    from agent_reports.core.log_formats import DETECT_LINES, detect

    with open(path, "rb") as file:
        head = b"".join(file.readline() for _ in range(DETECT_LINES))
    found, _count = detect(split_lines(head))
    assert found is not None and found.name.startswith(preset), (found, preset)
    return DETECT_LINES


CANDIDATES = {
    "baseline": run_baseline,
    "detected": run_detected,
    "known": run_known,
    "detection": run_detection,
}


def child(name: str, preset: str, path: Path) -> None:
    # One warm-up run on the file's head: imports and first-call set-up are not measured.
    warm = path.with_suffix(".warm")
    with open(path, "rb") as file:
        warm.write_bytes(b"".join(file.readline() for _ in range(500)))
    CANDIDATES[name](warm, preset)
    began = time.process_time()
    rows = CANDIDATES[name](path, preset)
    took = time.process_time() - began
    status = Path("/proc/self/status").read_text()  # VmHWM: this process's own peak
    peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
    print(f"{rows} {took} {peak_mb}")


def run_once(name: str, preset: str, path: Path) -> tuple[int, float, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", name, preset, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **ONE_CORE},
        check=True,
    )
    rows, took, peak = done.stdout.split()
    return int(rows), float(took), float(peak)


def measure(preset: str, path: Path, repeat: int) -> tuple[dict, dict]:
    """Each candidate once per round, rounds `repeat` times (so a load that changes during
    the run weighs on all alike); medians, and the median of each round's ratio to the
    baseline of the same round."""
    runs: dict[str, list] = {name: [] for name in CANDIDATES}
    for _ in range(repeat):
        for name in CANDIDATES:
            runs[name].append(run_once(name, preset, path))
    results = {
        name: (r[0][0], statistics.median(x[1] for x in r), max(x[2] for x in r))
        for name, r in runs.items()
    }
    ratios = {
        name: statistics.median(x[1] / b[1] for x, b in zip(r, runs["baseline"], strict=True))
        for name, r in runs.items()
    }
    return results, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as folder:
        paths = write_logs(Path(folder), args.lines, args.presets)
        print(
            f"{args.lines:,} lines per preset; CPU seconds, median of {args.repeat} runs, "
            "one core each"
        )
        for preset, path in paths.items():
            size_mb = path.stat().st_size / 1e6
            results, ratios = measure(preset, path, args.repeat)
            detection = results.pop("detection")[1]
            for name, (rows, took, peak) in results.items():
                print(
                    f"{preset:17s} {name:9s} {size_mb:5.0f} MB {rows:>10,} rows {took:6.2f} s "
                    f"{args.lines / took:>11,.0f} lines/s {ratios[name]:5.2f}× baseline  "
                    f"peak RSS {peak:5.0f} MB"
                )
            known = results["known"][1]
            print(
                f"{preset:17s} detection alone {detection * 1e3:.0f} ms = "
                f"{detection / known:.1%} of the known-format parse; detected/known "
                f"{results['detected'][1] / known - 1:+.1%} (noise included)"
            )


if __name__ == "__main__":
    main()
