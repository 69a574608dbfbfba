"""The customer base behind the churn analysis: one table, three ways to get it.

- a SQL table read through SQLAlchemy (`AGENT_REPORTS_CUSTOMERS_URL`, PostgreSQL or
  SQLite; table `AGENT_REPORTS_CUSTOMERS_TABLE`, default `customers`);
- CSV files in the drop folder's `customers/` (any dialect core/csv_files.py reads);
- a deterministic demo generator with a churn history and a known signal.

All three end in the same canonical frame (`CANONICAL_COLUMNS`, one row per customer,
sorted by id). The layout is the widely used telco churn one; header spellings are
matched loosely (`customerID`, `customer_id`, `Customer ID` are one column) and values
too (`Churn` Yes/No/1/0/true/false; a blank `TotalCharges` stays missing and is imputed
by the analysis). Anything that cannot be read raises `InputError` naming the file and
line (CSV) or the table and customer id (SQL), and the column. Columns outside the
schema (free-text notes...) are dropped here: they never reach a model or a prompt.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agent_reports.core import csv_files
from agent_reports.core.sources import InputError, Source

# Yes/No-like service and profile columns: optional, blank reads "Unknown".
CATEGORICAL_COLUMNS = (
    "gender",
    "senior_citizen",
    "partner",
    "dependents",
    "phone_service",
    "multiple_lines",
    "internet_service",
    "online_security",
    "online_backup",
    "device_protection",
    "tech_support",
    "streaming_tv",
    "streaming_movies",
    "paperless_billing",
    "payment_method",
)
CANONICAL_COLUMNS = (
    "customer_id",
    "signup_date",
    "churn_date",
    "tenure",
    "contract",
    "monthly_charges",
    "total_charges",
    "churned",
    *CATEGORICAL_COLUMNS,
)

# Normalised header (lower case, letters and digits only) → canonical column.
_ALIASES = {
    "customerid": "customer_id",
    "custid": "customer_id",
    "customer": "customer_id",
    "tenure": "tenure",
    "tenuremonths": "tenure",
    "tenureinmonths": "tenure",
    "contract": "contract",
    "contracttype": "contract",
    "monthlycharges": "monthly_charges",
    "monthlycharge": "monthly_charges",
    "totalcharges": "total_charges",
    "churn": "churned",
    "churned": "churned",
    "churnlabel": "churned",
    "churnflag": "churned",
    "ischurned": "churned",
    "signupdate": "signup_date",
    "startdate": "signup_date",
    "churndate": "churn_date",
    "enddate": "churn_date",
    "senior": "senior_citizen",
} | {column.replace("_", ""): column for column in CATEGORICAL_COLUMNS}

FLAG_COLUMNS = ("senior_citizen", "partner", "dependents", "phone_service", "paperless_billing")
_FLAG_SPELLINGS = {"yes": "Yes", "no": "No", "1": "Yes", "0": "No", "true": "Yes", "false": "No"}
_TRUE = {"yes", "y", "true", "t", "1", "1.0"}
_FALSE = {"no", "n", "false", "f", "0", "0.0"}


def header_key(name: str) -> str:
    """`customerID`, `customer_id` and `Customer ID` all become `customerid`."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


# ------------------------------------------------------------------------ normalisation


class _Located:
    """Names a row for error messages: `file:line` for CSV, the customer id for SQL."""

    def __init__(self, origin: str, lines: list[int] | None, ids: pd.Series):
        self.origin, self.lines, self.ids = origin, lines, ids

    def error(self, position: int, column: str, problem: str) -> InputError:
        if self.lines is not None:
            return InputError(self.origin, self.lines[position], column, problem)
        who = self.ids.iloc[position] or f"#{position + 1}"
        return InputError(self.origin, None, column, f"customer {who!r}: {problem}")


def _map_headers(headers: Iterable[str], origin: str) -> dict[str, str]:
    """Original header → canonical column, refusing two headers for one column."""
    mapping: dict[str, str] = {}
    for header in headers:
        canonical = _ALIASES.get(header_key(header))
        if canonical is None:
            continue
        if canonical in mapping.values():
            first = next(h for h, c in mapping.items() if c == canonical)
            raise InputError(origin, 1, header, f"duplicates column {first!r} (both {canonical})")
        mapping[header] = canonical
    missing = [
        c for c in ("customer_id", "contract", "monthly_charges") if c not in mapping.values()
    ]
    if "tenure" not in mapping.values() and "signup_date" not in mapping.values():
        missing.append("tenure")
    if "churned" not in mapping.values() and "churn_date" not in mapping.values():
        missing.append("churned")
    if missing:
        raise InputError(
            origin, 1, missing[0], f"missing (needed: {', '.join(missing)}); see the README schema"
        )
    return mapping


def _raise_first(bad: pd.Series, where: _Located, column: str, raw: pd.Series, what: str) -> None:
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise where.error(position, column, f"{what}, got {raw.iloc[position]!r}")


def _numbers(
    raw: pd.Series, where: _Located, column: str, required: bool, decimal: str = "."
) -> pd.Series:
    raw = csv_files.blank_nulls(raw)
    values = csv_files.parse_numbers(raw, decimal)
    hint = " with a decimal comma" if decimal == "," else ""
    _raise_first(values.isna() & (raw != ""), where, column, raw, f"expected a number{hint}")
    _raise_first(values < 0, where, column, raw, "expected a number ≥ 0")
    if required:
        _raise_first(raw == "", where, column, raw, "a value is required")
    return values.astype("float64")


def _flags(raw: pd.Series, where: _Located, column: str) -> pd.Series:
    lowered = raw.str.lower()
    known = lowered.isin(_TRUE | _FALSE) | (lowered == "")
    _raise_first(~known, where, column, raw, "expected Yes/No, 1/0 or true/false")
    return lowered.map(lambda v: True if v in _TRUE else (False if v in _FALSE else None))


def _dates(raw: pd.Series, where: _Located, column: str) -> pd.Series:
    raw = csv_files.blank_nulls(raw)
    text = csv_files.iso_date_text(raw, keep_time=True)
    values = pd.to_datetime(text.where(text != ""), errors="coerce", format="ISO8601", utc=True)
    _raise_first(values.isna() & (raw != ""), where, column, raw, "expected a date as YYYY-MM-DD")
    return values.dt.tz_localize(None).dt.normalize().astype("datetime64[ns]")


def _categories(raw: pd.Series, flag_like: bool = False) -> pd.Series:
    """Stripped text with runs of spaces collapsed; yes/no spelled one way; blank: Unknown.

    In `flag_like` columns (SeniorCitizen is 0/1 in the telco set) 1/0 and true/false
    read as Yes/No too.
    """
    text = raw.str.replace(r"\s+", " ", regex=True).str.strip()
    spellings = _FLAG_SPELLINGS if flag_like else {"yes": "Yes", "no": "No"}
    text = text.str.lower().map(spellings).fillna(text)
    return text.mask(text == "", "Unknown")


def normalise(
    raw: pd.DataFrame, origin: str, lines: list[int] | None = None, decimal: str = "."
) -> pd.DataFrame:
    """Raw text cells (blank = missing) under any known header spellings → canonical frame;
    numbers written with the `decimal` mark."""
    mapping = _map_headers(raw.columns, origin)
    text = raw[list(mapping)].rename(columns=mapping).fillna("").astype(str)
    text = text.apply(lambda column: column.str.strip())
    where = _Located(origin, lines, text["customer_id"])
    frame = pd.DataFrame(index=text.index)
    frame["customer_id"] = text["customer_id"]
    _raise_first(text["customer_id"] == "", where, "customer_id", text["customer_id"], "no id")
    for column in ("signup_date", "churn_date"):
        if column in text:
            frame[column] = _dates(text[column], where, column)
    if "tenure" in text:
        frame["tenure"] = _numbers(text["tenure"], where, "tenure", True, decimal)
    frame["contract"] = _categories(text["contract"])
    _raise_first(text["contract"] == "", where, "contract", text["contract"], "a value is required")
    frame["monthly_charges"] = _numbers(
        text["monthly_charges"], where, "monthly_charges", True, decimal
    )
    total = text.get("total_charges", pd.Series("", index=text.index))
    frame["total_charges"] = _numbers(total, where, "total_charges", False, decimal)
    frame["churned"] = _churned(text, where, frame)
    for column in CATEGORICAL_COLUMNS:
        if column in text:
            frame[column] = _categories(text[column], column in FLAG_COLUMNS)
    return frame


def _churned(text: pd.DataFrame, where: _Located, frame: pd.DataFrame) -> pd.Series:
    """The flag, or a churn date when the flag is blank or absent; one of them must say."""
    has_date = frame["churn_date"].notna() if "churn_date" in frame else None
    if "churned" not in text:
        return has_date.astype(bool)
    flags = _flags(text["churned"], where, "churned")
    if has_date is not None:  # a churn date means churned; a blank flag without one, active
        flags = flags.where(~has_date, True).where(flags.notna() | has_date, False)
    _raise_first(flags.isna(), where, "churned", text["churned"], "a value is required")
    return flags.astype(bool)


def combine(frames: list[tuple[pd.DataFrame, list[str]]]) -> pd.DataFrame:
    """Concatenate normalised frames, refusing a customer id seen twice; sort by id."""
    if not frames:
        return empty_customers()
    customers = pd.concat([f for f, _ in frames], ignore_index=True)
    places = [place for _, where in frames for place in where]
    again = customers["customer_id"].duplicated()
    if again.any():
        second = int(np.flatnonzero(again.to_numpy())[0])
        customer = customers.at[second, "customer_id"]
        first = int(np.flatnonzero((customers["customer_id"] == customer).to_numpy())[0])
        raise InputError(
            places[second],
            None,
            "customer_id",
            f"customer {customer!r} appears again (first at {places[first]})",
        )
    return customers.sort_values("customer_id", kind="stable").reset_index(drop=True)


def empty_customers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.Series(dtype="object"),
            "tenure": pd.Series(dtype="float64"),
            "contract": pd.Series(dtype="object"),
            "monthly_charges": pd.Series(dtype="float64"),
            "total_charges": pd.Series(dtype="float64"),
            "churned": pd.Series(dtype="bool"),
        }
    )


# -------------------------------------------------------------------------------- CSV files

PARSER_VERSION = "customers-csv-2"  # part of the cache key: bump when the parse changes


@dataclass
class CustomerFile:
    """One parsed customer file: the canonical frame, each row's `file:line`, the rows set
    aside (line, why) and how the file was read."""

    frame: pd.DataFrame
    places: list[str]
    rejected: list[tuple[int, str]]
    dialect: str

    def summary(self, name: str) -> dict[str, Any]:
        return {
            "file": name,
            "rows": len(self.frame) + len(self.rejected),
            "rejected": len(self.rejected),
            "dialect": self.dialect,
        }


def _header_fits(names: list[str]) -> bool:
    try:
        _map_headers(names, "")
    except InputError:
        return False
    return True


def read_customers_file(path: Path) -> CustomerFile:
    """One CSV in any dialect csv_files reads (comma or semicolon, decimal comma, UTF-16...)."""
    table = csv_files.read_table(path, _header_fits)
    try:
        mapping = _map_headers(table.header, str(path))
    except InputError as error:
        problem = f"{error.problem}; {csv_files.looks_like(table)}"
        raise InputError(path, 1, error.column, problem) from None
    raw = pd.DataFrame({name: table.column(name) for name in mapping}, index=table.lines)
    numeric = [h for h, c in mapping.items() if c in ("tenure", "monthly_charges", "total_charges")]
    table.decimal = csv_files.decimal_mark(table, numeric)
    frame = normalise(raw.reset_index(drop=True), str(path), table.lines, table.decimal)
    rejected = [(line, "empty row") for line in table.empty_rows]
    places = [f"{path}:{line}" for line in table.lines]
    return CustomerFile(frame, places, rejected, table.dialect())


def read_customers_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """One CSV: the canonical frame and each row's `file:line`."""
    parsed = read_customers_file(path)
    return parsed.frame, parsed.places


def read_customers_files(
    folder: Path, cache_root: Path | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every CSV under `folder` (subfolders, any case, compressed or not), one customer base,
    with the coverage of the read; parsed files are cached by identity under `cache_root`."""
    found = csv_files.find_tables(folder, "AGENT_REPORTS_DATA_DIR/customers")
    cache = csv_files.ParsedCache(cache_root, "customers", PARSER_VERSION)
    customers, coverage = cache.folder(found, lambda: _read_customer_files(found, cache))
    return customers, coverage | {"cache": {"hits": cache.hits, "misses": cache.misses}}


def _read_customer_files(
    found: csv_files.Found, cache: csv_files.ParsedCache
) -> tuple[pd.DataFrame, dict[str, Any]]:
    read = csv_files.read_folder(found, read_customers_file, cache, "a customer header")
    names = [csv_files.relative_name(path, found.folder) for path, _ in read.parsed]
    coverage = read.coverage([f.summary(n) for n, (_, f) in zip(names, read.parsed, strict=True)])
    coverage["rejected_examples"] = [
        f"{name}:{line}: {why}"
        for name, (_, f) in zip(names, read.parsed, strict=True)
        for line, why in f.rejected
    ][:20]
    return combine([(f.frame, f.places) for _, f in read.parsed]), coverage


def read_customers_folder(folder: Path) -> pd.DataFrame:
    """Every CSV under `folder`, one customer base (no cache)."""
    return read_customers_files(folder)[0]


# -------------------------------------------------------------------------------- SQL table


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    import sqlalchemy as sa

    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def read_customers_table(url: str, table: str = "customers") -> pd.DataFrame:
    """The whole table through SQLAlchemy (PostgreSQL, SQLite...), normalised."""
    import sqlalchemy as sa

    origin = f"{safe_url(url)} table {table}"
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as error:
        raise InputError(origin, None, None, f"bad AGENT_REPORTS_CUSTOMERS_URL ({error})") from None
    try:
        with engine.connect() as connection:
            reflected = sa.Table(table, sa.MetaData(), autoload_with=connection)
            rows = connection.execute(sa.select(reflected)).all()
            columns = [column.name for column in reflected.columns]
    except sa.exc.NoSuchTableError:
        raise InputError(origin, None, None, "the table does not exist") from None
    except sa.exc.SQLAlchemyError as error:
        problem = type(getattr(error, "orig", None) or error).__name__
        raise InputError(origin, None, None, f"cannot be read ({problem})") from None
    finally:
        engine.dispose()
    raw = pd.DataFrame([[_cell(v) for v in row] for row in rows], columns=columns, dtype=object)
    frame = normalise(raw, origin)
    return combine([(frame, [f"{origin} customer {cid!r}" for cid in frame["customer_id"]])])


def _cell(value: object) -> str:
    """A database value as the text a CSV would hold ('' for NULL)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# ------------------------------------------------------------------------------ demo source

DEMO_START = date(2018, 1, 1)
DEMO_END = date(2030, 1, 1)
DEMO_SIGNUPS_PER_WEEK = 10
_AVG_MONTH_DAYS = 30.4375
_CONTRACTS = {"Month-to-month": 0.55, "One year": 0.21, "Two year": 0.24}
_INTERNET = {"Fiber optic": 0.44, "DSL": 0.34, "No": 0.22}
_PAYMENT = {
    "Electronic check": 0.34,
    "Mailed check": 0.23,
    "Bank transfer (automatic)": 0.22,
    "Credit card (automatic)": 0.21,
}
# Log-odds of churning in a given month; the signal the model has to find.
DEMO_SIGNAL = {
    "base": -5.6,
    "Month-to-month": 1.9,
    "One year": 0.7,
    "Fiber optic": 0.6,
    "Electronic check": 0.5,
    "senior": 0.3,
    "no_tech_support": 0.4,
    "log_tenure": -0.35,
}


# From DEMO_WAVES_FROM on, a churn wave every DEMO_WAVE_WEEKS weeks (a price change, say):
# that week DEMO_WAVE_SHARE of the active month-to-month customers leave, so every recent
# report's trend shows a spike.
DEMO_WAVES_FROM = date(2023, 1, 2)
DEMO_WAVE_WEEKS = 4
DEMO_WAVE_SHARE = 0.035


def _pick(rng: np.random.Generator, options: dict[str, float], n: int) -> np.ndarray:
    return rng.choice(list(options), size=n, p=list(options.values()))


@functools.cache
def demo_customers(seed: int = 7) -> pd.DataFrame:
    """A telco-like customer base signed up 2018–2029 with churn dates from a known hazard.

    Generated whole from the seed, so every week reads the same customers; the churn
    analysis takes the view as of a week's end (signed up before it, churned before it).
    """
    rng = np.random.default_rng([seed, 0xC4])
    weeks = (DEMO_END - DEMO_START).days // 7
    signups_per_week = rng.poisson(DEMO_SIGNUPS_PER_WEEK, weeks)
    n = int(signups_per_week.sum())
    week_of = np.repeat(np.arange(weeks), signups_per_week)
    signup = pd.Timestamp(DEMO_START) + pd.to_timedelta(week_of * 7 + rng.integers(0, 7, n), "D")
    contract = _pick(rng, _CONTRACTS, n)
    internet = _pick(rng, _INTERNET, n)
    payment = _pick(rng, _PAYMENT, n)
    has_net = internet != "No"
    senior = rng.random(n) < 0.16
    phone = rng.random(n) < 0.9

    def addon(p: float) -> np.ndarray:
        return np.where(has_net, np.where(rng.random(n) < p, "Yes", "No"), "No internet service")

    extras = {
        "online_security": addon(0.37),
        "online_backup": addon(0.44),
        "device_protection": addon(0.44),
        "tech_support": addon(0.37),
        "streaming_tv": addon(0.49),
        "streaming_movies": addon(0.5),
    }
    base_charge = np.select([internet == "Fiber optic", internet == "DSL"], [70.0, 45.0], 20.0)
    addons = sum((v == "Yes").astype(float) for v in extras.values())
    monthly = np.round(base_charge + 6 * addons + 5 * phone + rng.normal(0, 3, n), 2).clip(18)
    churn_month = _churn_months(rng, contract, internet, payment, senior, extras["tech_support"])
    days_kept = np.floor(churn_month * _AVG_MONTH_DAYS).astype(int) + rng.integers(0, 28, n)
    churn = signup + pd.to_timedelta(days_kept, "D")
    churn = _churn_waves(np.random.default_rng([seed, 0xC4, 1]), signup, churn, contract)
    churn = pd.Series(churn).where(churn < pd.Timestamp(DEMO_END))
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{seed % 100:02d}-{i:06d}" for i in range(n)],
            "signup_date": signup.astype("datetime64[ns]"),
            "churn_date": churn.astype("datetime64[ns]"),
            "contract": contract,
            "monthly_charges": monthly,
            "gender": np.where(rng.random(n) < 0.5, "Female", "Male"),
            "senior_citizen": np.where(senior, "Yes", "No"),
            "partner": np.where(rng.random(n) < 0.48, "Yes", "No"),
            "dependents": np.where(rng.random(n) < 0.3, "Yes", "No"),
            "phone_service": np.where(phone, "Yes", "No"),
            "internet_service": internet,
            **extras,
            "paperless_billing": np.where(rng.random(n) < 0.59, "Yes", "No"),
            "payment_method": payment,
        }
    )
    frame["churned"] = frame["churn_date"].notna()
    end = frame["churn_date"].fillna(pd.Timestamp(DEMO_END))
    frame["tenure"] = ((end - frame["signup_date"]).dt.days // _AVG_MONTH_DAYS).astype(float)
    frame["total_charges"] = (frame["tenure"] * frame["monthly_charges"]).round(2)
    return frame[[c for c in CANONICAL_COLUMNS if c in frame]]


def _churn_waves(
    rng: np.random.Generator,
    signup: pd.DatetimeIndex,
    churn: pd.DatetimeIndex,
    contract: np.ndarray,
) -> np.ndarray:
    """The churn dates with a wave every DEMO_WAVE_WEEKS-th week (Monday to Sunday, as the
    churn partitions): DEMO_WAVE_SHARE of the month-to-month customers active at its start
    leave during it. A stream of its own, so the rest of the base stays as it was."""
    signup, churn = signup.to_numpy(), churn.to_numpy().copy()
    monthly = contract == "Month-to-month"
    weeks = (DEMO_END - DEMO_START).days // 7
    first = (DEMO_WAVES_FROM - DEMO_START).days // 7 + DEMO_WAVE_WEEKS - 1
    for week in range(first, weeks, DEMO_WAVE_WEEKS):
        start = np.datetime64(DEMO_START) + np.timedelta64(7 * week, "D")
        end = start + np.timedelta64(7, "D")
        active = monthly & (signup < start) & (churn >= end)
        leave = active & (rng.random(len(churn)) < DEMO_WAVE_SHARE)
        days = rng.integers(0, 7, len(churn)).astype("timedelta64[D]")
        churn = np.where(leave, start + days, churn)
    return churn


def _churn_months(
    rng: np.random.Generator,
    contract: np.ndarray,
    internet: np.ndarray,
    payment: np.ndarray,
    senior: np.ndarray,
    tech_support: np.ndarray,
) -> np.ndarray:
    """The month of life in which each customer leaves (a large number: never, here)."""
    s = DEMO_SIGNAL
    logit = (
        s["base"]
        + s["Month-to-month"] * (contract == "Month-to-month")
        + s["One year"] * (contract == "One year")
        + s["Fiber optic"] * (internet == "Fiber optic")
        + s["Electronic check"] * (payment == "Electronic check")
        + s["senior"] * senior
        + s["no_tech_support"] * (tech_support == "No")
    )
    months = np.arange(12 * 12)
    hazard = 1 / (1 + np.exp(-(logit[:, None] + s["log_tenure"] * np.log1p(months)[None, :])))
    leaves = rng.random(hazard.shape) < hazard
    return np.where(leaves.any(axis=1), leaves.argmax(axis=1), 1_000).astype(float)


# ---------------------------------------------------------------------------- which source


def load_customers(source: Source) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """The SQL table when AGENT_REPORTS_CUSTOMERS_URL is set, else the source's customers;
    with a name for the origin (the URL's password hidden) and the read's coverage. Read
    at run time."""
    from agent_reports.core import settings

    url = settings.env("AGENT_REPORTS_CUSTOMERS_URL")
    if url:
        table = settings.env("AGENT_REPORTS_CUSTOMERS_TABLE", "customers")
        origin = f"sql: {safe_url(url)} table {table}"
        customers = read_customers_table(url, table)
        coverage = {"source": origin, "rows_read": len(customers), "rows_rejected": 0}
        return customers, origin, coverage
    customers, coverage = source.customers_read()
    return customers, source.name, coverage
