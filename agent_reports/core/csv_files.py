"""CSV files as spreadsheets and exporters write them: found, decoded, split and cached.

- Finding: every file under a folder, in subfolders too, any case of extension, plain or
  compressed (`.gz`, `.bz2`, `.xz`, `.zip`); a file that is not a table is listed with the
  reason, never dropped in silence.
- Decoding: a UTF-8 or UTF-16 byte-order mark decides; UTF-16 without one is recognised
  by its NUL bytes; otherwise strict UTF-8, and failing that charset-normalizer's guess,
  a Windows code page (an old Excel's cp1252) preferred, recorded in the table's dialect.
- Splitting: the delimiter (`,` `;` tab `|`) is the one that splits the header into the
  columns the caller needs; the decimal mark is `,` when a number cell of a non-comma file
  holds one; thousands separators (`1,234.5`, `1.234,5`, `1 234,5`) are removed.
- Caching: a parsed file is kept under the state dir, keyed by its identity (path,
  device, inode, size, mtime in ns): an unchanged file costs a stat, a changed one is read
  again.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import lzma
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from agent_reports.core.files import write_atomic

TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_OPENERS: dict[str, Callable[[Path], bytes]] = {
    ".gz": lambda path: gzip.decompress(path.read_bytes()),
    ".bz2": lambda path: bz2.decompress(path.read_bytes()),
    ".xz": lambda path: lzma.decompress(path.read_bytes()),
}
_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, ValueError)
NOT_A_TABLE = {
    ".xlsx": "an Excel workbook: save it as CSV",
    ".xls": "an Excel workbook: save it as CSV",
    ".ods": "a spreadsheet: save it as CSV",
    ".parquet": "a Parquet file: only CSV is read",
    ".json": "JSON: only CSV is read",
}


class InputError(ValueError):
    """Input that cannot be read, located by file, line and column for the person who fixes it."""

    def __init__(self, path: Path | str, line: int | None, column: str | None, problem: str):
        self.path, self.line, self.column, self.problem = str(path), line, column, problem
        where = self.path + (f":{line}" if line else "")
        super().__init__(f"{where}: " + (f"column '{column}': " if column else "") + problem)


# ------------------------------------------------------------------------------ finding


@dataclass(frozen=True)
class Found:
    """What a folder holds: the table files to read and the others, each with a reason."""

    folder: Path
    tables: list[Path]
    ignored: list[tuple[Path, str]]


def table_suffix(path: Path) -> str:
    """`.csv` for `AAPL.CSV`, `aapl.csv.gz` or `x.Csv.BZ2`; '' for anything else."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes and suffixes[-1] in TABLE_SUFFIXES else ""


def find_tables(folder: Path, setting: str) -> Found:
    """Every table file under `folder` (recursively, sorted by path); errors name the folder.

    `setting` says how the folder is configured, for the error a user reads.
    """
    if not folder.is_dir():
        raise InputError(folder, None, None, f"folder not found ({setting})")
    tables, ignored = [], []
    for path, reason in _walk(folder):
        if reason:
            ignored.append((path, reason))
        else:
            tables.append(path)
    if not tables:
        listed = "; ".join(f"{p.relative_to(folder)}: {why}" for p, why in ignored[:5])
        raise InputError(
            folder,
            None,
            None,
            "no CSV files here or in its subfolders (looked for *.csv, *.tsv, *.txt in any "
            "case, plain or .gz/.bz2/.xz/.zip)" + (f"; not read: {listed}" if listed else ""),
        )
    return Found(folder, tables, ignored)


def _walk(folder: Path) -> list[tuple[Path, str | None]]:
    """Every file under `folder`, sorted, with why it is not a table (None: it is one); a
    hidden folder (`.git`) is one entry, not walked into."""
    entries: list[tuple[Path, str | None]] = []
    for root, dirs, files in os.walk(folder):
        hidden = sorted(d for d in dirs if d.startswith("."))
        entries += [(Path(root) / d, "hidden folder") for d in hidden]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        entries += [(Path(root) / name, _not_a_table(name)) for name in files]
    return sorted(entries)


def _not_a_table(name: str) -> str | None:
    if name.startswith("."):
        return "hidden file"
    if name.startswith("~$"):
        return "an editor's lock file"
    if table_suffix(Path(name)) or name.lower().endswith(".zip"):
        return None  # a .zip is read when it holds one table file
    suffix = Path(name).suffix.lower()
    return NOT_A_TABLE.get(suffix, f"not a CSV file ({suffix or 'no extension'})")


# ----------------------------------------------------------------------------- decoding


def file_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed by its suffix; a `.zip` must hold one file."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1 or not table_suffix(Path(members[0])):
                raise ValueError(f"the archive holds {members[:5]}, expected one CSV file")
            return archive.read(members[0])
    return _OPENERS.get(suffix, Path.read_bytes)(path)


def decode(data: bytes) -> tuple[str, str]:
    """The text and the encoding it was read with (see the module docstring)."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding), encoding
    head = data[:4096]
    if len(head) >= 4 and head.count(0) * 3 > len(head):  # UTF-16 without a BOM
        encoding = "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
        return data.decode(encoding), encoding
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data))
    if not matches:
        raise ValueError("not text in any known encoding (a binary file?)")
    # Spreadsheets that do not write UTF-8 write the Windows code page: prefer one of those
    # among the plausible decodings (on short files the "best" is often a DOS code page).
    windows = [m for m in matches if m.encoding.startswith("cp125")]
    chosen = windows[0] if windows else matches[0]
    return str(chosen), chosen.encoding


# ----------------------------------------------------------------------------- splitting


@dataclass
class Table:
    """A file's header and data rows as text, each row with its line number in the file."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    delimiter: str
    encoding: str
    empty_rows: list[int] = field(default_factory=list)  # lines of rows with no value at all
    decimal: str = "."

    def dialect(self) -> str:
        decimal = ", decimal comma" if self.decimal == "," else ""
        return f"{DELIMITERS[self.delimiter]}-separated{decimal}, {self.encoding}"

    def cells(self, name: str) -> np.ndarray:
        """One column's stripped text as an object array, in row order."""
        position = self.header.index(name)
        return np.array([row[position].strip() for row in self.rows], dtype=object)

    def column(self, name: str) -> pd.Series:
        """One column's stripped text, indexed by line number."""
        position = self.header.index(name)
        return pd.Series([row[position].strip() for row in self.rows], index=self.lines, dtype=str)


def read_table(path: Path, header_fits: Callable[[list[str]], bool]) -> Table:
    """The file split by the delimiter under which `header_fits(header)` holds.

    Rows of another width than the header fail with their line; rows with no value in any
    field are kept aside (`empty_rows`) so they are counted, not lost. When no delimiter
    fits, the table has the header alone, for the caller's error about it.
    """
    try:
        text, encoding = decode(file_bytes(path))
    except _DECODE_ERRORS as error:
        raise InputError(path, None, None, f"cannot be read ({error})") from None
    text = text.lstrip("\ufeff")
    first = text.splitlines()[:2]
    hint = _SEP_HINT.match(first[0]) if first else None  # Excel's `sep=;` first line
    if hint:
        first = first[1:]
    if not first or not first[0].strip():
        raise InputError(path, 1, None, "the file is empty: expected a header line")
    delimiter = hint[1] if hint else choose_delimiter(first[0], header_fits)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        if hint:
            next(reader)
        header = [name.strip() for name in next(reader)]
        header, extra = _stacked_header(path, reader, header)
        table = Table(path, header, [], [], delimiter, encoding)
        if not header_fits(header):
            return table  # no rows: the caller says what the header lacks
        for row in reader:
            row += extra
            if not any(cell.strip() for cell in row):
                if row and len(row) > 1:
                    table.empty_rows.append(reader.line_num)
                continue
            if len(row) != len(header):
                raise width_error(path, reader.line_num, row, header)
            table.rows.append(row)
            table.lines.append(reader.line_num)
    except csv.Error as error:
        raise InputError(path, reader.line_num, None, f"cannot be read ({error})") from None
    return table


def _stacked_header(path: Path, reader: Any, header: list[str]) -> tuple[list[str], list[str]]:
    """The header, and cells to add to each row, of yfinance's `download(...).to_csv()`:
    three header lines, `Price,Close,...` / `Ticker,AAPL,...` / `Date,,...`: the ticker
    becomes a column. Any other header is returned as it is."""
    if not header or header[0].lower() != "price":
        return header, []
    second, third = next(reader, []), next(reader, [])
    if not (second and third and second[0].lower() == "ticker" and third[0].lower() == "date"):
        raise InputError(path, 2, None, "a 'Price' header line not followed by Ticker and Date")
    tickers = {cell.strip() for cell in second[1:]}
    if len(tickers) != 1:
        raise InputError(
            path, 2, "ticker", f"{len(tickers)} tickers side by side: save one ticker per file"
        )
    return [third[0].strip(), *header[1:], "Ticker"], [tickers.pop()]


_SEP_HINT = re.compile(r"^sep=([,;\t|])\s*$", re.IGNORECASE)


def choose_delimiter(header_line: str, header_fits: Callable[[list[str]], bool]) -> str:
    """The first delimiter under which the header fits; else the one giving most fields."""
    splits = {d: next(csv.reader([header_line], delimiter=d)) for d in DELIMITERS}
    for delimiter, names in splits.items():
        if header_fits([name.strip() for name in names]):
            return delimiter
    return max(splits, key=lambda d: len(splits[d]))


def looks_like(table: Table) -> str:
    """How the file reads, for an error about its header: 'semicolon-separated, utf-16'."""
    return f"the file looks {table.dialect()}; its header reads {table.header[:8]}"


def width_error(path: Path, line: int, row: list[str], header: list[str]) -> InputError:
    if len(row) < len(header):
        return InputError(
            path,
            line,
            header[len(row)],
            f"no value: the row has {len(row)} fields, the header {len(header)} (truncated?)",
        )
    return InputError(path, line, None, f"the row has {len(row)} fields, the header {len(header)}")


# ------------------------------------------------------------------------------ numbers

_GROUPED = {
    ".": re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$"),
    ",": re.compile(r"^[+-]?\d{1,3}(?:\.\d{3})+(?:,\d*)?$"),
}
_SPACES = re.compile(r"[\s\u00a0\u202f']")


def decimal_mark(table: Table, columns: Iterable[str]) -> str:
    """`,` when a non-comma file writes a number cell with a comma (`12,5`), else `.`."""
    if table.delimiter == ",":
        return "."
    for name in columns:
        if name in table.header and table.column(name).str.contains(",", regex=False).any():
            return ","
    return "."


def numbers(text: np.ndarray, decimal: str) -> tuple[np.ndarray, np.ndarray]:
    """`parse_numbers` over an array of cells, with the mask of cells that are not numbers
    (`null` and the like are blanks); plain columns convert in one numpy call."""
    if decimal == ".":
        try:
            values = np.array(text, dtype="float64")
        except ValueError:
            values = None
        if values is not None and np.isfinite(values).all():
            return values, np.zeros(len(values), dtype=bool)
    cells = pd.Series(text, dtype=str)
    cells = blank_nulls(cells)
    values = parse_numbers(cells, decimal).to_numpy()
    return values, ~np.isfinite(values) & (cells != "").to_numpy()


def parse_numbers(text: pd.Series, decimal: str) -> pd.Series:
    """Numbers from text cells with the file's decimal mark; thousands separators removed.

    Blank cells give NaN; a cell that is not a number gives NaN too, so the caller can
    point at it by comparing with the blanks. Plain cells take pandas' fast path; only
    the others are cleaned.
    """
    if decimal == ".":
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        odd = values.isna() & (text != "")
    else:
        values = pd.Series(float("nan"), index=text.index, dtype="float64")
        odd = text != ""
    if odd.any():
        values[odd] = _cleaned_numbers(text[odd], decimal)
    return values


def _cleaned_numbers(text: pd.Series, decimal: str) -> pd.Series:
    cleaned = text.str.replace(_SPACES, "", regex=True)
    grouped = cleaned.str.match(_GROUPED[decimal])
    thousands = "," if decimal == "." else "."
    cleaned = cleaned.where(~grouped, cleaned.str.replace(thousands, "", regex=False))
    if decimal == ",":
        cleaned = cleaned.str.replace(",", ".", regex=False)
    return pd.to_numeric(cleaned.where(cleaned != ""), errors="coerce")


_DATE_SPELLINGS = (
    (re.compile(r"^(\d{4})(\d{2})(\d{2})$"), r"\1-\2-\3"),  # Stooq's 20240305
    (re.compile(r"^(\d{2})\.(\d{2})\.(\d{4})$"), r"\3-\2-\1"),  # a European Excel's 05.03.2024
    (re.compile(r"^(\d{4}-\d{2}-\d{2})[T ].*$"), r"\1"),  # a timestamp: its local date
)
_NULL_WORDS = ("null", "nan", "n/a", "na", "#n/a", "none")
NULL_CELLS = frozenset(w for word in _NULL_WORDS for w in (word, word.upper(), word.title()))


def iso_date_text(text: pd.Series, keep_time: bool = False) -> pd.Series:
    """Dates as `YYYY-MM-DD` text from the spellings exporters use; others left as they are.
    A timestamp becomes its own (local) date unless `keep_time`."""
    for pattern, replacement in _DATE_SPELLINGS[:2] if keep_time else _DATE_SPELLINGS:
        text = text.str.replace(pattern, replacement, regex=True)
    return text


BLANK_CELLS = NULL_CELLS | {""}


def blank_nulls(text: pd.Series) -> pd.Series:
    """`null` (Yahoo), `NaN`, `N/A`, `#N/A` (Excel) cells as blanks."""
    return text.mask(text.isin(NULL_CELLS), "")


# ------------------------------------------------------------------------------- caching

T = TypeVar("T")


def file_identity(path: Path) -> tuple[str, int, int, int, int]:
    """(path, device, inode, size, mtime in ns): a file that changes changes this."""
    stat = path.stat()
    return os.path.abspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class ParsedCache:
    """Parsed files under `<state>/parsed_csv/<kind>/`, one entry per path.

    The entry holds the file identity and the parser version it was made with; any
    difference is a miss, and the new parse replaces the entry (written atomically, so a
    concurrent run reads the old entry or the new one). The state dir is this program's
    own, so its pickles are trusted as the asset values beside them are.
    """

    def __init__(self, root: Path | None, kind: str, version: str):
        self.root = root / kind if root is not None else None
        self.version = version
        self.hits = self.misses = 0

    def get(self, path: Path, parse: Callable[[Path], T]) -> T:
        """The parse of one file, from the cache while the file is unchanged."""
        identity = file_identity(path)
        return self._lookup(identity[0], identity, lambda: parse(path), 1)

    def folder(self, found: Found, compute: Callable[[], T]) -> T:
        """A value made from a whole folder's files (their combined rows), from the cache
        while no file was added, removed or changed: a stat per file, one entry read."""
        identity = tuple(file_identity(path) for path in found.tables), tuple(found.ignored)
        name = "folder:" + os.path.abspath(found.folder)
        return self._lookup(name, identity, compute, len(found.tables), count_miss=False)

    def _lookup(
        self, name: str, identity: Any, compute: Callable[[], T], files: int, count_miss=True
    ) -> T:
        if self.root is None:
            return compute()
        entry = self.root / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".pickle")
        key = (self.version, name, identity)
        cached = self._load(entry)
        if cached is not None and cached[0] == key:
            self.hits += files
            return cached[1]
        self.misses += files if count_miss else 0
        value = compute()
        # A read-only or full state dir: the read stands, the next run parses again.
        with contextlib.suppress(OSError):
            write_atomic(entry, pickle.dumps((key, value), protocol=pickle.HIGHEST_PROTOCOL))
        return value

    @staticmethod
    def _load(entry: Path) -> Any:
        try:
            with entry.open("rb") as handle:
                return pickle.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            return None  # a damaged or outdated entry: parse again and replace it


def default_cache_root() -> Path:
    """`<state dir>/parsed_csv`, read at run time."""
    from agent_reports.core import settings

    return settings.state_dir() / "parsed_csv"


def relative_name(path: Path, folder: Path) -> str:
    """The path as a user placed it in the drop folder: `2024/AAPL.csv`."""
    try:
        return path.relative_to(folder).as_posix()
    except ValueError:
        return os.fspath(path)


# ----------------------------------------------------------------------- whole folders


@dataclass
class FolderRead:
    """Each readable file's parse and the files not read, with why."""

    folder: Path
    parsed: list[tuple[Path, Any]]
    ignored: list[tuple[Path, str]]

    def coverage(self, summaries: list[dict[str, Any]]) -> dict[str, Any]:
        """What every CSV source reports: files, rows read, rows rejected, files not read.

        `summaries` has one dict per parsed file with at least file, rows and rejected.
        """
        return {
            "source": "files",
            "folder": self.folder.name,
            "files": summaries,
            "rows_read": sum(f["rows"] for f in summaries),
            "rows_rejected": sum(f["rejected"] for f in summaries),
            "ignored": [
                {"file": relative_name(p, self.folder), "reason": why} for p, why in self.ignored
            ],
        }


def read_folder(
    found: Found, parse: Callable[[Path], T], cache: ParsedCache, what: str
) -> FolderRead:
    """Every table file found, parsed through the cache.

    A `.txt` file whose header is not `what` (a README beside the exports) is listed as
    not read; any other file that fails stops the read, its error naming the others too.
    """
    folder = found.folder
    ignored = list(found.ignored)
    parsed, errors = [], []
    for path in found.tables:
        try:
            parsed.append((path, cache.get(path, parse)))
        except InputError as error:
            if error.line == 1 and table_suffix(path) == ".txt":
                ignored.append((path, f"a text file without {what}"))
            else:
                errors.append(error)
    if errors:
        raise all_errors(errors)
    if not parsed:
        listed = "; ".join(f"{relative_name(p, folder)}: {why}" for p, why in ignored[:5])
        raise InputError(folder, None, None, f"no readable CSV file here; not read: {listed}")
    ignored.sort()
    return FolderRead(folder, parsed, ignored)


def all_errors(errors: list[InputError], limit: int = 20) -> InputError:
    """The first error, its message naming the other unreadable files."""
    first = errors[0]
    if len(errors) == 1:
        return first
    others = ", ".join(e.path + (f":{e.line}" if e.line else "") for e in errors[1:limit])
    problem = f"{first.problem} (also unreadable: {others})"
    return InputError(first.path, first.line, first.column, problem)


# ------------------------------------------------------------------------------ coverage


def coverage_note(coverage: dict[str, Any], unit: str = "rows") -> str:
    """The first-screen line of a report: what its input held, what was set aside."""
    if coverage.get("source") != "files":
        window = coverage.get("rows_in_window", coverage.get("rows_read", 0))
        return f"Input: {coverage.get('source', 'unknown')}, {window:,} {unit} read."
    files = coverage["files"]
    text = f"Input: {len(files)} file(s) in {coverage['folder']}/, {coverage['rows_read']:,} {unit}"
    text += " read"
    if "rows_in_window" in coverage:
        text += f" ({coverage['rows_in_window']:,} in this window)"
    text += f", {coverage['rows_rejected']:,} rejected"
    examples = coverage.get("rejected_examples") or []
    if examples:
        more = coverage["rows_rejected"] - len(examples[:3])
        text += f" ({'; '.join(examples[:3])}{f'; {more:,} more' if more > 0 else ''})"
    ignored = coverage.get("ignored") or []
    if ignored:
        listed = "; ".join(f"{i['file']}: {i['reason']}" for i in ignored[:5])
        more = len(ignored) - 5
        text += f"; not read: {listed}{f'; {more} more' if more > 0 else ''}"
    return text + "."


COVERAGE_COLUMNS = ["file", "dialect", "rows", "rejected", "first date", "last date"]


def coverage_rows(coverage: dict[str, Any], limit: int = 50) -> list[list[Any]]:
    """One row per file for the report's input table (COVERAGE_COLUMNS, the dates only
    where the files have them), files with rejected rows first, then those not read."""
    files = sorted(coverage.get("files", []), key=lambda f: (-f["rejected"], f["file"]))
    rows = [
        [f["file"], f["dialect"], f["rows"], f["rejected"], f.get("first_date"), f.get("last_date")]
        for f in files[:limit]
    ]
    rows += [[i["file"], f"not read: {i['reason']}", 0, 0, None, None] for i in coverage["ignored"]]
    dated = any("first_date" in f for f in files)
    return rows if dated else [row[:4] for row in rows]


MAX_REJECTED_SHARE = 0.1


def rejected_problem(coverage: dict[str, Any]) -> str | None:
    """Why a read's rejected rows are too many to trust (more than MAX_REJECTED_SHARE of
    the rows read), or None."""
    read, rejected = coverage.get("rows_read", 0), coverage.get("rows_rejected", 0)
    if read and rejected / read > MAX_REJECTED_SHARE:
        return f"{rejected:,} of {read:,} rows rejected ({rejected / read:.0%})"
    return None
