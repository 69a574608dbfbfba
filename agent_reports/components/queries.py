"""The SQL of a declared analysis, run: the window's input rows (SQLAlchemy or DuckDB), and
the metric and check queries (DuckDB over those rows as the table `input`).

The window reaches every query as bound parameters (spec.WINDOW_PARAMETERS), never as
formatted text, and only from the partition: a re-run of a window reads the same rows.
Results are made JSON-safe and put in a stable order, so they fingerprint the same way.
"""

from __future__ import annotations

import math
import re
import sqlite3
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from dagster import TimeWindow

from agent_reports.components.spec import WINDOW_PARAMETERS, DuckDBInput, FileTable, SqlInput
from agent_reports.core import settings

_DUCKDB_PARAMETER = re.compile(r"\$([a-z_][a-z0-9_]*)")
_SQLALCHEMY_PARAMETER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


class QueryError(RuntimeError):
    """A declared query failed; the message names the analysis and the field."""


def window_parameters(key: str, window: TimeWindow) -> dict[str, str]:
    """The bound parameters of a window: UTC instants as 'YYYY-MM-DD HH:MM:SS' (they compare
    right with SQLite text, PostgreSQL and DuckDB timestamps), the local dates, the key."""
    start, end = (moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") for moment in window)
    return {
        "window_start": start,
        "window_end": end,
        "window_start_date": window.start.date().isoformat(),
        "window_end_date": window.end.date().isoformat(),
        "partition_key": key,
    }


def _bound(sql: str, pattern: re.Pattern, params: dict[str, str], where: str) -> dict[str, str]:
    """The parameters `sql` names (DuckDB and SQLAlchemy refuse unused ones); an unknown
    name fails here, naming it."""
    names = set(pattern.findall(sql))
    unknown = sorted(names - set(WINDOW_PARAMETERS))
    if unknown:
        raise QueryError(f"{where}: unknown parameter(s) {unknown}; known: {WINDOW_PARAMETERS}")
    return {name: params[name] for name in names}


def read_sql_input(
    spec: SqlInput, folder: Path, params: dict[str, str], where: str
) -> pd.DataFrame:
    """The window's rows from the database at $<url_env> (else the demo SQLite file)."""
    url = settings.env(spec.url_env)
    if not url:
        if spec.sqlite_file is None:
            raise QueryError(f"{where}: {spec.url_env} is not set and no sqlite_file is declared")
        path = settings.data_dir() / spec.sqlite_file
        if not path.exists() and spec.demo_sql_file:
            create_demo_sqlite(path, (folder / spec.demo_sql_file).read_text())
        if not path.exists():
            raise QueryError(f"{where}: {spec.url_env} is not set and {path} does not exist")
        url = f"sqlite:///{path}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            bound = _bound(spec.query, _SQLALCHEMY_PARAMETER, params, where)
            result = connection.execute(sa.text(spec.query), bound)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    except sa.exc.SQLAlchemyError as error:
        raise QueryError(f"{where}: {type(error).__name__}: {error.args[0]}") from None
    finally:
        engine.dispose()


def create_demo_sqlite(path: Path, script: str) -> None:
    """Run the demo script into a new SQLite file, then move it into place: two runs that
    both find it missing each build the same file, and a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with sqlite3.connect(partial) as connection:
            connection.executescript(script)
        connection.close()
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _file_relation(connection: duckdb.DuckDBPyConnection, table: FileTable, window: TimeWindow):
    """A DuckDB relation of one declared table (paths relative to the data dir)."""
    if table.access_logs is not None:
        return connection.from_arrow(access_log_table(table.access_logs, window))
    path = str(settings.data_dir() / (table.parquet or table.csv or ""))
    if table.parquet is not None:
        return connection.read_parquet(path)
    return connection.read_csv(path)


def access_log_table(folder: str, window: TimeWindow) -> pa.Table:
    """The window's parsed access-log lines: ingested once into the log store, read by hour."""
    from agent_reports.core.log_store import RECORD_SCHEMA, ingest_and_read

    tables = [chunk.records for chunk in ingest_and_read(settings.data_dir() / folder, *window)]
    return pa.concat_tables(tables) if tables else RECORD_SCHEMA.empty_table()


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB on one thread: parallel aggregation may sum floats in another
    order and change the last digits, and a report must come out the same bytes."""
    connection = duckdb.connect(":memory:")
    connection.execute("SET threads = 1")
    return connection


def read_duckdb_input(
    spec: DuckDBInput, window: TimeWindow, params: dict[str, str], where: str
) -> pd.DataFrame:
    with connect() as connection:
        for name, table in spec.tables.items():
            _file_relation(connection, table, window).create_view(name)
        return run_duckdb(connection, spec.query, params, where).df()


def run_duckdb(
    connection: duckdb.DuckDBPyConnection, sql: str, params: dict[str, str], where: str
) -> duckdb.DuckDBPyRelation:
    try:
        return connection.sql(sql, params=_bound(sql, _DUCKDB_PARAMETER, params, where) or None)
    except duckdb.Error as error:
        raise QueryError(f"{where}: {type(error).__name__}: {error}") from None


def query_rows(
    frame: pd.DataFrame, sql: str, params: dict[str, str], where: str
) -> tuple[list[str], list[dict]]:
    """`sql` over `frame` as the table `input`: its columns and JSON-safe rows, in the
    query's order when it has an ORDER BY, else sorted (a GROUP BY alone gives no stable
    order)."""
    with connect() as connection:
        connection.register("input", frame)
        relation = run_duckdb(connection, sql, params, where)
        columns = relation.columns
        rows = [dict(zip(columns, map(json_value, r), strict=True)) for r in relation.fetchall()]
    if not re.search(r"\border\s+by\b", sql, re.IGNORECASE):
        rows.sort(key=lambda row: [(v is None, str(type(v)), v) for v in row.values()])
    return columns, rows


def json_value(value: Any) -> Any:
    """A cell as JSON has it: dates as ISO text, decimals and numpy scalars as numbers,
    NaN and infinities as null."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    return value
