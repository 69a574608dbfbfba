"""Web-server access logs (Apache/Nginx Combined or Common Log Format) parsed in streamed chunks.

Accepted line shapes (one per line, any mix within a file):

    host ident user [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.1" 200 2326
    ... 200 2326 "referer" "user agent"
    ... 200 2326 "referer" "user agent" 0.123      (Nginx $request_time, seconds)
    ... 200 2326 "referer" "user agent" 123456     (Apache %D, microseconds)

A trailing request time with a decimal point is read as seconds, an integer as
microseconds. Each line's time is converted to UTC from its own offset, so a line belongs
to the hour of its timestamp whatever file it sits in. A line that does not fit (binary
junk, truncated, over-long, an impossible date or status) is malformed: counted, with a
short sample, and given the time of the last good line before it in the same file, so it
is reported in the hour it was written in.

The work is vectorised with pyarrow (RE2 regex extraction, numpy date arithmetic) over
blocks of `CHUNK_BYTES`, so memory is bounded by the block size, not the file size
(measured in benchmarks/log_parse.py).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHUNK_BYTES = 16 * 1024 * 1024
READ_BYTES = 1024 * 1024
MAX_LINE_BYTES = 8192
SAMPLE_CHARS = 200

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
LINE_PATTERN = (
    r"^(?P<client>\S+) \S+ (?P<user>\S+) "
    r"\[(?P<day>\d{2})/(?P<mon>[A-Za-z]{3})/(?P<year>\d{4}):"
    r"(?P<hh>\d{2}):(?P<mm>\d{2}):(?P<ss>\d{2}) (?P<tzsign>[+-])(?P<tzh>\d{2})(?P<tzm>\d{2})\] "
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<bytes>\d+|-)'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
    r"(?: (?P<rt>\d+(?:\.\d+)?|-))?[ \t]*\r?\n?$"
)
REQUEST_PATTERN = r"^(?P<method>[A-Za-z]+) (?P<path>\S+)(?: (?P<protocol>\S+))?$"
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

RECORD_SCHEMA = pa.schema(
    [
        ("time", pa.int64()),  # seconds since the epoch, UTC
        ("client", pa.string()),
        ("user", pa.string()),
        ("method", pa.string()),
        ("path", pa.string()),
        ("protocol", pa.string()),
        ("status", pa.int16()),
        ("bytes", pa.int64()),
        ("referer", pa.string()),
        ("user_agent", pa.string()),
        ("request_time", pa.float64()),  # seconds; null when the format has none
    ]
)
MALFORMED_SCHEMA = pa.schema(
    [
        ("time", pa.int64()),  # estimated: the last good line before it; null if none
        ("file", pa.string()),
        ("line", pa.int64()),
        ("text", pa.string()),
    ]
)


@dataclass(frozen=True)
class LogChunk:
    """Parsed lines of one block whose time is in the window, and the block's malformed lines."""

    records: pa.Table
    malformed: pa.Table
    lines_read: int = 0  # lines of the file read so far, this block included


def log_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file under `folder` (any names, rotated, .gz or plain)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sorted(p for p in files if not any(part.startswith(".") for part in p.parts[-1:]))


def open_log(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped when it starts with the gzip magic (whatever its name)."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def line_blocks(stream: BinaryIO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Blocks of whole lines of about `chunk_bytes`; a line longer than a block is cut.

    Reads in pieces of at most READ_BYTES, so when a compressed file breaks off, the whole
    lines read before the break are still yielded before the error is raised.
    """
    buffer = bytearray()
    read = getattr(stream, "read1", stream.read)  # read1: what is decompressed so far
    try:
        while piece := read(min(chunk_bytes, READ_BYTES)):
            buffer += piece
            if len(buffer) >= chunk_bytes:
                cut = buffer.rfind(b"\n") + 1 or len(buffer)
                yield bytes(buffer[:cut])
                del buffer[:cut]
    except (EOFError, OSError, zlib.error):
        cut = buffer.rfind(b"\n") + 1
        if cut:
            yield bytes(buffer[:cut])
        raise
    if buffer:
        yield bytes(buffer)


def split_lines(block: bytes) -> pa.BinaryArray:
    """The block's lines as a zero-copy binary array (each line keeps its trailing newline)."""
    buffer = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(buffer == 10) + 1
    if len(ends) == 0 or ends[-1] != len(block):
        ends = np.append(ends, len(block))
    offsets = np.concatenate([[0], ends]).astype(np.int32)
    return pa.BinaryArray.from_buffers(
        pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(block)]
    )


def _non_utf8(lines: pa.BinaryArray, block: bytes) -> np.ndarray:
    """Lines that are not valid UTF-8; only lines holding a byte ≥ 0x80 are decoded in Python."""
    bad = np.zeros(len(lines), dtype=bool)
    high = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) >= 0x80)
    if len(high) == 0:
        return bad
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[: len(lines) + 1]
    for index in np.unique(np.searchsorted(offsets, high, side="right") - 1):
        try:
            block[offsets[index] : offsets[index + 1]].decode("utf-8")
        except UnicodeDecodeError:
            bad[index] = True
    return bad


def _int(field: pa.Array) -> np.ndarray:
    """A binary field of ASCII digits as int64 (0 where null or empty)."""
    text = pc.if_else(pc.equal(pc.binary_length(field), 0), None, field.cast(pa.string()))
    return pc.fill_null(text.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (month + 9) % 12
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _days_in_month(year: np.ndarray, month: np.ndarray) -> np.ndarray:
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    lengths = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    return lengths[np.clip(month - 1, 0, 11)] + ((month == 2) & leap)


def _utc_seconds(fields: pa.StructArray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (UTC) of each timestamp, and whether the date and time are possible."""
    day, year = _int(fields.field("day")), _int(fields.field("year"))
    hh, mm, ss = (_int(fields.field(name)) for name in ("hh", "mm", "ss"))
    month_index = pc.index_in(fields.field("mon").cast(pa.string()), pa.array(MONTHS))
    month = pc.fill_null(month_index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    sign = np.where(pc.equal(fields.field("tzsign"), b"-").to_numpy(zero_copy_only=False), -1, 1)
    tz_hours, tz_minutes = _int(fields.field("tzh")), _int(fields.field("tzm"))
    possible = (
        (month >= 1)
        & (year >= 1970)
        & (day >= 1)
        & (day <= _days_in_month(year, month))
        & (hh <= 23)
        & (mm <= 59)
        & (ss <= 60)  # a leap second is read as the next second
        & (tz_hours <= 14)
        & (tz_minutes <= 59)
    )
    local = _days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss
    return local - sign * (tz_hours * 3600 + tz_minutes * 60), possible


def _text(field: pa.Array) -> pa.Array:
    """A binary field as text; empty or '-' becomes null."""
    text = field.cast(pa.string())
    return pc.if_else(pc.is_in(text, pa.array(["", "-"])), None, text)


def _request_time(field: pa.Array) -> pa.Array:
    """Seconds: a value with a decimal point is seconds, an integer is microseconds."""
    text = _text(field)
    value = text.cast(pa.float64())
    return pc.if_else(pc.match_substring(text, "."), value, pc.divide(value, 1e6))


def parse_block(block: bytes) -> tuple[pa.Table, np.ndarray, pa.BinaryArray]:
    """Parse one block: the good lines' records, the good-line mask, and all the lines."""
    lines = split_lines(block)
    fields = pc.extract_regex(lines, LINE_PATTERN)
    seconds, possible = _utc_seconds(fields)
    status = _int(fields.field("status"))
    good = (
        fields.is_valid().to_numpy(zero_copy_only=False)
        & possible
        & (status >= 100)
        & (status <= 599)
        & (pc.binary_length(lines).to_numpy(zero_copy_only=False) <= MAX_LINE_BYTES)
        & ~_non_utf8(lines, block)
    )
    kept = pc.filter(fields, pa.array(good))
    request = pc.extract_regex(kept.field("request"), REQUEST_PATTERN)
    byte_count = pc.if_else(pc.equal(kept.field("bytes"), b"-"), b"0", kept.field("bytes"))
    records = pa.Table.from_arrays(
        [
            pa.array(seconds[good]),
            kept.field("client").cast(pa.string()),
            _text(kept.field("user")),
            _text(request.field("method")),
            _text(request.field("path")),
            _text(request.field("protocol")),
            pa.array(status[good].astype(np.int16)),
            byte_count.cast(pa.string()).cast(pa.int64()),
            _text(kept.field("referer")),
            _text(kept.field("agent")),
            _request_time(kept.field("rt")),
        ],
        schema=RECORD_SCHEMA,
    )
    return records, good, lines


def _blank(lines: pa.Array) -> np.ndarray:
    """Lines holding only whitespace: skipped, not malformed."""
    stripped = pc.binary_length(pc.replace_substring_regex(lines, r"[\r\n\t ]+$", b""))
    return pc.equal(stripped, 0).to_numpy(zero_copy_only=False)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _sample(raw: bytes) -> str:
    """A short, printable excerpt: invalid bytes and control characters as \\xNN."""
    text = raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "…"


def _malformed_table(
    lines: pa.BinaryArray, bad: np.ndarray, times: np.ndarray, path: Path | str, first_line: int
) -> pa.Table:
    index = np.flatnonzero(bad)
    raw = pc.take(lines, pa.array(index)).to_pylist()
    return pa.Table.from_arrays(
        [
            pa.array(times[index], mask=np.isnan(times[index])).cast(pa.int64()),
            pa.array([str(path)] * len(index), pa.string()),
            pa.array(index + first_line, pa.int64()),
            pa.array([_sample(r) for r in raw], pa.string()),
        ],
        schema=MALFORMED_SCHEMA,
    )


class _FileState:
    """What carries from one block of a file to the next: line number, last good time."""

    def __init__(self) -> None:
        self.next_line = 1
        self.last_time = np.nan


def _estimated_times(seconds: np.ndarray, good: np.ndarray, state: _FileState) -> np.ndarray:
    """Each line's own time if good, else the last good time before it (NaN if none yet)."""
    times = np.where(good, seconds, np.nan).astype(np.float64)
    times = np.concatenate([[state.last_time], times])
    index = np.where(~np.isnan(times), np.arange(len(times)), 0)
    np.maximum.accumulate(index, out=index)
    filled = times[index][1:]
    known = np.flatnonzero(~np.isnan(filled))
    if len(known):
        # Junk at the very start of a file takes the time of the first good line after it.
        filled[: known[0]] = filled[known[0]]
        state.last_time = filled[-1]
    return filled


def _in_window(times: pa.Array, start: int, end: int) -> pa.Array:
    return pc.and_kleene(pc.greater_equal(times, start), pc.less(times, end))


def parse_blocks(
    blocks: Iterable[bytes], name: Path | str, start: datetime, end: datetime
) -> Iterator[LogChunk]:
    """Chunks of one stream's lines (blocks of whole lines) whose time is in [start, end)."""
    lo, hi = int(start.timestamp()), int(end.timestamp())
    state = _FileState()
    for block in blocks:
        yield _parse_chunk(block, name, state, lo, hi)


def read_log_file(
    path: Path, start: datetime, end: datetime, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[LogChunk]:
    """Chunks of one file's lines whose time falls in [start, end) (aware datetimes).

    A truncated or corrupt .gz (a rotation in progress, a partial copy) keeps what was
    read and adds one malformed entry saying where the file broke off.
    """
    lines_read = 0
    try:
        with open_log(path) as stream:
            for chunk in parse_blocks(line_blocks(stream, chunk_bytes), path, start, end):
                lines_read = chunk.lines_read
                yield chunk
    except (EOFError, OSError, zlib.error) as error:
        note = f"<file unreadable after line {lines_read}: {type(error).__name__}>"
        yield LogChunk(
            RECORD_SCHEMA.empty_table(),
            pa.Table.from_pylist(
                [{"time": None, "file": str(path), "line": lines_read + 1, "text": note}],
                schema=MALFORMED_SCHEMA,
            ),
            lines_read,
        )


def _parse_chunk(block: bytes, path: Path | str, state: _FileState, lo: int, hi: int) -> LogChunk:
    records, good, lines = parse_block(block)
    seconds = np.zeros(len(good), dtype=np.float64)
    seconds[good] = records.column("time").to_numpy()
    times = _estimated_times(seconds, good, state)
    bad = ~good
    if bad.any():
        bad[bad] = ~_blank(pc.filter(lines, pa.array(bad)))
    malformed = _malformed_table(lines, bad, times, path, state.next_line)
    state.next_line += len(good)
    keep_time = malformed.column("time")
    malformed = malformed.filter(pc.or_kleene(_in_window(keep_time, lo, hi), pc.is_null(keep_time)))
    in_window = records.filter(_in_window(records.column("time"), lo, hi))
    return LogChunk(in_window, malformed, state.next_line - 1)


def read_access_logs(
    paths: Iterable[Path], start: datetime, end: datetime, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[LogChunk]:
    """Chunks of every file's lines in [start, end); malformed lines with no time are kept too."""
    for path in paths:
        yield from read_log_file(path, start, end, chunk_bytes)
