"""The report every analysis produces, rendered as JSON, Markdown and HTML and written atomically.

The JSON is the record (`analysis`, `partition`, `generated_by`, `input_fingerprint`,
`summary`, `findings`, `metrics`, ...); Markdown and HTML are views of it. Everything
in a report derives from the partition's inputs and the cached analyst answer, never
from the clock, so re-rendering a partition gives the same bytes.

Text in a report comes from untrusted data (log lines, customer notes, file names) and
from the LLM. Every view is neutralised here, once (docs/hostile-text.md): terminal and
layout controls become visible escapes (`neutral_text`), CSV cells cannot start a
spreadsheet formula (`csv_cell`), and the JSON keeps the exact text with those
characters escaped as `\\uXXXX`.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape
from markupsafe import Markup, escape

from agent_reports.core.files import write_all_atomic


@dataclass(frozen=True)
class Table:
    """A presentation table: the Markdown and HTML show these, the JSON keeps `metrics`.

    `formats` names how each column's numbers read (`format_value`: price, pct, rate,
    ratio, int, score, text); a column without one gets the general number format. An
    empty table still shows, saying "none"."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    formats: list[str] | None = None

    def cells(self) -> list[list[str]]:
        """The rows as text, each value in its column's format."""
        kinds = list(self.formats or [])
        kinds += ["num"] * (len(self.columns) - len(kinds))
        return [[format_value(k, v) for k, v in zip(kinds, row, strict=False)] for row in self.rows]


@dataclass(frozen=True)
class Chart:
    """A small inline SVG chart (core/charts.py) for the HTML view; the Markdown view
    shows `table`, the same figures as text."""

    title: str
    svg: str
    table: Table


class Note(str):
    """A report note with its severity: `info`, `warning` or `error`. The JSON keeps the
    text in `notes` and the severities beside it in `note_levels`."""

    level: str

    def __new__(cls, text: str, level: str = "info") -> Note:
        if level not in LEVELS:
            raise ValueError(f"note level {level!r} is not one of {LEVELS}")
        note = super().__new__(cls, text)
        note.level = level
        return note


LEVELS = ("error", "warning", "info")  # the order call-outs show in


def notes_at(level: str, texts: Iterable[str]) -> list[Note]:
    return [Note(text, level) for text in texts]


@dataclass(frozen=True)
class Image:
    """A chart: PNG bytes embedded in the HTML (a data URI), named in the Markdown."""

    title: str
    png: bytes

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Attachment:
    """A file that goes with the report (written beside it, attached to its email)."""

    filename: str
    content_type: str
    data: bytes

    def __post_init__(self) -> None:
        """A text attachment (CSV, ...) carries no control character, whoever made it."""
        object.__setattr__(self, "filename", neutral_text(self.filename))
        if self.content_type.startswith("text/"):
            text = self.data.decode("utf-8", errors="replace")
            object.__setattr__(self, "data", neutral_text(text).encode())


@dataclass
class Report:
    analysis: str
    partition: str
    window_start: str
    window_end: str
    generated_by: str
    input_fingerprint: str
    prompt_version: str
    summary: str
    findings: list[dict[str, Any]]
    metrics: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    degraded: bool = False
    notes: list[str] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    llm: dict[str, Any] | None = None  # model, quality score, tokens, cost (analyst.py)
    investigation: list[dict[str, Any]] | None = None  # tool calls (None: tools were off)
    note_levels: list[str] = field(default_factory=list)  # one per note: info|warning|error
    timezone: str = "UTC"  # the zone the window is labelled in
    charts: list[Chart] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Levels come from `Note`s (or the JSON's `note_levels`); plain text is info."""
        if len(self.note_levels) != len(self.notes):
            self.note_levels = [getattr(n, "level", "info") for n in self.notes]
        self.notes = [str(n) for n in self.notes]

    def callouts(self) -> list[tuple[str, list[str]]]:
        """One call-out per severity that has notes, the most severe first."""
        levels = list(zip(self.note_levels, self.notes, strict=True))
        grouped = [(lv, [n for level, n in levels if level == lv]) for lv in LEVELS]
        return [(level, notes) for level, notes in grouped if notes]

    def window_text(self) -> str:
        """The window as people read it, with its zone: `2024-03-04 00:00 → 2024-03-05
        00:00 UTC`, or `… New York time (UTC−05:00)`."""
        return window_text(self.window_start, self.window_end, self.timezone)

    @property
    def title(self) -> str:
        return f"{self.analysis.capitalize()} report — {self.partition}"

    def to_json(self) -> str:
        record = asdict(self)
        for view_only in ("tables", "images", "attachments", "charts"):
            record.pop(view_only)
        if record["investigation"] is None:  # tools off: the same record as before them
            record.pop("investigation")
        text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False)
        return json_escaped(text) + "\n"

    def to_markdown(self) -> str:
        """Summary first, then the call-outs, findings, charts (as tables) and tables."""
        lines = [f"# {md_text(self.title)}", "", f"_Window {md_text(self.window_text())}._", ""]
        lines += ["## Summary", "", md_text(self.summary), ""]
        for level, notes in self.callouts():
            lines.append(f"> **{CALLOUT_TITLES[level]}**")
            lines += [f"> - {md_text(note)}" for note in notes]
            lines.append("")
        lines += ["## Findings", ""]
        if not self.findings:
            lines.append("None.")
        lines += [f"- **{md_text(t)}**: {md_text(d)}" for t, d in self.finding_lines()]
        for chart in self.charts:
            lines += ["", *_md_table(chart.table, level="###")]
        for image in self.images:
            lines += ["", f"_Chart: {md_text(image.title)} (in the HTML report)._"]
        for attachment in self.attachments:
            lines += ["", f"_Attached: `{md_text(attachment.filename)}`._"]
        lines += investigation_section(self.investigation, markdown=True)
        for table in self.tables:
            lines += ["", *_md_table(table)]
        lines += [
            "",
            "---",
            f"Generated by `{md_text(self.generated_by)}` · prompt {md_text(self.prompt_version)}"
            f" · inputs `{self.input_fingerprint[:16]}`",
            "",
        ]
        return neutral_text("\n".join(lines))

    def finding_lines(self) -> list[tuple[str, str]]:
        """(title, detail) per finding; the subjects follow the title unless it names
        them all already ("BRVO −2.87 %", not "BRVO −2.87 % (BRVO)")."""
        lines = []
        for finding in self.findings:
            title = str(finding["title"])
            missing = [str(s) for s in finding.get("subjects", []) if not _names(title, str(s))]
            if missing:
                title += f" ({', '.join(missing)})"
            lines.append((title, str(finding["detail"])))
        return lines

    def to_html(self, image_urls: list[str] | None = None, chart_tables: bool = False) -> str:
        """The HTML view; images as data URIs unless `image_urls` (e.g. `cid:` for email);
        `chart_tables` adds each chart's figures as a table (mail clients that drop SVG)."""
        urls = image_urls if image_urls is not None else [i.data_uri() for i in self.images]
        images = list(zip(self.images, urls, strict=True))
        charts = [Markup(chart.svg) for chart in self.charts]  # built and escaped by charts.py
        return neutral_text(
            _HTML.render(
                report=self,
                images=images,
                investigation=investigation_section(self.investigation, markdown=False),
                charts=zip(self.charts, charts, strict=True),
                titles=CALLOUT_TITLES,
                chart_tables=chart_tables,
            )
        )

    def paths(self, root: Path) -> dict[str, Path]:
        folder = root / self.analysis
        paths = {ext: folder / f"{self.partition}.{ext}" for ext in ("json", "md", "html")}
        for attachment in self.attachments:
            paths[attachment.filename] = folder / f"{self.partition}.{attachment.filename}"
        return paths

    def write(self, root: Path) -> dict[str, Path]:
        """Write the three files atomically; the JSON record goes last, as the commit mark."""
        paths = self.paths(root)
        write_all_atomic(
            [
                *((paths[a.filename], a.data) for a in self.attachments),
                (paths["md"], self.to_markdown().encode()),
                (paths["html"], self.to_html().encode()),
                (paths["json"], self.to_json().encode()),
            ]
        )
        return paths


def investigation_section(calls: list[dict[str, Any]] | None, markdown: bool) -> Any:
    """The "Investigation" section: every tool call, its arguments and (cut) result, so a
    reader sees what the narrative rests on. Markdown lines, or HTML as Markup; nothing
    when tools were off. Arguments come from the model, results from the data: escaped."""
    if calls is None:
        return [] if markdown else ""
    rows = [
        (
            str(call.get("step", "")),
            str(call.get("tool", "")),
            json.dumps(call.get("arguments"), ensure_ascii=False, sort_keys=True),
            str(call.get("result", "")),
        )
        for call in calls
    ]
    if markdown:
        lines = ["", "## Investigation", ""]
        if not rows:
            return [*lines, "No tool calls."]
        return lines + [
            f"{step}. **{md_text(tool)}** {md_text(arguments)} → {md_text(result)}"
            for step, tool, arguments, result in rows
        ]
    items = "".join(
        f"<li><code>{escape(tool)}</code> {escape(arguments)} → <code>{escape(result)}</code></li>"
        for _step, tool, arguments, result in rows
    )
    body = f"<ol>{items}</ol>" if rows else "<p>No tool calls.</p>"
    return Markup(f"<h2>Investigation</h2>\n{body}\n")


def _names(title: str, subject: str) -> bool:
    """Whether `title` names `subject` as a word (BRVO in "BRVO +2.69 %", not A in it)."""
    return re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", title) is not None


CALLOUT_TITLES = {"error": "Alert", "warning": "Warning", "info": "Note"}


def _md_table(table: Table, level: str = "##") -> list[str]:
    lines = [f"{level} {md_text(table.title)}", ""]
    if not table.rows:
        return [*lines, "None."]
    lines.append("| " + " | ".join(md_text(c) for c in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(md_text(v) for v in row) + " |" for row in table.cells()]
    return lines


def format_cell(value: Any) -> str:
    """A value in the general format: `–` for none, yes/no, numbers to 4 significant
    decimals at most (prices, returns and rates have formats of their own)."""
    return format_value("num", value)


def format_value(kind: str, value: Any) -> str:
    """One number as every view shows it.

    price: 2 decimals (`1,234.50`); pct: a signed percentage (`+1.23 %`, for returns and
    changes); rate: a percentage (`4.20 %`, for shares and probabilities); ratio: `1.25×`;
    int: `1,234`; score: signed, 1 decimal; text and num: as is, floats trimmed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, int | float) or kind == "text":
        return str(value)
    if kind == "price":
        return f"{value:,.2f}"
    if kind == "pct":
        return f"{value * 100:+.2f} %".replace("-", "−")
    if kind == "rate":
        return f"{value * 100:.2f} %"
    if kind == "ratio":
        return f"{value:.2f}×"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "score":
        return f"{value:+.1f}".replace("-", "−")
    if isinstance(value, int):
        return f"{value:,}"
    text = f"{value:,.2f}" if abs(value) >= 100 else f"{value:,.4f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


_ZONE_NAMES = {"UTC": "UTC", "America/New_York": "New York time"}


def window_text(start: str, end: str, zone: str = "UTC") -> str:
    """`2024-03-04 00:00 → 2024-03-05 00:00 UTC`; outside UTC the zone's name and the
    offset, so a New York window never reads as UTC."""
    try:
        first, last = datetime.fromisoformat(start), datetime.fromisoformat(end)
    except ValueError:  # not a time: shown as written
        return f"{start} → {end} ({zone})"
    text = f"{first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M}"
    offset = first.utcoffset()
    if zone == "UTC" and not offset:
        return f"{text} UTC"
    minutes = int((offset.total_seconds() if offset else 0) // 60)
    sign = "+" if minutes >= 0 else "−"
    utc = f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{text} {_ZONE_NAMES.get(zone, zone)} ({utc})"


# Characters no view shows raw: C0 controls but tab and newline, DEL, C1 controls, the
# line and paragraph separators, the bidi embeddings, overrides and isolates ("Trojan
# Source"), and lone surrogates (undecodable bytes smuggled through a str).
_HOSTILE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# Of those, what json.dumps(ensure_ascii=False) leaves raw: it escapes C0 itself.
_JSON_RAW = re.compile(r"[\x7f-\x9f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def neutral_text(value: Any) -> str:
    """The text with every hostile character as a visible escape (ESC → `\\x1b`, RLO →
    `\\u202e`), the notation the log reader uses for undecodable bytes; CRLF becomes LF."""
    text = str(value)
    if not _HOSTILE.search(text):
        return text
    return _HOSTILE.sub(_escape, text.replace("\r\n", "\n"))


def json_escaped(text: str) -> str:
    """JSON text with the characters json.dumps leaves raw written as `\\uXXXX`: the same
    value once parsed, but nothing a terminal or a line-based tool would act on."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# What makes a spreadsheet read a cell as a formula (OWASP "CSV injection"), the
# full-width forms included: some spreadsheet locales convert them.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> Any:
    """A CSV cell from data: text that would start a formula gets a leading `'`; numbers
    stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """A CSV file (UTF-8, LF) whose cells are safe to open in a spreadsheet."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_cell(c) for c in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buffer.getvalue().encode()


_MD_SPECIAL = str.maketrans(
    {c: f"\\{c}" for c in "\\`*_[]<>|#!"} | {"\n": " ", "\r": " ", "&": "&amp;"}
)


def md_text(value: Any) -> str:
    """Text from data made inert in Markdown: no markup, no HTML, no line breaks."""
    return str(value).translate(_MD_SPECIAL)


_HTML = Environment(
    autoescape=select_autoescape(default=True, default_for_string=True)
).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{ report.title }}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem}
body{color:#1b1f24;line-height:1.45}
h1{margin-bottom:.2rem}
h2{margin-top:1.8rem;font-size:1.2rem;border-bottom:1px solid #d8dee4;padding-bottom:.2rem}
h3{font-size:1rem;margin:.4rem 0}
.meta{color:#57606a;margin-top:0}
.summary{font-size:1.05rem}
.callout{border-left:4px solid;border-radius:4px;padding:.4rem .9rem;margin:.6rem 0}
.callout ul{margin:.2rem 0;padding-left:1.2rem}
.callout strong{display:block}
.error{background:#ffebe9;border-color:#cf222e}
.warning{background:#fff8c5;border-color:#bf8700}
.info{background:#f6f8fa;border-color:#8c959f}
.charts{display:flex;flex-wrap:wrap;gap:1rem}
.charts figure{margin:0;padding:.4rem .6rem;border:1px solid #d8dee4;border-radius:6px}
figcaption{font-size:.85rem;color:#57606a}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
td,th{border:1px solid #d0d7de;padding:.25rem .55rem;vertical-align:top}
th{background:#f6f8fa;text-align:left}
td{font-variant-numeric:tabular-nums}
.none{color:#57606a;font-style:italic}
.details section.narrow{display:inline-block;vertical-align:top;margin-right:2.5rem}
.details section.narrow h2{border:0}
img{max-width:100%}
.charts img{max-width:30rem}
</style></head><body>
<h1>{{ report.title }}</h1>
<p class="meta">Window {{ report.window_text() }}</p>
<h2>Summary</h2><p class="summary">{{ report.summary }}</p>
{% for level, notes in report.callouts() %}<div class="callout {{ level }}">
<strong>{{ titles[level] }}</strong>{% if notes|length == 1 %}{{ notes[0] }}{% else %}<ul>
{%- for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}</div>
{% endfor %}<h2>Findings</h2>
{% if report.findings %}<ul>{% for title, detail in report.finding_lines() %}
<li><strong>{{ title }}</strong>: {{ detail }}</li>
{% endfor %}</ul>{% else %}<p class="none">None.</p>{% endif %}
{% set shown = report.charts or images %}{% if shown %}<h2>Charts</h2><div class="charts">
{% for chart, svg in charts %}<figure>{{ svg }}<figcaption>{{ chart.title }}</figcaption>
{%- if chart_tables %}<table><tr>{% for c in chart.table.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in chart.table.cells() %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endif %}</figure>
{% endfor %}{% for image, url in images %}<figure><img src="{{ url }}" alt="{{ image.title }}">
<figcaption>{{ image.title }}</figcaption></figure>
{% endfor %}</div>{% endif %}
{{ investigation }}<div class="details">{% for table in report.tables %}
<section{% if table.columns|length <= 3 %} class="narrow"{% endif %}><h2>{{ table.title }}</h2>
{% if table.rows %}<table><tr>{% for c in table.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in table.cells() %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>{% else %}<p class="none">None.</p>{% endif %}</section>{% endfor %}</div>
<p class="meta">Generated by {{ report.generated_by }} · prompt {{ report.prompt_version }}
· inputs {{ report.input_fingerprint[:16] }}</p>
</body></html>
"""
)
