"""The fast path of the access-log parser: pyarrow's C++ CSV tokenizer splits a block's lines
into the format's columns, numpy checks each column against its directive's pattern and
converts it, and only the lines it cannot vouch for go to the RE2 regex (the slow path in
core/access_logs.py, which has the last word on them).

A line is taken here only when the regex would match it and extract the same values:

- it is valid UTF-8, not over-long, and holds no tab, form feed, backslash or lone CR
  (the only bytes that could make the CSV reading and the regex part ways: RE2's `\\s` is
  `[\\t\\n\\f\\r ]`, a quoted value may hold `\\"`, the tokenizer ends a row at a lone CR);
- its columns, joined by single spaces with the format's quotes around the quoted ones,
  make up the line exactly: the quotes sit where the layout puts them, no value holds a
  quote, and the lengths add up to the line's (so no column was quoted that the format
  does not quote, and none ran past its closing quote);
- each value fully matches its directive's pattern (the same pattern the line's regex
  has for it), the date is possible and the status is 100–599.

The CSV rows stay aligned with the lines: lone CRs and the quotes of lines already known
to be excluded are blanked in a copy of the block before tokenizing; if a line still
opened a quote it did not close (a row swallowing the next lines: fewer rows than lines),
the quotes of every line the format's regex does not match are blanked and the block is
tokenized again (the parser's former vouching, paid only by such blocks).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from agent_reports.core.log_formats import QUOTED, TOKEN, Column, LogFormat

MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_PLACEHOLDER = 1  # replaces the quotes and lone CRs the tokenizer must not see
_QUOTE, _SPACE, _CR, _NL, _DASH = 34, 32, 13, 10, 45
_EXCLUDING = (b"\t", b"\x0c", b"\\")  # with a lone CR: a line holding one is left to the regex
_MONTH_CODES = np.array([(ord(m[0]) << 16) | (ord(m[1]) << 8) | ord(m[2]) for m in MONTHS])
_ANY = f"^(?:{QUOTED})$"
_NON_EMPTY = f"^(?:{TOKEN})$"
_STATUS = r"^(?:\d{3})$"
_DIGITS_OR_DASH = r"^(?:\d+|-)$"


def _offsets_data(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A binary array's offsets (len + 1, absolute in its data) and data bytes."""
    _validity, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    return offsets, np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, np.uint8)


def _lines_of(positions: np.ndarray, line_offsets: np.ndarray) -> np.ndarray:
    return np.searchsorted(line_offsets, positions, side="right") - 1


def _blanked(
    block: bytes, line_offsets: np.ndarray, lines: np.ndarray, unusable, cr: np.ndarray
) -> bytes | np.ndarray:
    """The block with the quotes of `lines`, every byte of the `unusable` lines (the
    tokenizer hands a bad row's text to Python as UTF-8) and every lone CR replaced."""
    if not len(lines) and not len(cr):
        return block
    buffer = np.frombuffer(block, dtype=np.uint8)
    copy = buffer.copy()
    copy[cr] = _PLACEHOLDER
    if len(lines):
        quotes = np.flatnonzero(buffer == _QUOTE)
        copy[quotes[np.isin(_lines_of(quotes, line_offsets), lines)]] = _PLACEHOLDER
    for line in unusable:
        end = line_offsets[line + 1]
        copy[line_offsets[line] : end - (buffer[end - 1] == _NL)] = _PLACEHOLDER
    return copy


def _lone_crs(block: bytes, buffer: np.ndarray) -> np.ndarray:
    """Positions of CRs not followed by a newline (the tokenizer would end a row there)."""
    if b"\r" not in block:
        return np.zeros(0, np.int64)
    cr = np.flatnonzero(buffer == _CR)
    following = buffer[np.minimum(cr + 1, len(buffer) - 1)]
    return cr[(following != _NL) | (cr == len(buffer) - 1)]


def _excluded(
    block: bytes, buffer: np.ndarray, line_offsets: np.ndarray, usable: np.ndarray, cr
) -> np.ndarray:
    """Lines the fast path leaves to the regex whatever their columns hold."""
    excluded = ~usable
    for byte in _EXCLUDING:
        if byte in block:
            excluded[_lines_of(np.flatnonzero(buffer == byte[0]), line_offsets)] = True
    excluded[_lines_of(cr, line_offsets)] = True
    return excluded


def _read_csv(data, names: list[str]) -> tuple[pa.Table, list[int]]:
    """Every column as binary, and the numbers of the rows without the right column count."""
    invalid: list[int] = []

    def skip(row) -> str:
        invalid.append(row.number)
        return "skip"

    table = pa_csv.read_csv(
        pa.py_buffer(data),
        read_options=pa_csv.ReadOptions(
            column_names=names, use_threads=False, block_size=len(data) + 1
        ),
        parse_options=pa_csv.ParseOptions(
            delimiter=" ",
            quote_char='"',
            escape_char=False,
            double_quote=False,
            newlines_in_values=False,
            ignore_empty_lines=False,  # a blank line stays a row: rows stay lines
            invalid_row_handler=skip,
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.binary() for name in names},
            check_utf8=False,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, invalid


def _tokenize(
    fmt: LogFormat, block: bytes, line_offsets: np.ndarray, excluded: np.ndarray, usable, cr
) -> tuple[list[pa.Array], np.ndarray] | None:
    """The CSV columns of every row and the line of each row; None if rows and lines could
    not be aligned even with the unmatched lines' quotes blanked."""
    names = [str(i) for i in range(sum(2 if c.time else 1 for c in fmt.columns))]
    n = len(line_offsets) - 1
    unusable = np.flatnonzero(~usable)
    blanked = _blanked(block, line_offsets, np.flatnonzero(excluded), unusable, cr)
    table, invalid = _read_csv(blanked, names)
    if table.num_rows + len(invalid) != n:
        lines = pa.BinaryArray.from_buffers(
            pa.binary(), n, [None, pa.py_buffer(line_offsets), pa.py_buffer(block)]
        )
        unmatched = ~pc.match_substring_regex(lines, fmt.pattern).to_numpy(zero_copy_only=False)
        excluded |= unmatched
        blanked = _blanked(block, line_offsets, np.flatnonzero(excluded), unusable, cr)
        table, invalid = _read_csv(blanked, names)
        if table.num_rows + len(invalid) != n:
            return None
    row_lines = np.delete(np.arange(n), np.asarray(invalid, dtype=np.int64) - 1)
    return [_one_chunk(column) for column in table.columns], row_lines


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _lengths(column: pa.Array) -> np.ndarray:
    offsets, _data = _offsets_data(column)
    return np.diff(offsets)


def _layout_fits(
    columns: list[pa.Array], quoted: list[bool], buffer: np.ndarray, starts: np.ndarray, ends
) -> np.ndarray:
    """Rows whose columns, joined by spaces and quoted as the format quotes them, are exactly
    their line (`starts`/`ends`: each row's line, newline and a CR before it excluded)."""
    lengths = [_lengths(column) for column in columns]
    total = sum(lengths) + len(columns) - 1 + 2 * sum(quoted)
    ok = total == ends - starts
    position, quotes = starts.astype(np.int64), []
    for length, is_quoted in zip(lengths, quoted, strict=True):
        if is_quoted:
            quotes += [position, position + length + 1]
        position = position + length + 2 * is_quoted + 1
    if quotes:  # gathered line by line: the bytes of one line are near each other
        where = np.stack(quotes, axis=1).ravel()
        ok &= (np.take(buffer, where, mode="clip") == _QUOTE).reshape(-1, len(quotes)).all(1)
    for column in columns:  # a quote inside a value: the tokenizer and the regex disagree
        offsets, data = _offsets_data(column)
        quotes = np.flatnonzero(data == _QUOTE)
        if len(quotes):
            ok[np.searchsorted(offsets, quotes, side="right") - 1] = False
    return ok


def _bad_bytes(column: pa.Array, bad: np.ndarray) -> np.ndarray:
    """How many bytes of each value are `bad` (a mask over the column's data)."""
    offsets, _data = _offsets_data(column)
    counts = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
    return counts[offsets[1:]] - counts[offsets[:-1]]


def _not_digit(array: pa.Array) -> np.ndarray:
    """A mask over `array`'s data: the bytes that are not ASCII digits."""
    _offsets, data = _offsets_data(array)
    return (data < 48) | (data > 57)


def _digits_or_dash(column: pa.Array) -> np.ndarray:
    offsets, data = _offsets_data(column)
    lengths = np.diff(offsets)
    digits = (lengths > 0) & (_bad_bytes(column, _not_digit(column)) == 0)
    if not len(data):
        return digits
    first = data[np.minimum(offsets[:-1], len(data) - 1)]
    return digits | ((lengths == 1) & (first == _DASH))


def _fixed(array: pa.Array, width: int) -> np.ndarray:
    """A binary array of values `width` bytes long as an (n, width) matrix of the bytes."""
    offsets, data = _offsets_data(array)
    if not len(array):
        return np.zeros((0, width), dtype=np.uint8)
    return data[offsets[0] : offsets[0] + width * len(array)].reshape(len(array), width)


def _is_digit(matrix: np.ndarray) -> np.ndarray:
    return ((matrix >= 48) & (matrix <= 57)).all(axis=1)


def _status(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Three-digit statuses (100–599) as numbers, and which values are such a status."""
    shaped = _lengths(column) == 3
    status, ok = np.zeros(len(column), np.int64), np.zeros(len(column), bool)
    if shaped.any():
        digits = _fixed(column.filter(pa.array(shaped)), 3)
        ok[shaped] = _is_digit(digits)
        d = digits.astype(np.int64) - 48
        status[shaped] = d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]
    return status, ok & (status >= 100) & (status <= 599)


def _stamp(left: pa.Array, right: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """`[dd/Mon/yyyy:hh:mm:ss` and `±hhmm]` as UTC seconds, and which are such a stamp with a
    possible date (exactly what log_formats.TIME and the slow path's date check accept)."""
    n = len(left)
    shaped = (_lengths(left) == 21) & (_lengths(right) == 6)
    seconds, ok = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if not shaped.any():
        return seconds, ok
    if not shaped.all():
        keep = pa.array(shaped)
        left, right = left.filter(keep), right.filter(keep)
    a, b = _fixed(left, 21), _fixed(right, 6)
    form = (
        (a[:, 0] == ord("["))
        & (a[:, 3] == ord("/"))
        & (a[:, 7] == ord("/"))
        & (a[:, 12] == ord(":"))
        & (a[:, 15] == ord(":"))
        & (a[:, 18] == ord(":"))
        & _is_digit(a[:, [1, 2, 8, 9, 10, 11, 13, 14, 16, 17, 19, 20]])
        & ((b[:, 0] == ord("+")) | (b[:, 0] == ord("-")))
        & _is_digit(b[:, 1:5])
        & (b[:, 5] == ord("]"))
    )
    day0, day1, y0, y1, y2, y3, h0, h1, m0, m1, s0, s1 = (
        a[:, [1, 2, 8, 9, 10, 11, 13, 14, 16, 17, 19, 20]].T.astype(np.int64) - 48
    )
    letters = a[:, 4:7].T.astype(np.int64)
    code = (letters[0] << 16) | (letters[1] << 8) | letters[2]
    order = np.argsort(_MONTH_CODES)
    found = np.minimum(np.searchsorted(_MONTH_CODES[order], code), 11)
    month = np.where(_MONTH_CODES[order][found] == code, order[found] + 1, 0)
    z0, z1, z2, z3 = b[:, 1:5].T.astype(np.int64) - 48
    value, possible = local_to_utc(
        y0 * 1000 + y1 * 100 + y2 * 10 + y3,
        month,
        day0 * 10 + day1,
        h0 * 10 + h1,
        m0 * 10 + m1,
        s0 * 10 + s1,
        np.where(b[:, 0] == ord("-"), -1, 1),
        z0 * 10 + z1,
        z2 * 10 + z3,
    )
    seconds[shaped], ok[shaped] = value, possible & form
    return seconds, ok


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


def local_to_utc(year, month, day, hh, mm, ss, sign, tzh, tzm) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (UTC) of local times with their offset, and whether they are possible."""
    possible = (
        (month >= 1)
        & (year >= 1970)
        & (day >= 1)
        & (day <= _days_in_month(year, month))
        & (hh <= 23)
        & (mm <= 59)
        & (ss <= 60)  # a leap second is read as the next second
        & (tzh <= 14)
        & (tzm <= 59)
    )
    local = _days_from_civil(year, month, day) * 86400 + hh * 3600 + mm * 60 + ss
    return local - sign * (tzh * 3600 + tzm * 60), possible


def _check(column: Column, values: pa.Array, fields: dict[str, pa.Array]) -> np.ndarray | None:
    """Which values fully match the column's pattern (None: all do); its fields into
    `fields`."""
    if column.field:
        fields[column.field] = values
    if column.pattern == _ANY:  # no quote, no backslash: guaranteed above
        return None
    if column.pattern == _NON_EMPTY:  # no whitespace but the separators: guaranteed above
        return _lengths(values) > 0
    if column.pattern == _DIGITS_OR_DASH:
        return _digits_or_dash(values)
    if column.pattern == _STATUS:  # the status field's range is checked in `fast_records`
        return (_lengths(values) == 3) & (_bad_bytes(values, _not_digit(values)) == 0)
    if "(?P<" in column.pattern:
        parts = pc.extract_regex(values, column.pattern)
        fields |= {parts.type.field(i).name: parts.field(i) for i in range(parts.type.num_fields)}
        return parts.is_valid().to_numpy(zero_copy_only=False)
    return pc.match_substring_regex(values, column.pattern).to_numpy(zero_copy_only=False)


def fast_records(
    fmt: LogFormat, block: bytes, lines: pa.BinaryArray, usable: np.ndarray
) -> tuple[np.ndarray, dict[str, pa.Array], np.ndarray, np.ndarray] | None:
    """The lines of `block` this path vouches for (a mask over `lines`), their fields
    (binary, in line order), times and statuses; None when the format has no column layout
    or its rows could not be aligned with the lines."""
    if not fmt.columns:
        return None
    buffer = np.frombuffer(block, dtype=np.uint8)
    line_offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[: len(lines) + 1]
    cr = _lone_crs(block, buffer)
    excluded = _excluded(block, buffer, line_offsets, usable, cr)
    tokenized = _tokenize(fmt, block, line_offsets, excluded, usable, cr)
    if tokenized is None:
        return None
    columns, row_lines = tokenized
    starts, ends = line_offsets[row_lines], line_offsets[row_lines + 1]
    ends = ends - (buffer[ends - 1] == _NL)  # (a line holds at least its newline)
    ends = ends - ((ends > starts) & (buffer[np.maximum(ends - 1, 0)] == _CR))
    quoted = [c.quoted for c in fmt.columns for _ in range(2 if c.time else 1)]
    ok = ~excluded[row_lines] & _layout_fits(columns, quoted, buffer, starts, ends)
    fields: dict[str, pa.Array] = {}
    seconds = status = None
    index = 0
    for column in fmt.columns:
        if column.time:
            seconds, possible = _stamp(columns[index], columns[index + 1])
            ok &= possible
            index += 2
            continue
        valid = _check(column, columns[index], fields)
        ok &= True if valid is None else valid
        index += 1
    if "status" in fields:
        status, in_range = _status(fields["status"])
        ok &= in_range
    good = np.zeros(len(lines), dtype=bool)
    good[row_lines[ok]] = True
    if not ok.all():
        keep = pa.array(ok)
        fields = {name: values.filter(keep) for name, values in fields.items()}
    status = status[ok] if status is not None else np.zeros(int(ok.sum()), np.int64)
    return good, fields, seconds[ok], status


def _spans(data: pa.Buffer, lo: np.ndarray, hi: np.ndarray, valid: np.ndarray) -> pa.Array:
    """The byte ranges [lo, hi) of `data` as a binary array, null where not `valid`.

    The ranges lie in order, each inside its own value, so one array whose values are the
    ranges and the gaps between them holds them all; every other value is taken."""
    bounds = np.empty(2 * len(lo) + 1, dtype=np.int32)
    bounds[0:-1:2], bounds[1:-1:2] = np.where(valid, lo, 0), np.where(valid, hi, 0)
    bounds[-1] = bounds[-2] if len(lo) else 0
    np.maximum.accumulate(bounds, out=bounds)
    both = pa.BinaryArray.from_buffers(
        pa.binary(), len(bounds) - 1, [None, pa.py_buffer(bounds), data]
    )
    return both.take(pa.array(np.arange(0, 2 * len(lo), 2, dtype=np.int32), mask=~valid))


def request_parts(request: pa.Array) -> dict[str, pa.Array]:
    """Method, path and protocol as `^([A-Za-z]+) (\\S+)(?: (\\S+))?$` extracts them from
    requests with no whitespace but spaces: all null where it does not match."""
    offsets, data = _offsets_data(request)
    starts, ends = offsets[:-1], offsets[1:]
    spaces = np.flatnonzero(data[offsets[0] : offsets[-1]] == _SPACE).astype(np.int32)
    spaces += offsets[0]
    before = np.searchsorted(spaces, offsets)  # spaces before each value's start
    counts = np.diff(before)
    first_index = np.minimum(before[:-1], max(len(spaces) - 1, 0))
    padded = spaces if len(spaces) else np.zeros(1, np.int32)
    first = np.where(counts > 0, padded[first_index], ends)
    two = counts == 2
    last = np.where(two, padded[np.minimum(first_index + 1, len(padded) - 1)], ends)
    valid = ((counts == 1) | two) & (first > starts) & (last > first + 1)
    valid &= ~two | (ends > last + 1)
    buffer = request.buffers()[2] or pa.py_buffer(b"")
    method = _spans(buffer, starts, first, valid)
    letters = _bad_bytes(method, _not_letter(method)) == 0
    parts = {
        "method": method,
        "path": _spans(buffer, first + 1, last, valid),
        "protocol": _spans(buffer, last + 1, ends, valid & two),
    }
    if letters.all():
        return parts
    return {name: _hidden(values, ~letters) for name, values in parts.items()}


def _hidden(array: pa.Array, hide: np.ndarray) -> pa.Array:
    """`array` with nulls where `hide` is true (and where it was null)."""
    if not hide.any():
        return array
    if array.offset:
        return pc.if_else(pa.array(hide), None, array)
    if array.null_count:
        hide = hide | np.asarray(array.is_null())
    validity = pa.py_buffer(np.packbits(~hide, bitorder="little"))
    return pa.Array.from_buffers(array.type, len(array), [validity, *array.buffers()[1:]])


def utf8_text(field: pa.Array | None, length: int) -> pa.Array:
    """A binary field known to be valid UTF-8 as text; empty or '-' becomes null (as
    access_logs._text, without validating it again)."""
    if field is None:
        return pa.nulls(length, pa.string())
    offsets, data = _offsets_data(field)
    lengths = np.diff(offsets)
    first = data[np.minimum(offsets[:-1], len(data) - 1)] if len(data) else np.zeros(len(field))
    text = field.view(pa.string())
    return _hidden(text, (lengths == 0) | ((lengths == 1) & (first == _DASH)))


def _not_letter(array: pa.Array) -> np.ndarray:
    """A mask over `array`'s data: the bytes that are not ASCII letters."""
    _offsets, data = _offsets_data(array)
    lower = data | 32
    return (lower < ord("a")) | (lower > ord("z"))
