"""The ingest-once store for access logs: each raw line parsed once, kept in Parquet by UTC hour.

An analysis asks for a window; reading it from the raw files would cost the whole
history on every run. Instead `LogStore.ingest` parses what is new under the logs folder
and appends it, hour by hour, to Parquet files under the state dir, and `LogStore.read`
returns only the hours asked for. See docs/log-store.md.

Raw files are tracked as *contents* (a stream of log lines, with how many bytes and
lines of it were consumed) and *files* (device + inode, size, mtime: where a content is
on disk now). The first bytes of a content (gunzipped) identify it across a rename and
a compression, so after logrotate (`access.log` -> `access.log.1` -> `access.log.2.gz`,
or `access.log-YYYYMMDD.gz`) nothing is read twice; a grown file is read from its offset;
a truncated file, or another file at the same path, is a new content read from its start.

Crash safety: the hour files of a step are written first, under names no reader knows,
then one SQLite transaction records them together with the new offsets. A crash before
the commit leaves unknown files, deleted by the next ingest, which reads the same bytes
again; a crash after it leaves nothing to redo. One ingest at a time (a file lock);
readers never wait: they read the committed list of hour files.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import struct
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from agent_reports.core.access_logs import (
    MALFORMED_SCHEMA,
    RECORD_SCHEMA,
    FormatChange,
    LogChunk,
    LogParser,
    ParsedBlock,
    line_blocks,
    log_files,
    open_log,
)
from agent_reports.core.log_formats import FormatConfig, LogFormat
from agent_reports.core.sources import InputError

# Stored records: the parser's columns plus where each line came from.
FILED_SCHEMA = RECORD_SCHEMA.append(pa.field("file", pa.string()))
NUMBERED_SCHEMA = FILED_SCHEMA.append(pa.field("line", pa.int64()))
HEAD_BYTES = 4096  # the first bytes of a content that identify it
COMMIT_BYTES = 64 * 1024 * 1024  # raw bytes parsed between two commits of one file
READ_HOURS = 24  # hours per chunk a read yields: fewer, larger tables for the consumer
READ_THREADS = 4  # threads reading Parquet parts
MAX_PARTS_PER_HOUR = 8  # more parts than this in an hour are merged into one
RETIRED_SECONDS = 3600  # merged parts stay on disk this long, for readers still on them
LOCK_TIMEOUT_SECONDS = 900
GZIP_MAGIC = b"\x1f\x8b"
NO_HOUR = -1  # the hour of malformed lines with no time at all (a file with no good line)

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS contents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,          -- where it was last read
    head_len INTEGER NOT NULL,   -- bytes hashed (min(HEAD_BYTES, consumed))
    head_hash TEXT NOT NULL,
    consumed INTEGER NOT NULL,   -- bytes of the (gunzipped) stream parsed, whole lines
    lines INTEGER NOT NULL,      -- lines parsed
    last_time INTEGER,           -- time of the last good line, for malformed lines after it
    problem TEXT,                -- why the last read broke off, if it did
    log_format TEXT,             -- LogFormat.spec in use at the end of the last read
    configured TEXT              -- LogFormat.spec configured for it then (NULL: detected)
);
CREATE INDEX IF NOT EXISTS contents_head ON contents (head_len, head_hash);
CREATE TABLE IF NOT EXISTS files (
    dev INTEGER NOT NULL, inode INTEGER NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    content_id INTEGER NOT NULL REFERENCES contents (id),
    PRIMARY KEY (dev, inode)
);
CREATE TABLE IF NOT EXISTS parts (
    name TEXT PRIMARY KEY,       -- relative to the store's root
    kind TEXT NOT NULL,          -- records | malformed
    hour INTEGER NOT NULL,       -- epoch hour, UTC; NO_HOUR for malformed lines with no time
    rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,      -- size of the Parquet file
    committed_at REAL NOT NULL   -- wall-clock time of the ingest that added it
);
CREATE INDEX IF NOT EXISTS parts_hour ON parts (hour);
CREATE INDEX IF NOT EXISTS parts_committed ON parts (committed_at);
CREATE TABLE IF NOT EXISTS hour_sources (
    hour INTEGER NOT NULL, content_id INTEGER NOT NULL, PRIMARY KEY (hour, content_id)
);
CREATE TABLE IF NOT EXISTS format_changes (
    content_id INTEGER NOT NULL, file TEXT NOT NULL, line INTEGER NOT NULL,
    time INTEGER, previous TEXT NOT NULL, new TEXT NOT NULL,
    PRIMARY KEY (content_id, line)
);
CREATE INDEX IF NOT EXISTS format_changes_time ON format_changes (time);
CREATE TABLE IF NOT EXISTS retired (name TEXT PRIMARY KEY, retired_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Columns added to `contents` since the first stores: added to an older store on open.
MIGRATIONS = {"log_format": "TEXT", "configured": "TEXT"}
_SELECT_CONTENT = (
    "SELECT id, path, head_len, head_hash, consumed, lines, last_time, problem, log_format, "
    "configured FROM contents "
)
_LOAD_BY = {
    "id": _SELECT_CONTENT + "WHERE id = ?",
    "head": _SELECT_CONTENT + "WHERE head_len = ? AND head_hash = ? ORDER BY consumed DESC LIMIT 1",
}


@dataclass(frozen=True)
class HourStats:
    """What the store holds for one UTC hour (shown as the store asset's metadata)."""

    hour: int
    lines: int
    malformed: int
    bytes: int
    files: int
    parts: int
    last_committed_at: float


@dataclass
class IngestSummary:
    """What one ingest did: files looked at, read, skipped, and the hours it added lines to."""

    files_seen: int = 0
    files_read: int = 0
    lines: int = 0
    malformed: int = 0
    bytes_read: int = 0
    hours: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


@dataclass
class _Content:
    """A row of `contents` while it is being read."""

    id: int
    path: str
    head_len: int
    head_hash: str
    consumed: int
    lines: int
    last_time: int | None
    problem: str | None = None
    log_format: str | None = None  # LogFormat.spec in use when the last read ended
    configured: str | None = None  # LogFormat.spec configured for it at that read

    def format_for(self, configured: LogFormat | None) -> LogFormat | None:
        """The format to read new bytes in: the one in use, unless the configured format
        changed since (a corrected config applies); else the configured one; else None
        (detect). So appended lines are not detected again and a change is not re-found."""
        spec = configured.spec if configured else None
        if self.log_format and (spec == self.configured or configured is None):
            return LogFormat.from_spec(self.log_format)
        return configured


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _head(path: Path) -> tuple[bytes, bool]:
    """The first HEAD_BYTES of the file's lines (gunzipped), and whether it is compressed."""
    with open_log(path) as stream:
        head = b""
        try:
            while len(head) < HEAD_BYTES and (piece := stream.read(HEAD_BYTES - len(head))):
                head += piece
        except (EOFError, OSError):
            pass  # a broken-off .gz: identify it by what can be read
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    return head, compressed


def _gzip_size(path: Path) -> int | None:
    """The uncompressed size modulo 2**32 from a gzip trailer (ISIZE), or None if too short."""
    with open(path, "rb") as raw:
        raw.seek(0, os.SEEK_END)
        if raw.tell() < 18:
            return None
        raw.seek(-4, os.SEEK_END)
        return struct.unpack("<I", raw.read(4))[0]


def _skip(stream: BinaryIO, count: int, compressed: bool) -> None:
    """Move past the first `count` bytes of the stream (a gzip stream is read through)."""
    if not compressed:
        stream.seek(count)
        return
    while count > 0:
        piece = stream.read(min(count, 1024 * 1024))
        if not piece:
            break
        count -= len(piece)


def _whole_lines(blocks: Iterable[bytes], final: bool) -> Iterator[bytes]:
    """The blocks, with a last line that has no newline held back unless the file is final
    (a compressed file is; a plain one may be mid-write: that line is read next time)."""
    if final:
        yield from blocks
        return
    previous = None
    for block in blocks:
        if previous is not None:
            yield previous
        previous = block
    if previous:
        previous = previous[: previous.rfind(b"\n") + 1]
        if previous:
            yield previous


def _built_formats(rows: Iterable[tuple[str, str | None]]) -> dict[str, LogFormat | None]:
    """(file, LogFormat.spec) rows as file → format; a later row for a file wins."""
    specs = dict(rows)
    built = {spec: LogFormat.from_spec(spec) for spec in set(specs.values()) if spec}
    return {name: built.get(spec) if spec else None for name, spec in specs.items()}


def _by_file(table: pa.Table) -> dict[str, pa.Table]:
    """The table's rows by their `file` (in their order)."""
    if table.num_rows == 0:
        return {}
    files = pc.fill_null(table.column("file"), "")
    names = pc.unique(files).to_pylist()
    if len(names) == 1:
        return {names[0]: table}
    return {name: table.filter(pc.equal(files, name)) for name in names}


def _hours_of(times: pa.Array) -> np.ndarray:
    """Epoch hour of each time; NO_HOUR where the time is null."""
    values = pc.fill_null(times, NO_HOUR * 3600).to_numpy(zero_copy_only=False)
    return np.floor_divide(values, 3600)


def _hour_label(hour: int) -> str:
    if hour == NO_HOUR:
        return "no-time"
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H")


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns (a column the parser did not produce
    when this part was written is null)."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class _HourBuffer:
    """Parsed tables of one content waiting to be written, by hour."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        self.changes: list[FormatChange] = []
        self.raw_bytes = 0

    def add(self, kind: str, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        hours = _hours_of(table.column("time"))
        order = np.argsort(hours, kind="stable")  # lines keep their order within an hour
        if np.any(order != np.arange(len(order))):
            table, hours = table.take(pa.array(order)), hours[order]
        cuts = [0, *(np.flatnonzero(np.diff(hours)) + 1), len(hours)]
        for begin, end in itertools.pairwise(cuts):
            self.tables[(kind, int(hours[begin]))].append(table.slice(begin, end - begin))

    def rows(self, kind: str) -> int:
        return sum(t.num_rows for (k, _), ts in self.tables.items() if k == kind for t in ts)


class LogStore:
    """The store of one logs folder, under `root` (created on first use)."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(SCHEMA_SQL)
            self._migrate(db)

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Add the columns an older store lacks; its contents then have no stored format
        (the next bytes appended to them are detected, as before)."""
        present = {row[1] for row in db.execute("PRAGMA table_info(contents)")}
        for name, kind in MIGRATIONS.items():
            if name not in present:
                db.execute(f"ALTER TABLE contents ADD COLUMN {name} {kind}")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """The rows of one read query, on a connection of its own (readers never wait)."""
        with closing(self._connect()) as db:
            return db.execute(sql, args).fetchall()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "manifest.sqlite", timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _ingest_lock(self) -> Iterator[None]:
        lock = FileLock(self.root / "ingest.lock", timeout=LOCK_TIMEOUT_SECONDS)
        try:
            with lock:
                yield
        except Timeout:
            raise TimeoutError(
                f"{self.root}: another ingest has held the lock for {LOCK_TIMEOUT_SECONDS} s"
            ) from None

    def _write_part(self, kind: str, hour: int, table: pa.Table) -> tuple:
        name = f"{kind}/{_hour_label(hour)}/{uuid.uuid4().hex}.parquet"
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        with open(path, "rb") as written:
            os.fsync(written.fileno())
        return (name, kind, hour, table.num_rows, path.stat().st_size, time.time())

    def _collect_garbage(self, db: sqlite3.Connection) -> None:
        """Delete merged parts whose readers have had time to finish and, when the last
        ingest did not finish (a crash), the part files no commit recorded. Only then is
        the whole store listed: a normal hourly ingest costs nothing per stored hour."""
        cutoff = time.time() - RETIRED_SECONDS
        for (name,) in db.execute("SELECT name FROM retired WHERE retired_at <= ?", (cutoff,)):
            (self.root / name).unlink(missing_ok=True)
        db.execute("DELETE FROM retired WHERE retired_at <= ?", (cutoff,))
        if db.execute("SELECT value FROM meta WHERE key = 'ingest_finished'").fetchone() == ("0",):
            known = {
                row[0]
                for row in db.execute("SELECT name FROM parts UNION SELECT name FROM retired")
            }
            for kind in ("records", "malformed"):
                for path in (self.root / kind).glob("*/*.parquet"):
                    if path.relative_to(self.root).as_posix() not in known:
                        path.unlink(missing_ok=True)
        self._set_finished(db, False)

    @staticmethod
    def _set_finished(db: sqlite3.Connection, finished: bool) -> None:
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('ingest_finished', ?)", ("1" if finished else "0",)
        )

    # -------------------------------------------------------------------- ingest

    def ingest(self, folder: Path) -> IngestSummary:
        """Parse and store what is new in every file under `folder`; one ingest at a time."""
        from agent_reports.core import settings

        summary = IngestSummary()
        formats = FormatConfig.load(folder, settings.log_format())
        with self._ingest_lock(), closing(self._connect()) as db:
            self._collect_garbage(db)
            for path in log_files(folder):
                summary.files_seen += 1
                self._ingest_file(db, path, formats.for_file(path), summary)
            self._merge_small_parts(db, summary.hours)
            self._set_finished(db, True)
        return summary

    def _ingest_file(
        self,
        db: sqlite3.Connection,
        path: Path,
        configured: LogFormat | None,
        summary: IngestSummary,
    ) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return  # rotated away since it was listed: its new name is listed too, or later
        known = db.execute(
            "SELECT size, mtime_ns, content_id, path FROM files WHERE dev = ? AND inode = ?",
            (stat.st_dev, stat.st_ino),
        ).fetchone()
        if known and known[:2] == (stat.st_size, stat.st_mtime_ns):
            if known[3] != str(path):  # renamed, unchanged
                db.execute(
                    "UPDATE files SET path = ? WHERE dev = ? AND inode = ?",
                    (str(path), stat.st_dev, stat.st_ino),
                )
            return
        try:
            head, compressed = _head(path)
        except OSError as error:  # unreadable (permissions): name it, do not skip it
            raise InputError(path, None, None, f"cannot be read ({error})") from None
        content = self._content_for(db, known[2] if known else None, head, stat.st_size, compressed)
        if content is None:
            content = self._new_content(db, path)
        elif compressed and _gzip_size(path) == content.consumed % 2**32:
            self._record_file(db, path, stat, content.id)  # a compressed copy, read already
            return
        self._read_content(db, path, stat, content, compressed, head, configured, summary)

    def _content_for(
        self,
        db: sqlite3.Connection,
        content_id: int | None,
        head: bytes,
        size: int,
        compressed: bool,
    ) -> _Content | None:
        """The content this file holds, if already known: the same inode whose head is
        unchanged and which has not shrunk; else any content with the same head."""
        if content_id is not None:
            content = self._load(db, "id", (content_id,))
            if (
                content is not None
                and _digest(head[: content.head_len]) == content.head_hash
                and (compressed or size >= content.consumed)
            ):
                return content
        lengths = [row[0] for row in db.execute("SELECT DISTINCT head_len FROM contents")]
        for length in sorted((n for n in lengths if 0 < n <= len(head)), reverse=True):
            match = self._load(db, "head", (length, _digest(head[:length])))
            if match is not None:
                return match
        return None

    def _load(self, db: sqlite3.Connection, by: str, args: tuple) -> _Content | None:
        """A content by id, or the most read one with a given head."""
        row = db.execute(_LOAD_BY[by], args).fetchone()
        return _Content(*row) if row else None

    def _new_content(self, db: sqlite3.Connection, path: Path) -> _Content:
        cursor = db.execute(
            "INSERT INTO contents (path, head_len, head_hash, consumed, lines) "
            "VALUES (?, 0, ?, 0, 0)",
            (str(path), _digest(b"")),
        )
        return _Content(cursor.lastrowid, str(path), 0, _digest(b""), 0, 0, None)

    def _record_file(
        self,
        db: sqlite3.Connection,
        path: Path,
        stat: os.stat_result,
        content_id: int,
        done: bool = True,
    ) -> None:
        """Where the content is on disk; `done=False` (a partial read) forces a re-check."""
        db.execute(
            "INSERT OR REPLACE INTO files (dev, inode, path, size, mtime_ns, content_id) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                stat.st_dev,
                stat.st_ino,
                str(path),
                stat.st_size if done else -1,
                stat.st_mtime_ns,
                content_id,
            ),
        )

    def _read_content(
        self,
        db: sqlite3.Connection,
        path: Path,
        stat: os.stat_result,
        content: _Content,
        compressed: bool,
        head: bytes,
        configured: LogFormat | None,
        summary: IngestSummary,
    ) -> None:
        """Parse the content from its offset, in its format and with its line numbers
        carried on, committing every COMMIT_BYTES and at the end."""
        summary.files_read += 1
        content.path, content.problem = str(path), None
        parser = LogParser(path, content.format_for(configured), content.lines + 1)
        if content.last_time is not None:  # junk first in this read follows the last good line
            parser.last_time = float(content.last_time)
        content.configured = configured.spec if configured else None
        buffer = _HourBuffer()
        try:
            with open_log(path) as stream:
                _skip(stream, content.consumed, compressed)
                for block in _whole_lines(line_blocks(stream), final=compressed):
                    self._add_block(buffer, parser.parse(block), block, content, parser)
                    if buffer.raw_bytes >= COMMIT_BYTES:
                        self._commit(db, path, stat, content, head, buffer, summary, done=False)
                        buffer = _HourBuffer()
        except (EOFError, OSError, zlib.error) as error:
            content.problem = (
                f"<file unreadable after line {content.lines}: {type(error).__name__}>"
            )
        self._commit(db, path, stat, content, head, buffer, summary, done=True)

    @staticmethod
    def _add_block(
        buffer: _HourBuffer, parsed: ParsedBlock, block: bytes, content: _Content, parser: LogParser
    ) -> None:
        """One parsed block: records keep their file and line, placed by hour."""
        records = parsed.records.append_column(
            "file", pa.repeat(pa.scalar(content.path, pa.string()), parsed.records.num_rows)
        )
        records = records.append_column("line", pa.array(parsed.record_lines, pa.int64()))
        buffer.add("records", records)
        buffer.add("malformed", parsed.malformed)
        buffer.changes += parsed.changes
        buffer.raw_bytes += len(block)
        content.consumed += len(block)
        content.lines = parser.next_line - 1
        content.log_format = parser.log_format.spec if parser.log_format else None
        if records.num_rows:
            content.last_time = int(records.column("time")[-1].as_py())

    def _commit(
        self,
        db: sqlite3.Connection,
        path: Path,
        stat: os.stat_result,
        content: _Content,
        head: bytes,
        buffer: _HourBuffer,
        summary: IngestSummary,
        done: bool,
    ) -> None:
        """Write the buffer's hour files, then record them and the new offset in one
        transaction: before it nothing counts, after it nothing is read again."""
        parts = [
            self._write_part(
                kind, hour, pa.concat_tables([t.cast(tables[0].schema) for t in tables])
            )
            for (kind, hour), tables in buffer.tables.items()
        ]
        head_len = min(len(head), content.consumed, HEAD_BYTES)
        with self._transaction(db):
            db.executemany("INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?)", parts)
            db.executemany(
                "INSERT OR IGNORE INTO hour_sources VALUES (?, ?)",
                {(part[2], content.id) for part in parts},
            )
            db.execute(
                "UPDATE contents SET path = ?, head_len = ?, head_hash = ?, consumed = ?, "
                "lines = ?, last_time = ?, problem = ?, log_format = ?, configured = ? "
                "WHERE id = ?",
                (
                    content.path,
                    head_len,
                    _digest(head[:head_len]),
                    content.consumed,
                    content.lines,
                    content.last_time,
                    content.problem,
                    content.log_format,
                    content.configured,
                    content.id,
                ),
            )
            db.executemany(
                "INSERT OR REPLACE INTO format_changes VALUES (?, ?, ?, ?, ?, ?)",
                [(content.id, c.file, c.line, c.time, c.previous, c.new) for c in buffer.changes],
            )
            self._record_file(db, path, stat, content.id, done)
        summary.lines += buffer.rows("records") + buffer.rows("malformed")
        summary.malformed += buffer.rows("malformed")
        summary.bytes_read += buffer.raw_bytes
        summary.hours.update(hour for (_, hour) in buffer.tables if hour != NO_HOUR)
        if content.problem:
            summary.problems.append(f"{path}: {content.problem}")

    def _merge_small_parts(self, db: sqlite3.Connection, hours: Iterable[int]) -> None:
        """Merge an hour's parts into one file once it has more than MAX_PARTS_PER_HOUR
        (an hourly ingest adds one or two per hour), keeping reads to a few files."""
        for hour in sorted(hours):
            for kind in ("records", "malformed"):
                rows = db.execute(
                    "SELECT name, committed_at FROM parts WHERE hour = ? AND kind = ? "
                    "ORDER BY committed_at, name",
                    (hour, kind),
                ).fetchall()
                if len(rows) <= MAX_PARTS_PER_HOUR:
                    continue
                names = [name for name, _ in rows]
                merged = pa.concat_tables(self._read_parts(names), promote_options="permissive")
                # The merged part keeps the latest commit time: merging adds no lines.
                part = (*self._write_part(kind, hour, merged)[:-1], rows[-1][1])
                now = time.time()
                with self._transaction(db):
                    db.executemany("DELETE FROM parts WHERE name = ?", [(n,) for n in names])
                    db.executemany("INSERT INTO retired VALUES (?, ?)", [(n, now) for n in names])
                    db.execute("INSERT INTO parts VALUES (?, ?, ?, ?, ?, ?)", part)

    # ---------------------------------------------------------------------- read

    def _read_parts(self, names: list[str], schema: pa.Schema | None = None) -> list[pa.Table]:
        """The parts, only the schema's columns when given (a part may lack newer ones).
        Parquet decoding releases the GIL: a few threads read many small parts faster."""

        def one(name: str) -> pa.Table:
            part = pq.ParquetFile(self.root / name)
            present = part.schema_arrow.names
            wanted = None if schema is None else [n for n in schema.names if n in present]
            return part.read(columns=wanted, use_threads=False)

        if len(names) == 1:
            return [one(names[0])]
        with ThreadPoolExecutor(READ_THREADS) as pool:
            return list(pool.map(one, names))

    def _parts(self, lo_hour: int, hi_hour: int) -> list[tuple[int, str, str]]:
        """(hour, kind, name) of the committed parts of hours [lo_hour, hi_hour) and of the
        malformed lines with no time, in hour order: one consistent snapshot."""
        rows = self._query(
            "SELECT hour, kind, name, committed_at FROM parts WHERE hour >= ? AND hour < ? "
            "UNION ALL SELECT hour, kind, name, committed_at FROM parts WHERE hour = ? "
            "ORDER BY hour, committed_at, name",
            (lo_hour, hi_hour, NO_HOUR),
        )
        return [row[:3] for row in rows]

    def _problems(self) -> pa.Table:
        """One malformed entry per content whose last read broke off (a cut .gz)."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT path, lines, problem FROM contents WHERE problem IS NOT NULL")
            entries = [
                {"time": None, "file": path, "line": lines + 1, "text": problem}
                for path, lines, problem in rows
            ]
        return pa.Table.from_pylist(entries, schema=MALFORMED_SCHEMA)

    def problems(self) -> list[str]:
        """The raw files whose last read broke off, and where."""
        return [f"{row['file']}: {row['text']}" for row in self._problems().to_pylist()]

    def read(self, start: datetime, end: datetime, numbered: bool = False) -> Iterator[LogChunk]:
        """The stored lines timed in [start, end), in hour order: per READ_HOURS hours, one
        chunk per file, with the file's format and its format changes in the window (as the
        raw reader's chunks have them); the malformed lines with no time come first, in
        every window. `numbered`: records keep the `file` and `line` they came from."""
        lo, hi = int(start.timestamp()), int(end.timestamp())
        lo_hour, hi_hour = lo // 3600, -(-hi // 3600)
        by_hour: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for hour, kind, name in self._parts(lo_hour, hi_hour):
            by_hour[hour][kind].append(name)
        formats = self._formats(lo_hour, hi_hour)
        changes: dict[str, list[FormatChange]] = defaultdict(list)
        for change in self._format_changes(lo, hi):
            changes[change.file].append(change)
        schema = NUMBERED_SCHEMA if numbered else FILED_SCHEMA
        lines_read = 0
        for records, malformed in self._batches(by_hour, schema, lo, hi):
            good, bad = _by_file(records), _by_file(malformed)
            for name in sorted(good.keys() | bad.keys()):
                kept = good.get(name, schema.empty_table())
                skipped = bad.get(name, MALFORMED_SCHEMA.empty_table())
                lines_read += kept.num_rows + skipped.num_rows
                yield LogChunk(
                    kept if numbered else kept.drop_columns(["file"]),
                    skipped,
                    lines_read,
                    file=name,
                    parsed=kept.num_rows,
                    skipped=skipped.num_rows,
                    log_format=formats.get(name),
                    format_changes=tuple(changes.pop(name, ())),
                )

    def _batches(
        self, by_hour: dict[int, dict[str, list[str]]], schema: pa.Schema, lo: int, hi: int
    ) -> Iterator[tuple[pa.Table, pa.Table]]:
        """(records, malformed) of the lines with no time, then of READ_HOURS hours at a
        time, each batch read from Parquet only when it is reached."""
        untimed = by_hour.pop(NO_HOUR, {})
        yield (
            schema.empty_table(),
            pa.concat_tables(
                [self._problems(), self._window(untimed.get("malformed", []), MALFORMED_SCHEMA)]
            ),
        )
        hours = sorted(by_hour)
        for first in range(0, len(hours), READ_HOURS):
            batch = [by_hour[hour] for hour in hours[first : first + READ_HOURS]]
            records = [n for h in batch for n in h["records"]]
            malformed = [n for h in batch for n in h["malformed"]]
            yield (
                self._window(records, schema, lo, hi),
                self._window(malformed, MALFORMED_SCHEMA, lo, hi),
            )

    def _formats(self, lo_hour: int, hi_hour: int) -> dict[str, LogFormat | None]:
        """The format each file of the window was last read in (files it has lines of)."""
        rows = self._query(
            "SELECT path, log_format FROM contents WHERE id IN "
            "(SELECT content_id FROM hour_sources WHERE hour >= ? AND hour < ? OR hour = ?) "
            "ORDER BY id",
            (lo_hour, hi_hour, NO_HOUR),
        )
        return _built_formats(rows)

    def file_formats(self) -> dict[str, LogFormat | None]:
        """The format of every raw file still on disk, by the name its stored lines carry
        (None: no format fitted it), whether or not a window holds lines of it."""
        rows = self._query(
            "SELECT f.path, c.path, c.log_format FROM files f "
            "JOIN contents c ON c.id = f.content_id ORDER BY c.id"
        )
        return _built_formats([(name, spec) for path, name, spec in rows if Path(path).exists()])

    def _format_changes(self, lo: int, hi: int) -> list[FormatChange]:
        """The format changes found during ingest whose line is timed in [lo, hi)."""
        rows = self._query(
            "SELECT file, line, time, previous, new FROM format_changes "
            "WHERE time >= ? AND time < ? ORDER BY time, file, line",
            (lo, hi),
        )
        return [FormatChange(*row) for row in rows]

    def _window(
        self, names: list[str], schema: pa.Schema, lo: int | None = None, hi: int | None = None
    ) -> pa.Table:
        """The parts' rows with the schema's columns, timed in [lo, hi) when given."""
        if not names:
            return schema.empty_table()
        table = pa.concat_tables([_conform(t, schema) for t in self._read_parts(names, schema)])
        if lo is None or hi is None:
            return table
        times = table.column("time")
        return table.filter(pc.and_kleene(pc.greater_equal(times, lo), pc.less(times, hi)))

    # --------------------------------------------------------------- what it holds

    def hour_stats(self, lo_hour: int, hi_hour: int) -> dict[int, HourStats]:
        """Lines, malformed lines, bytes on disk, raw files and parts per stored hour."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT hour, "
                "SUM(CASE WHEN kind = 'records' THEN rows ELSE 0 END), "
                "SUM(CASE WHEN kind = 'malformed' THEN rows ELSE 0 END), "
                "SUM(bytes), COUNT(*), MAX(committed_at), "
                "(SELECT COUNT(*) FROM hour_sources s WHERE s.hour = parts.hour) "
                "FROM parts WHERE hour >= ? AND hour < ? GROUP BY hour ORDER BY hour",
                (lo_hour, hi_hour),
            ).fetchall()
        return {
            hour: HourStats(hour, good + bad, bad, size, files, count, last)
            for hour, good, bad, size, count, last, files in rows
        }

    def lines_stored_after(self, lo_hour: int, hi_hour: int, since: float) -> tuple[int, int]:
        """(lines committed after `since`, all lines) of hours [lo_hour, hi_hour)."""
        with closing(self._connect()) as db:
            late, total = db.execute(
                "SELECT SUM(CASE WHEN committed_at > ? THEN rows ELSE 0 END), SUM(rows) "
                "FROM parts WHERE hour >= ? AND hour < ?",
                (since, lo_hour, hi_hour),
            ).fetchone()
        return late or 0, total or 0

    def hours_changed_since(self, since: float) -> dict[int, float]:
        """Hours that got lines committed after `since` (epoch seconds) → last commit time."""
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT hour, MAX(committed_at) FROM parts WHERE committed_at > ? AND hour != ? "
                "GROUP BY hour ORDER BY hour",
                (since, NO_HOUR),
            ).fetchall()
        return dict(rows)


def store_root(state_dir: Path, folder: Path) -> Path:
    """The store of one logs folder: `<state>/log_store/<hash of the folder's path>/`."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return state_dir / "log_store" / key


def folder_store(folder: Path) -> LogStore:
    """The store of `folder` under the configured state dir, with a note naming the folder."""
    from agent_reports.core import settings

    root = store_root(settings.state_dir(), folder)
    store = LogStore(root)
    note = root / "folder.txt"
    if not note.exists():
        note.write_text(f"{folder.resolve()}\n")
    return store


def ingest_and_read(
    folder: Path, start: datetime, end: datetime, numbered: bool = False
) -> Iterator[LogChunk]:
    """What the files source does: ingest what is new under `folder`, then read the window."""
    store = folder_store(folder)
    store.ingest(folder)
    return store.read(start, end, numbered=numbered)
