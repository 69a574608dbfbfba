"""Web-server access logs parsed in streamed chunks, in the format each file is written in.

Each file's format is the one configured for it (`FormatConfig`: `<logs>/.agent_reports.toml`,
else AGENT_REPORTS_LOG_FORMAT) or, when none is, the preset detected from its first lines
(core/log_formats.py: Common, Combined, Combined + extra fields, vhost_combined,
combinedio, nginx main / timed, Traefik, request times in s, ms or µs). Lines that do not
fit the file's format are tried against the presets: when one fits them, it is a format
change (a config change that added a field): it is recorded (`FormatChange`, with the
line and the time it starts) and parsing carries on with both formats, newest first.

Each line's time is converted to UTC from its own offset, so a line belongs to the hour
of its timestamp whatever file it sits in. A line that fits no format (binary junk,
truncated, over-long, an impossible date or status, an unknown format) is malformed:
counted, with a short sample, and timed by the `[dd/Mon/yyyy:hh:mm:ss ±hhmm]` stamp it
holds, else by the last good line before it in the same file, so it is charged to the
hour it was written in. A file with no readable time at all yields its malformed lines
with a null time: readers charge them to every window they report (a per-file problem).

Every `LogChunk` says what its block held: lines read so far, parsed and skipped lines
of the block, the format in use and any format change.

Appending to a file already read (an ingest store reading from an offset): pass the
format found before and the number of the first new line,

    chunks = parse_blocks(blocks, name, start, end, log_format=fmt, first_line=n + 1)

`fmt` is the previous chunk's `log_format` (store it as `fmt.spec`, rebuild it with
`LogFormat.from_spec`), so the appended lines are not detected again and keep the file's
line numbers.

The work is vectorised over blocks of `CHUNK_BYTES`, so memory is bounded by the block
size, not the file size: pyarrow's CSV tokenizer and numpy read the lines the fast path
can vouch for (core/log_tokenizer.py: the same records the regex would give), RE2
extraction the rest (measured in benchmarks/log_parse.py).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_reports.core.log_formats import DETECT_LINES, TIME, LogFormat, detect
from agent_reports.core.log_tokenizer import MONTHS, fast_records, request_parts, utf8_text
from agent_reports.core.log_tokenizer import local_to_utc as _seconds

CHUNK_BYTES = 8 * 1024 * 1024  # 16 MB: the tokenizer leaves the cache (13% slower)
READ_BYTES = 1024 * 1024
MAX_LINE_BYTES = 8192
SAMPLE_CHARS = 200
MIN_CHANGE_LINES = 100  # lines a new format needs in a block (or half of the block)

REQUEST_PATTERN = r"^(?P<method>[A-Za-z]+) (?P<path>\S+)(?: (?P<protocol>\S+))?$"

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
        ("vhost", pa.string()),  # %v / $host when the format has it
    ]
)
MALFORMED_SCHEMA = pa.schema(
    [
        ("time", pa.int64()),  # its own stamp, else the last good line before it; null if none
        ("file", pa.string()),
        ("line", pa.int64()),
        ("text", pa.string()),
    ]
)


@dataclass(frozen=True)
class FormatChange:
    """Lines of a file that stopped fitting its format and fit another from `line` on."""

    file: str
    line: int
    time: int | None  # epoch seconds (UTC) of that line
    previous: str
    new: str


@dataclass(frozen=True)
class LogChunk:
    """Parsed lines of one block whose time is in the window, the block's malformed lines
    in the window, and what the whole block held (any time)."""

    records: pa.Table
    malformed: pa.Table
    lines_read: int = 0  # lines of the file read so far, this block included
    file: str = ""
    parsed: int = 0  # lines of this block parsed
    skipped: int = 0  # malformed lines of this block (blank lines are neither)
    log_format: LogFormat | None = None  # the format in use at the end of the block
    format_changes: tuple[FormatChange, ...] = ()


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

    A compressed stream is read in pieces of at most READ_BYTES, so when it breaks off, the
    whole lines read before the break are still yielded before the error is raised; a
    plain file is read a block at a time (one copy less per byte).
    """
    if not isinstance(stream, gzip.GzipFile):
        yield from _plain_blocks(stream, chunk_bytes)
        return
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


def _plain_blocks(stream: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """`line_blocks` of an uncompressed stream: each read ends at its last newline, the
    rest starts the next block (a line longer than a block is cut)."""
    tail = b""
    while piece := stream.read(chunk_bytes):
        cut = piece.rfind(b"\n") + 1
        if not cut:
            tail += piece
            if len(tail) >= chunk_bytes:
                yield tail
                tail = b""
            continue
        yield b"".join([tail, memoryview(piece)[:cut]])
        tail = piece[cut:]
    if tail:
        yield tail


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


def _utc_seconds(fields: pa.StructArray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (UTC) of each timestamp, and whether the date and time are possible."""
    day, year = _int(fields.field("day")), _int(fields.field("year"))
    hh, mm, ss = (_int(fields.field(name)) for name in ("hh", "mm", "ss"))
    month_index = pc.index_in(fields.field("mon").cast(pa.string()), pa.array(MONTHS))
    month = pc.fill_null(month_index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    sign = np.where(pc.equal(fields.field("tzsign"), b"-").to_numpy(zero_copy_only=False), -1, 1)
    tz_hours, tz_minutes = _int(fields.field("tzh")), _int(fields.field("tzm"))
    return _seconds(year, month, day, hh, mm, ss, sign, tz_hours, tz_minutes)


def _text(field: pa.Array | None, length: int) -> pa.Array:
    """A binary field as text; empty or '-' becomes null (all null when the format has none)."""
    if field is None:
        return pa.nulls(length, pa.string())
    return _null_where(field.cast(pa.string()), pc.is_in(field, pa.array([b"", b"-"])))


def _null_where(array: pa.Array, mask: pa.Array) -> pa.Array:
    """`array` with nulls where `mask` is true: a new validity bitmap over the same data."""
    hide = mask.to_numpy(zero_copy_only=False)
    if not hide.any():
        return array
    if array.offset or array.null_count:
        return pc.if_else(mask, None, array)
    validity = pa.py_buffer(np.packbits(~hide, bitorder="little"))
    return pa.Array.from_buffers(array.type, len(array), [validity, *array.buffers()[1:]])


def _request_time(field: pa.Array | None, unit: float | None, length: int) -> pa.Array:
    """Seconds: a value with a decimal point is seconds, an integer is in the format's unit."""
    if field is None:
        return pa.nulls(length, pa.float64())
    text = _text(field, length)
    value = text.cast(pa.float64())
    return pc.if_else(pc.match_substring(text, "."), value, pc.multiply(value, unit or 1.0))


def _struct_fields(struct: pa.StructArray) -> dict[str, pa.Array]:
    return {struct.type.field(i).name: struct.field(i) for i in range(struct.type.num_fields)}


def _records(
    fields: dict[str, pa.Array],
    seconds: np.ndarray,
    status: np.ndarray,
    fmt: LogFormat,
    n: int,
    text: Callable[[pa.Array | None, int], pa.Array] = _text,
) -> pa.Table:
    """The records of the lines that matched (`fields` already filtered to them); `text`
    turns a field into text (the fast path's fields are known to be valid UTF-8)."""
    request = fields.get("request")
    if request is not None:
        fields = fields | _struct_fields(pc.extract_regex(request, REQUEST_PATTERN))
    byte_field = fields.get("bytes")
    if byte_field is None:
        byte_count = pa.nulls(n, pa.int64())
    else:
        dash = pc.equal(byte_field, b"-")
        byte_count = pc.fill_null(_null_where(byte_field, dash).cast(pa.int64()), 0)
    return pa.Table.from_arrays(
        [
            pa.array(seconds),
            fields["client"].cast(pa.string()) if "client" in fields else pa.nulls(n, pa.string()),
            text(fields.get("user"), n),
            text(fields.get("method"), n),
            text(fields.get("path"), n),
            text(fields.get("protocol"), n),
            pa.array(status.astype(np.int16)),
            byte_count,
            text(fields.get("referer"), n),
            text(fields.get("agent"), n),
            _request_time(fields.get("rt"), fmt.rt_unit, n),
            text(fields.get("vhost"), n),
        ],
        schema=RECORD_SCHEMA,
    )


def _parse_with(fmt: LogFormat, lines: pa.Array) -> tuple[np.ndarray, pa.Table]:
    """Which of `lines` fit `fmt` (a possible date and status), and their records."""
    fields = pc.extract_regex(lines, fmt.pattern)
    seconds, possible = _utc_seconds(fields)
    status = _int(fields.field("status")) if "status" in fmt.fields else np.full(len(lines), 0)
    good = fields.is_valid().to_numpy(zero_copy_only=False) & possible
    if "status" in fmt.fields:
        good &= (status >= 100) & (status <= 599)
    kept = _struct_fields(pc.filter(fields, pa.array(good)))
    return good, _records(kept, seconds[good], status[good], fmt, int(good.sum()))


def _take_part(fmt: LogFormat, lines: pa.Array, remaining: np.ndarray, parts: list) -> np.ndarray:
    """Parse the `remaining` lines with `fmt`, add what fits to `parts`, return the rest."""
    subset = lines if len(remaining) == len(lines) else pc.take(lines, pa.array(remaining))
    good, records = _parse_with(fmt, subset)
    if good.any():
        parts.append((fmt, remaining[good], records))
    return remaining[~good]


def _stamp_times(lines: pa.Array) -> np.ndarray:
    """The UTC time of a `[dd/Mon/yyyy:hh:mm:ss ±hhmm]` stamp anywhere in each line, or NaN."""
    fields = pc.extract_regex(lines, TIME)
    seconds, possible = _utc_seconds(fields)
    readable = fields.is_valid().to_numpy(zero_copy_only=False) & possible
    return np.where(readable, seconds, np.nan)


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
    lines: pa.BinaryArray, index: np.ndarray, times: np.ndarray, path: Path | str, first_line: int
) -> pa.Table:
    raw = pc.take(lines, pa.array(index, pa.int64())).to_pylist()
    return pa.Table.from_arrays(
        [
            pa.array(times[index], mask=np.isnan(times[index])).cast(pa.int64()),
            pa.array([str(path)] * len(index), pa.string()),
            pa.array(index + first_line, pa.int64()),
            pa.array([_sample(r) for r in raw], pa.string()),
        ],
        schema=MALFORMED_SCHEMA,
    )


@dataclass
class ParsedBlock:
    """One block of a file: the good lines' records (in line order) and their line numbers,
    the malformed lines (with estimated times), and the format changes found in it."""

    records: pa.Table
    record_lines: np.ndarray
    malformed: pa.Table
    lines: int
    changes: list[FormatChange] = field(default_factory=list)


class LogParser:
    """Parses the blocks of one file in order: line numbers, formats and last good time
    carry from one block to the next."""

    def __init__(
        self, name: Path | str, log_format: LogFormat | None = None, first_line: int = 1
    ) -> None:
        self.name = str(name)
        self.formats: list[LogFormat] = [log_format] if log_format else []
        self.next_line = first_line
        self.last_time = np.nan

    @property
    def log_format(self) -> LogFormat | None:
        return self.formats[0] if self.formats else None

    def parse(self, block: bytes) -> ParsedBlock:
        lines = split_lines(block)
        lengths = pc.binary_length(lines).to_numpy(zero_copy_only=False)
        usable = (lengths <= MAX_LINE_BYTES) & ~_non_utf8(lines, block)
        if not self.formats:
            head = slice(0, DETECT_LINES)
            found, _count = detect(pc.filter(lines[head], pa.array(usable[head])))
            self.formats += [found] if found else []
        parts, changes = self._parse_usable(block, lines, usable)
        order = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        records = _concat_records([p[2] for p in parts])
        if len(parts) > 1:
            sort = np.argsort(order, kind="stable")
            order, records = order[sort], records.take(pa.array(sort))
        good = np.zeros(len(lines), dtype=bool)
        good[order] = True
        seconds = np.full(len(lines), np.nan)
        seconds[order] = records.column("time").to_numpy()
        bad = np.flatnonzero(~good)
        if len(bad):
            bad = bad[~_blank(pc.take(lines, pa.array(bad)))]
            seconds[bad] = _stamp_times(pc.take(lines, pa.array(bad)))
        times = self._estimated_times(seconds)
        malformed = _malformed_table(lines, bad, times, self.name, self.next_line)
        first = self.next_line
        self.next_line += len(lines)
        changes = [
            FormatChange(self.name, index + first, _int_or_none(times[index]), previous, new)
            for index, previous, new in changes
        ]
        return ParsedBlock(records, order + first, malformed, len(lines), changes)

    def _parse_usable(self, block: bytes, lines: pa.Array, usable: np.ndarray) -> tuple[list, list]:
        """Each format in turn on the lines not yet parsed, then presets on what is left.

        Returns the parts (format, line indexes, records) and the changes (index of the
        first line in the new format, previous format, new format)."""
        parts: list[tuple[LogFormat, np.ndarray, pa.Table]] = []
        changes: list[tuple[int, str, str]] = []
        remaining = np.flatnonzero(usable)
        fast = fast_records(self.formats[0], block, lines, usable) if self.formats else None
        if fast is not None:
            good, fields, seconds, status = fast
            if good.any():
                request = fields.pop("request", None)
                fields |= {} if request is None else request_parts(request)
                n = int(good.sum())
                records = _records(fields, seconds, status, self.formats[0], n, utf8_text)
                parts.append((self.formats[0], np.flatnonzero(good), records))
            remaining = remaining[~good[remaining]]
        for fmt in self.formats:
            if len(remaining):
                remaining = _take_part(fmt, lines, remaining, parts)
        if len(remaining) and self.formats:
            remaining = remaining[~_blank(pc.take(lines, pa.array(remaining)))]
        # A few bad lines in a block are junk, not a new format: detection is not tried.
        worth_detecting = len(remaining) >= MIN_CHANGE_LINES or len(remaining) * 2 >= len(lines)
        while len(remaining) and self.formats and worth_detecting:
            found = self._new_format(pc.take(lines, pa.array(remaining)))
            if found is None:
                break
            before = len(parts)
            remaining = _take_part(found, lines, remaining, parts)
            if len(parts) == before:
                break
            changes.append((int(parts[-1][1][0]), self.formats[0].name, found.name))
            self.formats.append(found)
        if len(self.formats) > 1:  # the format that read most of this block goes first next
            counts = {fmt.definition: 0 for fmt in self.formats}
            for fmt, index, _table in parts:
                counts[fmt.definition] += len(index)
            self.formats.sort(key=lambda fmt: -counts[fmt.definition])
        return parts, changes

    def _new_format(self, failed: pa.Array) -> LogFormat | None:
        """A preset, not yet in use, that fits most of the lines that failed, or None."""
        found, count = detect(failed, exclude=tuple(f.definition for f in self.formats))
        sample = min(len(failed), DETECT_LINES)
        if found is None or (count * 2 < sample and count < MIN_CHANGE_LINES):
            return None
        return found

    def _estimated_times(self, seconds: np.ndarray) -> np.ndarray:
        """Each line's own time if known, else the last known time before it (NaN if none)."""
        times = np.concatenate([[self.last_time], seconds])
        index = np.where(~np.isnan(times), np.arange(len(times)), 0)
        np.maximum.accumulate(index, out=index)
        filled = times[index][1:]
        known = np.flatnonzero(~np.isnan(filled))
        if len(known):
            # Junk at the very start of a file takes the time of the first good line after it.
            filled[: known[0]] = filled[known[0]]
            self.last_time = filled[-1]
        return filled


def parse_block(
    block: bytes, log_format: LogFormat | None = None
) -> tuple[pa.Table, np.ndarray, pa.BinaryArray]:
    """One block on its own (its format detected unless given): the good lines' records,
    the good-line mask and all the lines."""
    parsed = LogParser("block", log_format).parse(block)
    lines = split_lines(block)
    good = np.zeros(len(lines), dtype=bool)
    good[parsed.record_lines - 1] = True
    return parsed.records, good, lines


def _int_or_none(value: float) -> int | None:
    return None if np.isnan(value) else int(value)


def _concat_records(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return RECORD_SCHEMA.empty_table()
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _in_window(times: pa.Array, start: int, end: int) -> pa.Array:
    return pc.and_kleene(pc.greater_equal(times, start), pc.less(times, end))


def _records_in(records: pa.Table, start: int, end: int) -> pa.Table:
    """The records timed in [start, end): the table itself when all of them are."""
    bounds = pc.min_max(records.column("time")).as_py()
    if records.num_rows and start <= bounds["min"] and bounds["max"] < end:
        return records
    return records.filter(_in_window(records.column("time"), start, end))


def _chunk(parser: LogParser, block: bytes, lo: int, hi: int) -> LogChunk:
    parsed = parser.parse(block)
    keep_time = parsed.malformed.column("time")
    in_window = pc.or_kleene(_in_window(keep_time, lo, hi), pc.is_null(keep_time))
    return LogChunk(
        records=_records_in(parsed.records, lo, hi),
        malformed=parsed.malformed.filter(in_window),
        lines_read=parser.next_line - 1,
        file=parser.name,
        parsed=parsed.records.num_rows,
        skipped=parsed.malformed.num_rows,
        log_format=parser.log_format,
        format_changes=tuple(parsed.changes),
    )


def parse_blocks(
    blocks: Iterable[bytes],
    name: Path | str,
    start: datetime,
    end: datetime,
    *,
    log_format: LogFormat | None = None,
    first_line: int = 1,
) -> Iterator[LogChunk]:
    """Chunks of one stream's lines (blocks of whole lines) whose time is in [start, end).

    `log_format`: the stream's format (None: detect it); `first_line`: the number of the
    first line (to parse lines appended to a file read before).
    """
    lo, hi = int(start.timestamp()), int(end.timestamp())
    parser = LogParser(name, log_format, first_line)
    for block in blocks:
        yield _chunk(parser, block, lo, hi)


def read_log_file(
    path: Path,
    start: datetime,
    end: datetime,
    chunk_bytes: int = CHUNK_BYTES,
    *,
    log_format: LogFormat | None = None,
) -> Iterator[LogChunk]:
    """Chunks of one file's lines whose time falls in [start, end) (aware datetimes).

    A truncated or corrupt .gz (a rotation in progress, a partial copy) keeps what was
    read and adds one malformed entry saying where the file broke off.
    """
    lines_read = 0
    try:
        with open_log(path) as stream:
            blocks = line_blocks(stream, chunk_bytes)
            for chunk in parse_blocks(blocks, path, start, end, log_format=log_format):
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
            file=str(path),
            skipped=1,
        )


def read_access_logs(
    paths: Iterable[Path],
    start: datetime,
    end: datetime,
    chunk_bytes: int = CHUNK_BYTES,
    *,
    formats: Callable[[Path], LogFormat | None] | None = None,
) -> Iterator[LogChunk]:
    """Chunks of every file's lines in [start, end); malformed lines with no time are kept too.

    `formats` gives a file's configured format (None: detect it), e.g. `FormatConfig.for_file`.
    """
    for path in paths:
        log_format = formats(path) if formats else None
        yield from read_log_file(path, start, end, chunk_bytes, log_format=log_format)
