"""The month's access-log records with the file and line each came from, streamed.

An audit finding must cite its evidence, and the shared reader (core/access_logs.py)
yields records without their line numbers. The files source's records come from the log
store (core/log_store.py), which keeps the `file` and `line` of every good line, so the
audit reads only its month; so do the demo's (written into the logs folder first); a
demo source without a logs folder is numbered here with the same per-file parser
(`LogParser`). Memory stays bounded by an hour or a block. `ReadStats` counts the
month's lines parsed and skipped (malformed, or with no readable timestamp), in total and
per file, so the audit says what it did not read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_reports.core.access_logs import LogParser
from agent_reports.core.log_formats import LogFormat
from agent_reports.core.log_store import folder_store
from agent_reports.core.sources import DemoSource, FileSource, InputError, Source


@dataclass
class FileStats:
    """One file's share of the month: its format, lines parsed and skipped."""

    format: str = "unknown"
    parsed: int = 0
    skipped: int = 0


@dataclass
class ReadStats:
    """What the reader saw of the month: files, lines parsed and skipped (malformed or with
    no readable timestamp), per file, and the files that broke off."""

    files: int = 0
    parsed: int = 0
    skipped: int = 0
    per_file: dict[str, FileStats] = field(default_factory=dict)
    unreadable: list[str] | None = None

    @property
    def lines(self) -> int:
        return self.parsed + self.skipped

    def count(self, name: str, parsed: int, skipped: int, fmt: LogFormat | None) -> None:
        entry = self.per_file.setdefault(name, FileStats())
        entry.format = fmt.name if fmt else entry.format
        entry.parsed += parsed
        entry.skipped += skipped
        self.parsed += parsed
        self.skipped += skipped

    def broke_off(self, name: str, line: int, error: Exception) -> None:
        self.unreadable = [*(self.unreadable or []), f"{name} after line {line} ({error})"]
        self.count(name, 0, 1, None)


def numbered_blocks(
    blocks: Iterable[bytes],
    name: str,
    start: datetime,
    end: datetime,
    stats: ReadStats,
    log_format: LogFormat | None = None,
) -> Iterator[pa.Table]:
    """Records of one stream of line blocks timed in [start, end), with `file` and `line`."""
    lo, hi = int(start.timestamp()), int(end.timestamp())
    parser = LogParser(name, log_format)
    for block in blocks:
        parsed = parser.parse(block)
        times = parsed.records.column("time")
        keep = pc.and_(pc.greater_equal(times, lo), pc.less(times, hi))
        kept = parsed.records.filter(keep)
        lines = parsed.record_lines[keep.to_numpy(zero_copy_only=False)]
        bad_times = parsed.malformed.column("time")
        bad = pc.or_kleene(
            pc.and_kleene(pc.greater_equal(bad_times, lo), pc.less(bad_times, hi)),
            pc.is_null(bad_times),
        )
        stats.count(name, kept.num_rows, pc.sum(bad).as_py() or 0, parser.log_format)
        yield _with_origin(kept, name, lines)


def _with_origin(records: pa.Table, name: str, lines: np.ndarray) -> pa.Table:
    """The records plus the `file` and `line` columns the evidence cites."""
    files = pa.array([name] * records.num_rows, pa.string())
    return records.append_column("file", files).append_column("line", pa.array(lines, pa.int64()))


def _stored_records(
    folder: Path, start: datetime, end: datetime, stats: ReadStats
) -> Iterator[pa.Table]:
    """The window from the log store (core/log_store.py), after ingesting what is new;
    every file under the folder counts as read. The store yields a chunk per file, with
    the format the file was read in."""
    store = folder_store(folder)
    stats.files += store.ingest(folder).files_seen
    for name, log_format in store.file_formats().items():  # files with no line in the window too
        stats.count(name, 0, 0, log_format)
    for chunk in store.read(start, end, numbered=True):
        malformed = chunk.malformed
        broken = pc.starts_with(malformed.column("text"), "<file unreadable")
        for row in malformed.filter(broken).to_pylist():
            stats.broke_off(row["file"], row["line"] - 1, row["text"])
        skipped = malformed.num_rows - (pc.sum(broken).as_py() or 0)
        stats.count(chunk.file, chunk.records.num_rows, skipped, chunk.log_format)
        yield chunk.records


def month_records(
    source: Source, start: datetime, end: datetime, stats: ReadStats
) -> Iterator[pa.Table]:
    """The source's access-log records in [start, end), numbered by file and line."""
    if isinstance(source, FileSource):
        folder = source.data_dir / "logs"
        if not folder.is_dir():
            raise InputError(folder, None, None, "folder not found (AGENT_REPORTS_DATA_DIR/logs)")
        yield from _stored_records(folder, start, end, stats)
    elif isinstance(source, DemoSource) and source.logs_dir is not None:
        from agent_reports.core.access_logs_demo import write_demo_logs

        write_demo_logs(source.seed, source.logs_dir, start, end)
        yield from _stored_records(source.logs_dir, start, end, stats)
    elif isinstance(source, DemoSource):
        from agent_reports.core.access_logs_demo import demo_blocks

        stats.files += 1
        yield from numbered_blocks(demo_blocks(source.seed, start, end), "demo", start, end, stats)
    else:  # another source: records without line numbers
        stats.files += 1
        for chunk in source.access_logs(start, end):
            records = chunk.records
            stats.count(chunk.file or source.name, records.num_rows, chunk.malformed.num_rows, None)
            yield _with_origin(records, source.name, np.zeros(records.num_rows, np.int64))
