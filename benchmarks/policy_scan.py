"""What WAF-style path normalisation costs the compliance audit's log scan.

Builds a month-like stream of parsed records from the demo generator, with a share of
paths rewritten the way real traffic and probes write them (`%20` in file names, dot
segments, `//`, `/%2eenv`), and times `PolicyScan.add` over it `--repeat` times:

- baseline: the same scan with only raw matches of the sensitive prefixes reaching
  Python (how the audit matched before it normalised), measured in the same run;
- normalised: the scan as it runs (every distinct path that could normalise into a
  sensitive one, i.e. holding a `%` or a prefix's name, goes through `normalized_path`).

Prints the median lines/s of each and their ratio.

    .venv/bin/python benchmarks/policy_scan.py --lines 1000000 --odd-share 0.05
"""

import argparse
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_reports.compliance import analysis
from agent_reports.core.access_logs import parse_block
from agent_reports.core.access_logs_demo import hour_lines

# Every rewritten path is distinct (the worst case: the scan normalises each distinct
# candidate path once per chunk, and real traffic repeats paths).
ODD_PATHS = [
    "/images/my%20photo{}.jpg",
    "/a//b{}.css",
    "/static/../app{}.js",
    "/%2eenv{}",
    "/./x{}",
]


class RawOnly(analysis.PolicyConfig):
    """The baseline: only paths whose raw text matches are looked at."""

    def candidate_pattern(self) -> str:
        return self.sensitive_pattern()


def chunks(lines: int, odd_share: float) -> list[pa.Table]:
    """Parsed demo hours with `file` and `line`, `odd_share` of the paths rewritten."""
    rng, built, hour, found = np.random.default_rng(7), [], 474_000, 0
    while found < lines:
        records, _good, _lines = parse_block(hour_lines(7, hour))
        paths = records.column("path").to_pylist()
        for index in np.flatnonzero(rng.random(len(paths)) < odd_share):
            paths[index] = ODD_PATHS[index % len(ODD_PATHS)].format(found + index)
        records = records.set_column(
            records.schema.get_field_index("path"), "path", pa.array(paths, pa.string())
        )
        records = records.append_column("file", pa.array(["access.log"] * records.num_rows))
        numbers = pa.array(np.arange(found + 1, found + records.num_rows + 1), pa.int64())
        built.append(records.append_column("line", numbers))
        found += records.num_rows
        hour += 1
    return built


def timed(data: list[pa.Table], config: analysis.PolicyConfig) -> float:
    scan = analysis.PolicyScan(config)
    start = time.perf_counter()
    for chunk in data:
        scan.add(chunk)
    scan.findings()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--odd-share", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    pa.set_cpu_count(1)
    data = chunks(args.lines, args.odd_share)
    lines = sum(chunk.num_rows for chunk in data)
    runs: dict[str, list[float]] = {"baseline (raw match)": [], "normalised": []}
    pattern = analysis.PolicyConfig().candidate_pattern()
    candidates = sum(
        pc.sum(pc.match_substring_regex(chunk.column("path"), pattern)).as_py() or 0
        for chunk in data
    )
    for _ in range(args.repeat):
        runs["baseline (raw match)"].append(timed(data, RawOnly()))
        runs["normalised"].append(timed(data, analysis.PolicyConfig()))
    print(f"{lines:,} records, {candidates:,} ({candidates / lines:.1%}) candidates to normalise")
    medians = {name: statistics.median(seconds) for name, seconds in runs.items()}
    for name, seconds in medians.items():
        print(f"{name:22} {lines / seconds:>12,.0f} lines/s  median of {args.repeat}")
    ratio = medians["normalised"] / medians["baseline (raw match)"]
    print(f"normalised / baseline time: {ratio:.2f}")


if __name__ == "__main__":
    main()
