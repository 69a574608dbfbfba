"""The month's access-log records with the file and line each came from, streamed.

An audit finding must cite its evidence, and the shared reader (core/access_logs.py)
yields records without their line numbers. This reads the same sources with the same
block parser (`parse_block`), keeping `file` and `line` for every good line; memory stays
bounded by the block size. Malformed lines are skipped here: the anomaly scan reports
them hour by hour.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_reports.core.access_logs import line_blocks, log_files, open_log, parse_block
from agent_reports.core.sources import DemoSource, FileSource, InputError, Source


@dataclass
class ReadStats:
    """What the reader saw, for the report: files, lines (= parsed + skipped), the same
    per file, and the files that broke off."""

    files: int = 0
    lines: int = 0
    parsed: int = 0
    skipped: int = 0
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)
    unreadable: list[str] | None = None

    def count(self, name: str, parsed: int, skipped: int) -> None:
        self.parsed, self.skipped = self.parsed + parsed, self.skipped + skipped
        self.lines += parsed + skipped
        mine = self.per_file.setdefault(name, {"lines": 0, "parsed": 0, "skipped": 0})
        mine["lines"] += parsed + skipped
        mine["parsed"] += parsed
        mine["skipped"] += skipped

    def broke_off(self, name: str, line: int, error: Exception) -> None:
        self.unreadable = [*(self.unreadable or []), f"{name} after line {line} ({error})"]
        self.per_file[name]["broke_off"] = 1


def numbered_blocks(
    blocks: Iterable[bytes], name: str, start: datetime, end: datetime, stats: ReadStats
) -> Iterator[pa.Table]:
    """Records of one stream of line blocks timed in [start, end), with `file` and `line`."""
    lo, hi = int(start.timestamp()), int(end.timestamp())
    next_line = 1
    for block in blocks:
        records, good, _lines = parse_block(block)
        numbers = np.flatnonzero(good) + next_line
        next_line += len(good)
        parsed = int(good.sum())
        stats.count(name, parsed, len(good) - parsed)
        times = records.column("time")
        keep = pc.and_(pc.greater_equal(times, lo), pc.less(times, hi))
        kept = records.filter(keep)
        lines = numbers[keep.to_numpy(zero_copy_only=False)]
        yield _with_origin(kept, name, lines)


def _with_origin(records: pa.Table, name: str, lines: np.ndarray) -> pa.Table:
    """The records plus the `file` and `line` columns the evidence cites."""
    files = pa.array([name] * records.num_rows, pa.string())
    return records.append_column("file", files).append_column("line", pa.array(lines, pa.int64()))


def _file_records(
    folder_files: list, start: datetime, end: datetime, stats: ReadStats
) -> Iterator[pa.Table]:
    for path in folder_files:
        stats.files += 1
        stats.count(str(path), 0, 0)  # every file is listed, an empty one too
        before = stats.lines
        try:
            with open_log(path) as stream:
                yield from numbered_blocks(line_blocks(stream), str(path), start, end, stats)
        except (EOFError, OSError, zlib.error) as error:
            stats.broke_off(str(path), stats.lines - before, error)


def month_records(
    source: Source, start: datetime, end: datetime, stats: ReadStats
) -> Iterator[pa.Table]:
    """The source's access-log records in [start, end), numbered by file and line."""
    if isinstance(source, FileSource):
        folder = source.data_dir / "logs"
        if not folder.is_dir():
            raise InputError(folder, None, None, "folder not found (AGENT_REPORTS_DATA_DIR/logs)")
        yield from _file_records(log_files(folder), start, end, stats)
    elif isinstance(source, DemoSource):
        from agent_reports.core.access_logs_demo import demo_blocks

        stats.files += 1
        yield from numbered_blocks(demo_blocks(source.seed, start, end), "demo", start, end, stats)
    else:  # another source: records without line numbers
        stats.files += 1
        for chunk in source.access_logs(start, end):
            records = chunk.records
            stats.count(source.name, records.num_rows, chunk.malformed.num_rows)
            yield _with_origin(records, source.name, np.zeros(records.num_rows, np.int64))
