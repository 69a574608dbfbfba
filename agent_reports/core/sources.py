"""Data sources behind one interface: `demo` (generated, deterministic) and `files` (drop folder).

A source answers "the rows of kind K whose timestamps fall in [start, end)". The demo
source derives every value from (seed, ticker, day), so any window of it is the same
whichever range it was read with; the files source reads a drop folder and names the
file, line and column of anything it cannot parse.
"""

from __future__ import annotations

import csv
import functools
import gzip
import zlib
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from agent_reports.core.access_logs import LogChunk

MARKET_COLUMNS = ("date", "ticker", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


class InputError(ValueError):
    """Input that cannot be read, located by file, line and column for the person who fixes it."""

    def __init__(self, path: Path | str, line: int | None, column: str | None, problem: str):
        self.path, self.line, self.column, self.problem = str(path), line, column, problem
        where = self.path + (f":{line}" if line else "")
        super().__init__(f"{where}: " + (f"column '{column}': " if column else "") + problem)


class Source(Protocol):
    """What an analysis may ask for; each method returns rows with timestamps in [start, end)."""

    name: str

    def market_prices(self, start: date, end: date) -> pd.DataFrame:
        """Daily OHLCV rows, columns MARKET_COLUMNS, `date` as datetime64 (midnight UTC)."""
        ...

    def access_logs(self, start: datetime, end: datetime) -> Iterator[LogChunk]:
        """Parsed access-log lines timed in [start, end) (aware datetimes), in streamed chunks,
        with the malformed lines counted (see core/access_logs.py)."""
        ...

    def customers(self) -> pd.DataFrame:
        """The customer base, one row per customer, canonical columns (core/customers.py)."""
        ...


def empty_market_frame() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype="float64") for column in MARKET_COLUMNS})
    frame["date"] = pd.Series(dtype="datetime64[ns]")
    frame["ticker"] = pd.Series(dtype="object")
    return frame


# --------------------------------------------------------------------------- demo source

DEMO_EPOCH = date(2015, 1, 1)
# Fictional tickers with a starting price, daily volatility and typical volume.
DEMO_TICKERS = {
    "ALPH": (182.0, 0.017, 52_000_000),
    "BRVO": (331.0, 0.015, 24_000_000),
    "CHRL": (94.0, 0.031, 41_000_000),
    "DLTA": (57.5, 0.012, 13_000_000),
    "ECHO": (12.4, 0.042, 88_000_000),
    "FXTR": (141.0, 0.019, 17_500_000),
    "GOLF": (73.2, 0.010, 9_800_000),
    "HTEL": (28.9, 0.024, 31_000_000),
}


@functools.cache
def _trading_days(year: int) -> pd.DatetimeIndex:
    """Weekdays of `year` less US federal holidays (a stand-in for an exchange calendar)."""
    from pandas.tseries.holiday import USFederalHolidayCalendar

    days = pd.bdate_range(f"{year}-01-01", f"{year}-12-31")
    holidays = USFederalHolidayCalendar().holidays(f"{year}-01-01", f"{year}-12-31")
    return days.difference(holidays)


@functools.cache
def _demo_series(seed: int, ticker: str, last_year: int) -> pd.DataFrame:
    """One ticker's whole history from DEMO_EPOCH to the end of `last_year`.

    Each year's shocks come from a generator seeded by (seed, ticker, year), so extending
    the history never changes earlier values.
    """
    price, daily_vol, base_volume = DEMO_TICKERS[ticker]
    ticker_id = int.from_bytes(ticker.encode(), "big")
    frames = []
    for year in range(DEMO_EPOCH.year, last_year + 1):
        days = _trading_days(year)
        rng = np.random.default_rng([seed, ticker_id, year])
        n = len(days)
        shocks = rng.standard_t(df=4, size=n) * daily_vol / np.sqrt(2) + 0.0003
        jumps = rng.random(n) < 0.01
        shocks[jumps] += rng.normal(0, daily_vol * 5, jumps.sum())
        closes = price * np.exp(np.cumsum(shocks))
        opens = np.concatenate([[price], closes[:-1]]) * np.exp(rng.normal(0, daily_vol / 4, n))
        wick = np.abs(rng.normal(0, daily_vol / 2, (2, n)))
        highs = np.maximum(opens, closes) * np.exp(wick[0])
        lows = np.minimum(opens, closes) * np.exp(-wick[1])
        volumes = base_volume * np.exp(rng.normal(0, 0.25, n) + 8 * np.abs(shocks))
        frames.append(
            pd.DataFrame(
                {
                    "date": days,
                    "ticker": ticker,
                    "open": opens.round(2),
                    "high": highs.round(2),
                    "low": lows.round(2),
                    "close": closes.round(2),
                    "volume": volumes.round(),
                }
            )
        )
        price = float(closes[-1])
    return pd.concat(frames, ignore_index=True)


class DemoSource:
    """Realistic, deterministic data from (seed, window): the default, so the UI works at once."""

    name = "demo"

    def __init__(self, seed: int = 7):
        self.seed = seed

    def market_prices(self, start: date, end: date) -> pd.DataFrame:
        if end <= DEMO_EPOCH or end <= start:
            return empty_market_frame()
        last_year = (end - timedelta(days=1)).year
        frames = [_demo_series(self.seed, ticker, last_year) for ticker in DEMO_TICKERS]
        prices = pd.concat(frames, ignore_index=True)
        in_window = (prices["date"] >= pd.Timestamp(start)) & (prices["date"] < pd.Timestamp(end))
        return prices[in_window].sort_values(["date", "ticker"]).reset_index(drop=True)

    def access_logs(self, start: datetime, end: datetime) -> Iterator[LogChunk]:
        """Generated traffic with labelled incidents (core/access_logs_demo.py), parsed."""
        from agent_reports.core.access_logs import parse_blocks
        from agent_reports.core.access_logs_demo import demo_blocks

        return parse_blocks(demo_blocks(self.seed, start, end), "demo", start, end)

    def customers(self) -> pd.DataFrame:
        """A generated telco-like base with a churn history (core/customers.py)."""
        from agent_reports.core.customers import demo_customers

        return demo_customers(self.seed).copy()


# -------------------------------------------------------------------------- files source


def read_market_csv(path: Path) -> pd.DataFrame:
    """One market CSV (plain or .gz), validated; raises InputError naming file, line, column.

    Columns are found by header name (any order, extra columns ignored, blank lines
    skipped). An empty cell becomes a missing value, which the asset checks flag; a row
    with more or fewer fields than the header, text where a number belongs or a bad
    date fails the read.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            if not header:
                raise InputError(path, 1, None, "the file is empty: expected a header line")
            for column in MARKET_COLUMNS:
                if column not in header:
                    raise InputError(
                        path, 1, column, f"missing from the header ({', '.join(MARKET_COLUMNS)})"
                    )
            positions = [header.index(column) for column in MARKET_COLUMNS]
            records, lines = [], []
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                if len(row) != len(header):
                    raise _width_error(path, reader.line_num, row, header)
                records.append([row[i].strip() for i in positions])
                lines.append(reader.line_num)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as error:
        raise InputError(path, None, None, f"cannot be read ({error})") from None
    # The index is the line number in the file, for error messages.
    raw = pd.DataFrame(records, columns=list(MARKET_COLUMNS), index=lines, dtype=str)
    frame = pd.DataFrame(index=raw.index)
    frame["date"] = pd.to_datetime(raw["date"], format="%Y-%m-%d", errors="coerce")
    _raise_first(path, raw, "date", frame["date"].isna(), "expected a date as YYYY-MM-DD")
    frame["ticker"] = raw["ticker"]
    _raise_first(path, raw, "ticker", frame["ticker"] == "", "expected a ticker symbol")
    for column in PRICE_COLUMNS:
        text = raw[column]
        frame[column] = pd.to_numeric(text.where(text != ""), errors="coerce")
        unparsable = frame[column].isna() & (text != "")
        _raise_first(path, raw, column, unparsable, "expected a number")
    return frame.reset_index(drop=True)


def _width_error(path: Path, line: int, row: list[str], header: list[str]) -> InputError:
    if len(row) < len(header):
        return InputError(
            path,
            line,
            header[len(row)],
            f"no value: the row has {len(row)} fields, the header {len(header)} (truncated?)",
        )
    return InputError(path, line, None, f"the row has {len(row)} fields, the header {len(header)}")


def _raise_first(path: Path, raw: pd.DataFrame, column: str, bad: pd.Series, problem: str) -> None:
    if bad.any():
        line = bad.idxmax()
        raise InputError(path, int(line), column, f"{problem}, got {raw.at[line, column]!r}")


class FileSource:
    """Reads the drop folder: `<data_dir>/market/*.csv[.gz]`, any names, tickers mixed or not."""

    name = "files"

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def _files(self, kind: str, patterns: tuple[str, ...]) -> list[Path]:
        folder = self.data_dir / kind
        if not folder.is_dir():
            raise InputError(folder, None, None, "folder not found (AGENT_REPORTS_DATA_DIR/kind)")
        return sorted({path for pattern in patterns for path in folder.glob(pattern)})

    def access_logs(self, start: datetime, end: datetime) -> Iterator[LogChunk]:
        """Every file under `<data_dir>/logs/` (plain or .gz, any names), streamed."""
        from agent_reports.core.access_logs import log_files, read_access_logs

        folder = self.data_dir / "logs"
        if not folder.is_dir():
            raise InputError(folder, None, None, "folder not found (AGENT_REPORTS_DATA_DIR/logs)")
        return read_access_logs(log_files(folder), start, end)

    def customers(self) -> pd.DataFrame:
        """Every CSV under `<data_dir>/customers/` (plain or .gz), one base."""
        from agent_reports.core.customers import read_customers_folder

        return read_customers_folder(self.data_dir / "customers")

    def market_prices(self, start: date, end: date) -> pd.DataFrame:
        frames = [read_market_csv(path) for path in self._files("market", ("*.csv", "*.csv.gz"))]
        if not frames:
            return empty_market_frame()
        prices = pd.concat(frames, ignore_index=True)
        in_window = (prices["date"] >= pd.Timestamp(start)) & (prices["date"] < pd.Timestamp(end))
        return prices[in_window].sort_values(["date", "ticker"]).reset_index(drop=True)
