"""What a market run pays to read its drop folder: cold (every file parsed) vs warm (the
parsed-file cache, an unchanged folder), against pandas' bare read_csv of the same files.

Writes a year of per-ticker Yahoo-layout exports (`<TICKER>.csv`: Date, Open, High, Low,
Close, Adj Close, Volume; 252 rows each) from the demo generator, then times `--repeat`
times each and prints the medians and their ratio to the baseline measured in the same run:

- baseline: `pandas.read_csv` of every file and one concat (no validation, no dialect work);
- cold: `FileSource.market_read` with an empty cache (parse, validate, write the cache);
- warm: the same read again (a stat per file and the cached frames);
- one changed: warm, with one file rewritten (that file parsed again, the rest cached).

    .venv/bin/python benchmarks/csv_sources.py --tickers 200
"""

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

YEAR = (date(2024, 1, 1), date(2025, 1, 1))


def write_folder(folder: Path, tickers: int) -> int:
    """`tickers` per-ticker files of 2024 from the demo series; returns the rows written."""
    from agent_reports.core.sources import DEMO_TICKERS, DemoSource

    prices = DemoSource().market_prices(*YEAR)
    rows = 0
    for i in range(tickers):
        base = list(DEMO_TICKERS)[i % len(DEMO_TICKERS)]
        frame = prices[prices["ticker"] == base]
        scale = 1 + i / tickers
        export = pd.DataFrame(
            {
                "Date": frame["date"].dt.strftime("%Y-%m-%d"),
                **{c.title(): (frame[c] * scale).round(6) for c in ("open", "high", "low")},
                "Close": (frame["close"] * scale).round(6),
                "Adj Close": (frame["close"] * scale * 0.98).round(6),
                "Volume": frame["volume"].astype("int64"),
            }
        )
        export.to_csv(folder / f"T{i:04d}.csv", index=False)
        rows += len(export)
    return rows


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickers", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from agent_reports.core.sources import FileSource

    with tempfile.TemporaryDirectory() as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        (data / "market").mkdir(parents=True)
        rows = write_folder(data / "market", args.tickers)
        files = sorted((data / "market").glob("*.csv"))
        source = FileSource(data, cache)

        def baseline() -> None:
            pd.concat([pd.read_csv(path) for path in files], ignore_index=True)

        def cold() -> None:
            shutil.rmtree(cache, ignore_errors=True)
            source.market_read(*YEAR)

        def warm() -> None:
            source.market_read(*YEAR)

        def one_changed() -> None:
            files[0].write_bytes(files[0].read_bytes() + b"\n")
            source.market_read(*YEAR)

        results = {}
        for name, function in [
            ("baseline pandas.read_csv", baseline),
            ("cold (empty cache)", cold),
            ("warm (unchanged folder)", warm),
            ("warm, one file changed", one_changed),
        ]:
            if name.startswith("warm"):
                source.market_read(*YEAR)  # the cache as the previous run left it
            results[name] = statistics.median(timed(function) for _ in range(args.repeat))

    base = results["baseline pandas.read_csv"]
    print(f"{args.tickers} per-ticker files, {rows:,} rows, median of {args.repeat} runs")
    for name, seconds in results.items():
        print(f"  {name:28s} {seconds * 1000:9.1f} ms  {seconds / base:6.2f}x baseline")
    cold_s, warm_s = results["cold (empty cache)"], results["warm (unchanged folder)"]
    print(f"  warm / cold: {warm_s / cold_s:.3f} ({cold_s / warm_s:.1f}x faster)")


if __name__ == "__main__":
    main()
