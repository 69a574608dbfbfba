"""Access-log formats: a server's own format string compiled to an RE2 pattern, the common
presets, and the detection of the preset a file is written in.

A format is given as the server's config has it: an Apache `LogFormat` string
(`%h %l %u %t \\"%r\\" %>s %b`) or an nginx `log_format` string (`$remote_addr - ...`),
or by a preset name (`PRESETS`). `LogFormat.parse` turns it into one anchored pattern whose
named groups are the record's fields; directives the records do not use are matched as a
token (outside quotes) or a quoted string, so any format with `%t`/`$time_local` reads.

`detect(lines)` picks the preset that matches most of a sample of a file's lines (the
more specific preset wins a tie); "Combined + extra fields" is taken only when no specific
preset fits half the sample. A request time written as a plain integer is ambiguous
(Apache `%T` whole seconds, `%D` microseconds): the file's median decides, since no real
request takes a minute at the median and none is served in under 60 µs.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DETECT_LINES = 2000
CONFIG_FILE = ".agent_reports.toml"
MEDIAN_MICROSECONDS = 60  # an integer request time whose file median is at least this is µs

QUOTED = r'(?:[^"\\]|\\.)*'
TOKEN = r"\S+"
TIME = (
    r"\[(?P<day>\d{2})/(?P<mon>[A-Za-z]{3})/(?P<year>\d{4}):"
    r"(?P<hh>\d{2}):(?P<mm>\d{2}):(?P<ss>\d{2}) (?P<tzsign>[+-])(?P<tzh>\d{2})(?P<tzm>\d{2})\]"
)
NUMBER = r"\d+(?:\.\d+)?|-"
UPSTREAM_TIME = r"[\d.]+|-"
UPSTREAM_TIMES = r"(?:[\d.]+|-)(?:(?:, | : )(?:[\d.]+|-))*"
LINE_END = r"[ \t]*\r?\n?$"
EXTRA_FIELDS = r'(?: (?:"' + QUOTED + r'"|[^ "\r\n]\S*))+'

# Record field → (pattern outside quotes, pattern inside quotes).
FIELDS = {
    "client": (TOKEN, QUOTED),
    "user": (TOKEN, QUOTED),
    "vhost": (r"[^\s:]+", r'[^":]+'),
    "request": (None, QUOTED),
    "method": (r"[A-Za-z]+", r"[A-Za-z]+"),
    "path": (TOKEN, r'[^"\s]+'),
    "protocol": (TOKEN, r'[^"\s]+'),
    "status": (r"\d{3}", r"\d{3}"),
    "bytes": (r"\d+|-", r"\d+|-"),
    "referer": (TOKEN, QUOTED),
    "agent": (TOKEN, QUOTED),
    "rt": (NUMBER, NUMBER),
}
SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


PRESETS: dict[str, LogFormat] = {}  # filled below, once LogFormat can build them


class FormatError(ValueError):
    """A format string that cannot be used, with the reason."""


@dataclass(frozen=True)
class LogFormat:
    """A compiled format: `name` for reports, `definition` as written, the RE2 `pattern`.

    `rt_unit` is the seconds per unit of an integer request time (a value with a decimal
    point is always seconds); None until a preset's integer request time is resolved.
    """

    name: str
    definition: str
    pattern: str
    rt_unit: float | None = None
    fields: tuple[str, ...] = ()
    columns: tuple[Column, ...] | None = None  # the fast path's layout; None: regex only

    @classmethod
    def parse(cls, definition: str, name: str | None = None) -> LogFormat:
        """A preset name, or an Apache `LogFormat` / nginx `log_format` string."""
        text = definition.strip()
        if text in PRESETS:
            return PRESETS[text]
        if "$" in text and "%" not in text.replace("%%", ""):
            pieces = _nginx_pieces(text)
        else:
            pieces = _apache_pieces(text)
        pattern, fields, unit = _compile(pieces)
        if "time" not in fields:
            raise FormatError(
                f"{definition!r} has no timestamp: it needs %t (Apache) or $time_local (nginx)"
            )
        return cls(name or "custom", definition, pattern, unit, tuple(fields), _columns(pieces))

    def with_unit(self, unit: float) -> LogFormat:
        suffix = {1.0: "s", 1e-6: "us"}.get(unit, f"{unit:g}s")
        return replace(self, rt_unit=unit, name=f"{self.name} ({suffix})")

    @property
    def spec(self) -> str:
        """What `from_spec` needs to rebuild this format (to store beside a file's offset)."""
        return f"{self.rt_unit!r}|{self.name}|{self.definition}"

    @classmethod
    def from_spec(cls, spec: str) -> LogFormat:
        unit, name, definition = spec.split("|", 2)
        base = PRESET_BY_DEFINITION.get(definition) or cls.parse(definition, name)
        return replace(base, name=name, rt_unit=None if unit == "None" else float(unit))


def _rx(text: str) -> str:
    """Literal text as RE2 pattern text."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


# A piece is literal text (str) or a directive: (field or None, unit or None, raw pattern).
Piece = str | tuple[str | None, float | None, str | None]

_APACHE = re.compile(r"%(?:\{([^}]*)\})?[<>]?(?:!?[\d,]+)?([a-zA-Z%])")
_APACHE_FIELDS = {"h": "client", "a": "client", "u": "user", "r": "request", "s": "status"}
_APACHE_FIELDS |= {"b": "bytes", "B": "bytes", "O": "bytes", "v": "vhost", "V": "vhost"}
_APACHE_FIELDS |= {"m": "method", "U": "path", "H": "protocol", "p": None, "l": None}
_HEADERS = {"referer": "referer", "user-agent": "agent"}


def _apache_pieces(text: str) -> list[Piece]:
    text = text.replace('\\"', '"').replace("\\t", "\t")
    pieces: list[Piece] = []
    position = 0
    for match in _APACHE.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        argument, letter = match.group(1), match.group(2)
        pieces.append(_apache_directive(argument, letter))
    pieces.append(text[position:])
    return pieces


def _apache_directive(argument: str | None, letter: str) -> Piece:
    if letter == "%":
        return "%"
    if letter == "t":
        if argument:
            raise FormatError(f"%{{{argument}}}t: only the default %t timestamp is supported")
        return ("time", None, None)
    if letter == "D":
        return ("rt", 1e-6, r"\d+|-")
    if letter == "T":
        if argument not in (None, "s", "ms", "us", "auto"):
            raise FormatError(f"%{{{argument}}}T: the unit must be s, ms or us")
        unit = None if argument == "auto" else SECONDS[argument or "s"]
        return ("rt", unit, NUMBER if argument == "auto" else r"\d+|-")
    if letter == "i" and argument and argument.lower() in _HEADERS:
        return (_HEADERS[argument.lower()], None, None)
    if letter == "p":
        return (None, None, r"\d+")
    if letter in ("I", "S", "k"):
        return (None, None, r"\d+|-")
    return (_APACHE_FIELDS.get(letter) if not argument else None, None, None)


_NGINX = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_NGINX_FIELDS = {
    "remote_addr": "client",
    "realip_remote_addr": "client",
    "remote_user": "user",
    "request": "request",
    "status": "status",
    "body_bytes_sent": "bytes",
    "bytes_sent": "bytes",
    "http_referer": "referer",
    "http_user_agent": "agent",
    "host": "vhost",
    "server_name": "vhost",
    "http_host": "vhost",
    "request_method": "method",
    "request_uri": "path",
    "uri": "path",
    "server_protocol": "protocol",
}


def _nginx_pieces(text: str) -> list[Piece]:
    pieces: list[Piece] = []
    position = 0
    for match in _NGINX.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        variable = match.group(1) or match.group(2)
        if variable == "time_local":
            pieces.append(("time", None, None))
        elif variable == "request_time":
            pieces.append(("rt", 1.0, r"\d+\.\d+"))  # always ms precision
        elif variable == "upstream_response_time":
            pieces.append((None, None, UPSTREAM_TIMES))
        else:
            pieces.append((_NGINX_FIELDS.get(variable), None, None))
    pieces.append(text[position:])
    return _nginx_brackets(pieces)


def _nginx_brackets(pieces: list[Piece]) -> list[Piece]:
    """nginx writes `[$time_local]`: the brackets belong to the timestamp pattern."""
    out: list[Piece] = []
    for index, piece in enumerate(pieces):
        if isinstance(piece, tuple) and piece[0] == "time":
            before = out[-1] if out and isinstance(out[-1], str) else ""
            after = pieces[index + 1] if index + 1 < len(pieces) else ""
            if not (before.endswith("[") and isinstance(after, str) and after.startswith("]")):
                raise FormatError("$time_local must be written as [$time_local]")
            out[-1] = before[:-1]
            out.append(piece)
            pieces[index + 1] = after[1:]
        else:
            out.append(piece)
    return out


@dataclass(frozen=True)
class Column:
    """One space-separated field of a line as a CSV tokenizer sees it (quotes stripped).

    `pattern`: the anchored pattern the whole value must match (the same text the line's
    pattern has for it); `field`: the record field the column holds alone, else the
    pattern's named groups are the fields (literals or several directives: `%v:%p`,
    `%{ms}Tms`); `time`: the two columns `[dd/Mon/yyyy:hh:mm:ss` and `±hhmm]`.
    """

    field: str | None = None
    pattern: str | None = None
    quoted: bool = False
    time: bool = False


def _split_columns(pieces: list[Piece]) -> list[list[Piece]] | None:
    """The pieces grouped by the spaces (outside quotes) that separate a line's columns."""
    columns: list[list[Piece]] = [[]]
    quoted = False
    for piece in pieces:
        if not isinstance(piece, str):
            if piece[2] == UPSTREAM_TIMES:  # one upstream: a list (", ") is left to the regex
                piece = (piece[0], piece[1], UPSTREAM_TIME)
            if not quoted and " " in (piece[2] or ""):
                return None  # a value that may hold spaces: not tokenizable
            columns[-1].append(piece)
            continue
        for char in piece:
            if char == " " and not quoted:
                columns.append([])
                continue
            quoted ^= char == '"'
            columns[-1].append(char)
    return columns


def _columns(pieces: list[Piece]) -> tuple[Column, ...] | None:
    """The fast path's column layout, or None when a value may hold a space or a quote
    sits inside a column (only the regex reads such a format)."""
    groups = _split_columns(pieces)
    if groups is None:
        return None
    columns = []
    seen: set[str] = set()
    for group in groups:
        quoted = len(group) >= 2 and group[0] == '"' and group[-1] == '"'
        inner = group[1:-1] if quoted else group
        if any(piece == '"' for piece in inner):
            return None
        if len(inner) == 1 and isinstance(inner[0], tuple):
            field, _unit, raw = inner[0]
            if field == "time":
                columns.append(Column(time=True))
                continue
            named = field if field and field not in seen else None
            seen.add(named or "")
            columns.append(Column(named, f"^(?:{_body(field, raw, quoted)})$", quoted))
            continue
        literal_pieces = ["".join(inner)] if all(isinstance(p, str) for p in inner) else inner
        pattern, fields, _unit = _compile(_merge_chars(literal_pieces), seen, quoted)
        seen.update(fields)
        columns.append(Column(None, pattern.removesuffix(LINE_END) + "$", quoted))
    return tuple(columns)


def _merge_chars(pieces: list[Piece]) -> list[Piece]:
    """Consecutive one-character literals joined back into text."""
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


def _body(field: str | None, raw: str | None, quoted: bool) -> str:
    """The pattern of a directive's value, inside or outside quotes."""
    outside, inside = FIELDS.get(field, (None, None)) if field else (None, None)
    return raw or (inside if quoted else outside) or (QUOTED if quoted else TOKEN)


def _compile(
    pieces: list[Piece], seen: set[str] | frozenset[str] = frozenset(), quoted: bool = False
) -> tuple[str, list[str], float | None]:
    """The anchored pattern, the fields it names (each once), and the request-time unit;
    `quoted`: the pieces sit inside quotes (a column whose quotes the tokenizer strips)."""
    parts, fields, unit = ["^"], [], None
    for piece in pieces:
        if isinstance(piece, str):
            parts.append(_rx(piece))
            quoted ^= piece.count('"') % 2 == 1
            continue
        field, piece_unit, raw = piece
        if field == "time":
            if "time" in fields:
                raise FormatError("the format has two timestamps")
            parts.append(TIME)
            fields.append("time")
            continue
        body = _body(field, raw, quoted)
        if field and field not in fields and field not in seen:
            fields.append(field)
            if field == "rt":
                unit = piece_unit
            parts.append(f"(?P<{field}>{body})")
        else:
            parts.append(f"(?:{body})")
    return "".join(parts) + LINE_END, fields, unit


COMMON = '%h %l %u %t "%r" %>s %b'
COMBINED = COMMON + ' "%{Referer}i" "%{User-agent}i"'
NGINX_COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)
NGINX_MAIN = NGINX_COMBINED + ' "$http_x_forwarded_for"'
NGINX_TIMES = " $request_time $upstream_response_time"

# Most specific first: that order breaks ties in detection.
_PRESET_DEFINITIONS = {
    "traefik": COMBINED + ' %k "%{router}x" "%{server}x" %{ms}Tms',
    "nginx_main_timed": NGINX_MAIN + NGINX_TIMES,
    "nginx_timed": NGINX_COMBINED + NGINX_TIMES,
    "vhost_combined": '%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"',
    "combinedio": COMBINED + " %I %O",
    "combined_rt": COMBINED + " %{auto}T",
    "nginx_main": NGINX_MAIN,
    "combined": COMBINED,
    "vhost_common": '%v %h %l %u %t "%r" %>s %b',
    "common": COMMON,
}
PRESETS.update({name: LogFormat.parse(text, name) for name, text in _PRESET_DEFINITIONS.items()})
_combined = PRESETS["combined"]
COMBINED_EXTRA = replace(
    _combined,
    name="combined_extra",
    definition=COMBINED + " <extra fields>",
    pattern=_combined.pattern.removesuffix(LINE_END) + EXTRA_FIELDS + LINE_END,
    columns=None,
)
PRESET_BY_DEFINITION = {f.definition: f for f in [*PRESETS.values(), COMBINED_EXTRA]}


def _matches(lines: pa.Array, log_format: LogFormat) -> int:
    return pc.sum(pc.match_substring_regex(lines, log_format.pattern)).as_py() or 0


def detect(lines: pa.Array, exclude: tuple[str, ...] = ()) -> tuple[LogFormat | None, int]:
    """The preset that fits most of the first DETECT_LINES lines, and how many it fits."""
    sample = lines.slice(0, DETECT_LINES)
    best, best_count = None, 0
    for log_format in PRESETS.values():
        if log_format.definition in exclude:
            continue
        count = _matches(sample, log_format)
        if count > best_count:
            best, best_count = log_format, count
    if best_count * 2 < len(sample) and COMBINED_EXTRA.definition not in exclude:
        extra = _matches(sample, COMBINED_EXTRA)
        if extra > best_count:
            best, best_count = COMBINED_EXTRA, extra
    if best is not None and best.rt_unit is None and "rt" in best.fields:
        best = best.with_unit(_integer_unit(sample, best))
    return best, best_count


def _integer_unit(sample: pa.Array, log_format: LogFormat) -> float:
    """Seconds or microseconds for a preset's integer request time, from the file's median."""
    values = pc.extract_regex(sample, log_format.pattern).field("rt")
    integers = pc.filter(values, pc.match_substring_regex(values, r"^\d+$")).cast(pa.string())
    if len(integers) == 0:
        return 1.0
    median = float(np.median(integers.cast(pa.int64()).to_numpy()))
    return 1e-6 if median >= MEDIAN_MICROSECONDS else 1.0


@dataclass(frozen=True)
class FormatConfig:
    """Which format a file is in: `<logs>/.agent_reports.toml` globs, then a default."""

    folder: Path
    globs: tuple[tuple[str, LogFormat], ...] = ()
    default: LogFormat | None = None

    @classmethod
    def load(cls, folder: Path, default: str | None = None) -> FormatConfig:
        """Read the folder's config file; `default` (AGENT_REPORTS_LOG_FORMAT) for the rest.

        The file maps globs (relative to the folder) to a preset name or a format string:

            [formats]
            "nginx/*" = '$remote_addr - $remote_user [$time_local] "$request" ...'
            "apache/*.log*" = "combined"
        """
        from agent_reports.core.sources import InputError

        path = folder / CONFIG_FILE
        globs = []
        if path.is_file():
            try:
                table = tomllib.loads(path.read_text(encoding="utf-8")).get("formats", {})
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
                raise InputError(path, None, None, f"not valid TOML ({error})") from None
            for glob, text in table.items():
                try:
                    globs.append((glob, LogFormat.parse(str(text), glob)))
                except FormatError as error:
                    raise InputError(path, None, f"formats.{glob}", str(error)) from None
        try:
            fallback = LogFormat.parse(default) if default else None
        except FormatError as error:
            raise InputError("AGENT_REPORTS_LOG_FORMAT", None, None, str(error)) from None
        return cls(folder, tuple(globs), fallback)

    def for_file(self, path: Path) -> LogFormat | None:
        """The configured format of `path`, or None: detect it."""
        try:
            relative = path.relative_to(self.folder).as_posix()
        except ValueError:
            relative = path.name
        for glob, log_format in self.globs:
            if fnmatch.fnmatch(relative, glob) or fnmatch.fnmatch(path.name, glob):
                return log_format
        return self.default
