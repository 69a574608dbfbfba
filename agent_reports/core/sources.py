"""Data sources behind one interface: `demo` (generated, deterministic) and `files` (drop folder).

A source answers "the rows of kind K whose timestamps fall in [start, end)". The demo
source derives every value from (seed, ticker, day), so any window of it is the same
whichever range it was read with; the files source reads a drop folder and names the
file, line and column of anything it cannot parse.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from agent_reports.core import csv_files
from agent_reports.core.csv_files import InputError

if TYPE_CHECKING:
    from agent_reports.core.access_logs import LogChunk

__all__ = ["InputError"]  # defined in csv_files, raised by every source

# `adj_close` is NaN where the source has no adjusted close; `file` and `line` say where
# each row was read (the demo's rows say "demo", line 0).
MARKET_COLUMNS = ("date", "ticker", "open", "high", "low", "close", "adj_close", "volume")
ORIGIN_COLUMNS = ("file", "line")
PRICE_COLUMNS = ("open", "high", "low", "close", "adj_close", "volume")
MAX_LISTED = 20


@dataclass
class MarketRead:
    """The rows of a window and what reading them took: files, rows read, rows rejected."""

    prices: pd.DataFrame
    coverage: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    """What an analysis may ask for; each method returns rows with timestamps in [start, end)."""

    name: str

    def market_read(self, start: date, end: date) -> MarketRead:
        """Daily OHLCV rows (MARKET_COLUMNS + ORIGIN_COLUMNS, `date` as datetime64 at
        midnight UTC) in [start, end), with the coverage of the read."""
        ...

    def market_prices(self, start: date, end: date) -> pd.DataFrame:
        """The rows of `market_read`."""
        ...

    def access_logs(self, start: datetime, end: datetime) -> Iterator[LogChunk]:
        """Parsed access-log lines timed in [start, end) (aware datetimes), in streamed chunks,
        with the malformed lines counted (see core/access_logs.py)."""
        ...

    def customers(self) -> pd.DataFrame:
        """The customer base, one row per customer, canonical columns (core/customers.py)."""
        ...

    def customers_read(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The customer base and the coverage of the read (rows read, rows rejected)."""
        ...


def empty_market_frame() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype="float64") for column in MARKET_COLUMNS})
    frame["date"] = pd.Series(dtype="datetime64[ns]")
    frame["ticker"] = pd.Series(dtype="object")
    frame["file"] = pd.Series(dtype="object")
    frame["line"] = pd.Series(dtype="int64")
    return frame


def in_window(prices: pd.DataFrame, start: date, end: date) -> pd.DataFrame:
    """The rows dated in [start, end), sorted by date and ticker."""
    dates = prices["date"]
    rows = prices[(dates >= pd.Timestamp(start)) & (dates < pd.Timestamp(end))]
    return rows.sort_values(["date", "ticker"], kind="stable").reset_index(drop=True)


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

    def __init__(self, seed: int = 7, logs_dir: Path | None = None):
        self.seed = seed
        # Where the generated access logs are written for the files → store → window
        # path users run (`<data_dir>/logs`, as `make run` has it); None: parsed in memory.
        self.logs_dir = logs_dir

    def market_read(self, start: date, end: date) -> MarketRead:
        prices = empty_market_frame()
        if end > DEMO_EPOCH and start < end:
            last_year = (end - timedelta(days=1)).year
            frames = [_demo_series(self.seed, ticker, last_year) for ticker in DEMO_TICKERS]
            rows = pd.concat(frames, ignore_index=True)
            rows = rows.assign(adj_close=np.nan, file="demo", line=0)
            prices = in_window(rows[list(prices.columns)], start, end)
        coverage = {"source": "demo", "rows_read": len(prices), "rows_rejected": 0, "files": []}
        return MarketRead(prices, coverage)

    def market_prices(self, start: date, end: date) -> pd.DataFrame:
        return self.market_read(start, end).prices

    def access_logs(self, start: datetime, end: datetime) -> Iterator[LogChunk]:
        """Generated traffic with labelled incidents (core/access_logs_demo.py): written as
        daily files under `<logs_dir>/demo/`, ingested into the log store and the window
        read from it, as the files source does; parsed in memory without a `logs_dir`."""
        from agent_reports.core.access_logs import parse_blocks
        from agent_reports.core.access_logs_demo import demo_blocks, write_demo_logs
        from agent_reports.core.log_store import ingest_and_read

        if self.logs_dir is None:
            return parse_blocks(demo_blocks(self.seed, start, end), "demo", start, end)
        write_demo_logs(self.seed, self.logs_dir, start, end)
        return ingest_and_read(self.logs_dir, start, end)

    def customers(self) -> pd.DataFrame:
        """A generated telco-like base with a churn history (core/customers.py)."""
        from agent_reports.core.customers import demo_customers

        return demo_customers(self.seed).copy()

    def customers_read(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        customers = self.customers()
        return customers, {"source": "demo", "rows_read": len(customers), "rows_rejected": 0}


# -------------------------------------------------------------------------- files source

# Normalised header (lower case, letters and digits only: `<CLOSE>`, `Adj Close**`) → column.
_MARKET_HEADERS = {
    "date": "date",
    "datetime": "date",
    "timestamp": "date",
    "tradedate": "date",
    "ticker": "ticker",
    "symbol": "ticker",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "adjclose": "adj_close",
    "adjustedclose": "adj_close",
    "volume": "volume",
    "vol": "volume",
}
REQUIRED_MARKET = ("date", "open", "high", "low", "close", "volume")
# A file named after its ticker: `AAPL.csv`, `BRK-B.csv`, `aapl.us.txt` (Stooq), `^GSPC.csv`.
_TICKER_NAME = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9.^=_-]{0,23}$")
_STOOQ_DOWNLOAD = re.compile(r"^(.+)_([a-z]{2})_d$", re.IGNORECASE)  # aapl_us_d.csv
PARSER_VERSION = "market-csv-2"  # part of the cache key: bump when the parse changes


def market_header(names: list[str]) -> dict[str, str]:
    """Header name → canonical column, the first of each kind (extra columns ignored)."""
    mapping: dict[str, str] = {}
    for name in names:
        column = _MARKET_HEADERS.get(re.sub(r"[^a-z0-9]", "", name.lower()))
        if column and column not in mapping.values():
            mapping[name] = column
    return mapping


def _fits(names: list[str]) -> bool:
    return set(REQUIRED_MARKET) <= set(market_header(names).values())


def ticker_from_name(path: Path) -> str | None:
    """The ticker a per-ticker export is named after, upper-cased; None if the name is not one."""
    name = path.name
    while Path(name).suffix.lower() in (*csv_files.COMPRESSED_SUFFIXES, *csv_files.TABLE_SUFFIXES):
        name = name[: -len(Path(name).suffix)]
    stooq = _STOOQ_DOWNLOAD.match(name)
    if stooq:
        name = f"{stooq[1]}.{stooq[2]}"
    return name.upper() if _TICKER_NAME.match(name) else None


@dataclass
class PriceFile:
    """One parsed price file: its rows, what was set aside, and how it was read."""

    prices: pd.DataFrame  # MARKET_COLUMNS + `line`
    rejected: list[tuple[int, str]]  # (line, why) of rows that hold no prices
    dialect: str
    ticker_from: str  # "column" or "file name"
    adjusted: bool

    def summary(self, name: str) -> dict[str, Any]:
        dates = self.prices["date"]
        return {
            "file": name,
            "rows": len(self.prices) + len(self.rejected),
            "rejected": len(self.rejected),
            "dialect": self.dialect,
            "ticker_from": self.ticker_from,
            "adj_close": self.adjusted,
            "first_date": dates.min().date().isoformat() if len(dates) else None,
            "last_date": dates.max().date().isoformat() if len(dates) else None,
        }


def read_market_csv(path: Path) -> PriceFile:
    """One price file (plain or compressed), validated; raises InputError naming file, line,
    column.

    Columns are found by header name in any order and spelling (`Adj Close`, `<CLOSE>`),
    extra columns ignored; without a ticker column the file name is the ticker. A row
    whose prices are all blank or `null` (Yahoo's no-trade rows) is set aside and counted;
    a single blank price stays missing, which the blocking checks flag; a row of another
    width than the header, text where a number belongs or a bad date fails the read.
    """
    table = csv_files.read_table(path, _fits)
    mapping = market_header(table.header)
    missing = [c for c in REQUIRED_MARKET if c not in mapping.values()]
    if missing:
        raise InputError(
            path,
            1,
            missing[0],
            f"missing from the header (needs {', '.join(REQUIRED_MARKET)}, and ticker unless "
            f"the file is named after it); {csv_files.looks_like(table)}",
        )
    cells = {column: table.cells(name) for name, column in mapping.items()}
    lines = np.asarray(table.lines, dtype="int64")
    priced = [cells[c] for c in PRICE_COLUMNS if c in cells]
    no_prices = np.array(
        [all(c in csv_files.BLANK_CELLS for c in row) for row in zip(*priced, strict=True)],
        dtype=bool,
    ).reshape(len(lines))
    rejected = [(line, "empty row") for line in table.empty_rows]
    rejected += [(int(line), "no prices (blank or null)") for line in lines[no_prices]]
    if no_prices.any():
        cells = {column: values[~no_prices] for column, values in cells.items()}
        lines = lines[~no_prices]
    ticker_from = "column" if "ticker" in cells else "file name"
    if ticker_from == "file name":
        ticker = ticker_from_name(path)
        if ticker is None:
            raise InputError(
                path, 1, "ticker", "no ticker column, and the file name is not a ticker symbol"
            )
        cells["ticker"] = np.full(len(lines), ticker, dtype=object)
    table.decimal = csv_files.decimal_mark(table, list(mapping))
    frame = _typed_prices(path, cells, lines, table.decimal)
    adjusted = "adj_close" in mapping.values()
    return PriceFile(frame, sorted(rejected), table.dialect(), ticker_from, adjusted)


def _typed_prices(
    path: Path, cells: dict[str, np.ndarray], lines: np.ndarray, decimal: str
) -> pd.DataFrame:
    """Text cells → MARKET_COLUMNS + `line`; the first bad cell raises, naming its line."""
    blank = np.full(len(lines), "", dtype=object)
    frame = pd.DataFrame({"date": _dates(path, cells["date"], lines)})
    frame["ticker"] = cells["ticker"]
    _raise_at(path, lines, "ticker", cells["ticker"], cells["ticker"] == "", "expected a ticker")
    hint = " with a decimal comma" if decimal == "," else ""
    for column in PRICE_COLUMNS:
        text = cells.get(column, blank)
        values, bad = csv_files.numbers(text, decimal)
        _raise_at(path, lines, column, text, bad, f"expected a number{hint}")
        frame[column] = values
    frame["line"] = lines
    return frame


def _dates(path: Path, text: np.ndarray, lines: np.ndarray) -> pd.Series:
    dates = pd.Series(pd.to_datetime(text, format="%Y-%m-%d", errors="coerce"))
    odd = dates.isna().to_numpy()
    if odd.any():  # other spellings (20240305, 05.03.2024, a timestamp)
        respelled = csv_files.iso_date_text(pd.Series(text[odd], dtype=str))
        dates[odd] = pd.to_datetime(respelled, format="%Y-%m-%d", errors="coerce").to_numpy()
        bad = dates.isna().to_numpy()
        _raise_at(path, lines, "date", text, bad, "expected a date as YYYY-MM-DD")
    return dates.astype("datetime64[ns]")


def _raise_at(
    path: Path, lines: np.ndarray, column: str, text: np.ndarray, bad: np.ndarray, problem: str
) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(path, int(lines[first]), column, f"{problem}, got {text[first]!r}")


class FileSource:
    """Reads the drop folder: `<data_dir>/market/` (see docs/input-files.md), `logs/`,
    `customers/`; parsed CSV files are cached by identity under `cache_root`."""

    name = "files"

    def __init__(self, data_dir: Path, cache_root: Path | None = None):
        self.data_dir = data_dir
        self.cache_root = cache_root if cache_root is not None else csv_files.default_cache_root()

    def access_logs(self, start: datetime, end: datetime) -> Iterator[LogChunk]:
        """What is new under `<data_dir>/logs/` (plain or .gz, any names, each in its
        configured or detected format: docs/log-formats.md) ingested into the log store
        (core/log_store.py), then the window read from the store."""
        from agent_reports.core.log_store import ingest_and_read

        folder = self.data_dir / "logs"
        if not folder.is_dir():
            raise InputError(folder, None, None, "folder not found (AGENT_REPORTS_DATA_DIR/logs)")
        return ingest_and_read(folder, start, end)

    def customers(self) -> pd.DataFrame:
        """Every CSV under `<data_dir>/customers/`, one base."""
        return self.customers_read()[0]

    def customers_read(self) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The customer base and the coverage of its files (core/customers.py)."""
        from agent_reports.core.customers import read_customers_files

        return read_customers_files(self.data_dir / "customers", self.cache_root)

    def market_prices(self, start: date, end: date) -> pd.DataFrame:
        return self.market_read(start, end).prices

    def market_read(self, start: date, end: date) -> MarketRead:
        """Every price file under `<data_dir>/market/`, read or taken from the cache; a file
        that cannot be read fails the whole read, naming it (and any other bad ones)."""
        folder = self.data_dir / "market"
        found = csv_files.find_tables(folder, "AGENT_REPORTS_DATA_DIR/market")
        cache = csv_files.ParsedCache(self.cache_root, "market", PARSER_VERSION)
        prices, coverage = cache.folder(found, lambda: _read_market_folder(found, cache))
        coverage = coverage | {"cache": {"hits": cache.hits, "misses": cache.misses}}
        return MarketRead(in_window(prices, start, end), coverage)


def _read_market_folder(
    found: csv_files.Found, cache: csv_files.ParsedCache
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """All rows of the folder's price files, sorted, and the read's coverage."""
    read = csv_files.read_folder(found, read_market_csv, cache, "a price header")
    names = {path: csv_files.relative_name(path, found.folder) for path, _ in read.parsed}
    frames = [f.prices.assign(file=names[path]) for path, f in read.parsed]
    columns = list(empty_market_frame().columns)
    prices = pd.concat([empty_market_frame(), *frames], ignore_index=True)[columns]
    coverage = read.coverage([f.summary(names[p]) for p, f in read.parsed])
    coverage["rejected_examples"] = [
        f"{names[path]}:{line}: {why}" for path, f in read.parsed for line, why in f.rejected
    ][:MAX_LISTED]
    return prices.sort_values(["date", "ticker"], kind="stable"), coverage


def window_coverage(coverage: dict[str, Any], window: pd.DataFrame) -> dict[str, Any]:
    """The read's coverage with the rows of one window counted, per file and in all."""
    per_file = window["file"].value_counts().to_dict() if "file" in window else {}
    files = [f | {"rows_in_window": int(per_file.get(f["file"], 0))} for f in coverage["files"]]
    return coverage | {"rows_in_window": len(window), "files": files}
