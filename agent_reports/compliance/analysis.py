"""The monthly audit's figures, computed by code: no Dagster imports, plain records in.

Three parts:
- coverage: each scheduled window of each analysis whose deadline fell in the month is
  ok, late, missing or failed, flagged degraded / re-run / retried, with its run ids;
- deliveries: the ledger's alerts and emails of the month (what, to whom, status);
- policy findings over the month's access logs: sensitive paths reached from outside an
  allow-list, bursts of 401/403 from one client, personal data (e-mail addresses,
  Luhn-valid card numbers) in URLs. Each finding cites file:line evidence; the personal
  data itself is redacted before it leaves this module.

A window is audited in the month its deadline falls in, and only history before the
month's end counts: every window is audited exactly once, every audited window was due
when the audit ran, and a re-run of the audit reads the same history.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_reports.core.deadlines import Deadline

NOT_SCHEDULED = "not scheduled"
STATUSES = ("ok", "late", "missing", "failed", NOT_SCHEDULED)
FLAGS = ("degraded", "re-run", "retried", "failed attempts")
FAILED_RUN_STATUSES = {"FAILURE", "CANCELED"}


# ----------------------------------------------------------------------------- coverage


@dataclass(frozen=True)
class Window:
    """One scheduled window of one analysis (aware datetimes, as its partitions define),
    with the analysis' declared deadline rule: the one its stale-window alert applies."""

    analysis: str
    key: str
    start: datetime
    end: datetime
    due: Deadline

    @property
    def deadline(self) -> datetime:
        return self.due.due(self.start, self.end)


@dataclass(frozen=True)
class Materialization:
    """One materialisation of an analysis' report for one window."""

    analysis: str
    key: str
    timestamp: float
    run_id: str
    degraded: bool = False
    quality_score: float | None = None  # None: no LLM score (offline, or older reports)
    cost_usd: float | str | None = None  # "unknown" when the model's price is


@dataclass(frozen=True)
class RunAttempt:
    """One run that targeted windows of an analysis (`keys`: the windows it covered)."""

    analysis: str
    run_id: str
    keys: tuple[str, ...]
    status: str  # DagsterRunStatus name
    started: float | None
    retry_number: int = 0
    parent_run_id: str | None = None


@dataclass(frozen=True)
class ScheduleHistory:
    """When an analysis' windows could first be due in this instance, and whether its
    schedule stopped: a window without a report before `first_activity` (its first run,
    report or schedule tick), or after the last tick of a schedule stopped since, is
    *not scheduled*, not *missing*."""

    first_activity: float | None  # None: nothing of the analysis ever ran here
    stopped_after: float | None = None  # the last tick of a schedule that is stopped now


def not_scheduled_reason(window: Window, history: ScheduleHistory) -> str | None:
    """Why a window without a report or run was never due to run here, or None."""
    if history.first_activity is None:
        return "the analysis never ran in this instance"
    if window.deadline.timestamp() < history.first_activity:
        return f"before the analysis' first run ({_minute(history.first_activity)})"
    if history.stopped_after is not None and window.end.timestamp() > history.stopped_after:
        return f"schedule stopped (last tick {_minute(history.stopped_after)})"
    return None


def _minute(timestamp: float) -> str:
    return f"{datetime.fromtimestamp(timestamp, UTC):%Y-%m-%d %H:%M} UTC"


def windows_due(windows: Iterable[Window], start: datetime, end: datetime) -> list[Window]:
    """The windows whose deadline falls in [start, end), ordered by analysis then deadline."""
    due = [w for w in windows if start <= w.deadline < end]
    return sorted(due, key=lambda w: (w.analysis, w.deadline, w.key))


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def classify_window(
    window: Window, materializations: Sequence[Materialization], runs: Sequence[RunAttempt]
) -> dict[str, Any]:
    """Status (ok | late | missing | failed), flags and evidence of one window."""
    mats = sorted(materializations, key=lambda m: m.timestamp)
    failed = [r for r in runs if r.status in FAILED_RUN_STATUSES]
    flags = []
    if mats:
        status = "late" if mats[0].timestamp > window.deadline.timestamp() else "ok"
        if mats[-1].degraded:
            flags.append("degraded")
        if len(mats) > 1:
            flags.append("re-run")
    else:
        status = "failed" if failed else "missing"
    retries = max((r.retry_number for r in runs), default=0)
    if retries:
        flags.append("retried")
    if mats and failed:
        flags.append("failed attempts")
    first = mats[0].timestamp if mats else None
    return {
        "analysis": window.analysis,
        "window": window.key,
        "status": status,
        "flags": flags,
        "deadline": window.deadline.astimezone(UTC).isoformat(timespec="seconds"),
        "first_materialized": _iso(first),
        "hours_after_window_end": None
        if first is None
        else round((first - window.end.timestamp()) / 3600, 2),
        "materializations": len(mats),
        "runs": len(runs),
        "failed_runs": len(failed),
        "retries": retries,
        "run_ids": sorted({m.run_id for m in mats} | {r.run_id for r in runs}),
    }


def llm_quality_and_cost(
    materializations: Iterable[Materialization], low_score: float
) -> dict[str, Any]:
    """Per analysis, the LLM cost of the given report materialisations (USD, and how many
    had an unknown price), and the windows whose latest report scored below `low_score`."""
    cost: dict[str, dict[str, Any]] = {}
    latest: dict[tuple[str, str], Materialization] = {}
    for mat in sorted(materializations, key=lambda m: m.timestamp):
        row = cost.setdefault(mat.analysis, {"reports": 0, "cost_usd": 0.0, "unknown_cost": 0})
        row["reports"] += 1
        if mat.cost_usd == "unknown":
            row["unknown_cost"] += 1
        elif isinstance(mat.cost_usd, int | float):
            row["cost_usd"] = round(row["cost_usd"] + mat.cost_usd, 6)
        latest[(mat.analysis, mat.key)] = mat
    low = [
        {"analysis": m.analysis, "window": m.key, "quality_score": m.quality_score}
        for m in latest.values()
        if m.quality_score is not None and m.quality_score < low_score
    ]
    return {"cost_per_analysis": cost, "low_quality_windows": low}


def coverage(
    windows: Sequence[Window],
    materializations: Iterable[Materialization],
    runs: Iterable[RunAttempt],
    cutoff: datetime,
    history: Mapping[str, ScheduleHistory] | None = None,
    analyses: Iterable[str] = (),
) -> dict[str, Any]:
    """Per-analysis counts and the classification of every window, from history before
    `cutoff` (the audit's month end: what happened later belongs to a later audit); with
    `history`, a window that was never due to run here is `not scheduled`; each of
    `analyses` gets a row even with no window due."""
    limit = cutoff.timestamp()
    by_window: dict[tuple[str, str], list[Materialization]] = defaultdict(list)
    for m in materializations:
        if m.timestamp < limit:
            by_window[m.analysis, m.key].append(m)
    runs_by_window: dict[tuple[str, str], list[RunAttempt]] = defaultdict(list)
    for run in runs:
        if run.started is None or run.started < limit:
            for key in run.keys:
                runs_by_window[run.analysis, key].append(run)
    rows = [
        classify_window(w, by_window[w.analysis, w.key], runs_by_window[w.analysis, w.key])
        for w in windows
    ]
    for window, row in zip(windows, rows, strict=True):
        if row["status"] == "missing" and window.analysis in (history or {}):
            reason = not_scheduled_reason(window, history[window.analysis])
            if reason:
                row.update(status=NOT_SCHEDULED, reason=reason)
    per_analysis: dict[str, dict[str, int]] = {}
    for analysis in sorted({w.analysis for w in windows} | set(analyses)):
        mine = [r for r in rows if r["analysis"] == analysis]
        counts = {"windows": len(mine)}
        counts |= {s: sum(r["status"] == s for r in mine) for s in STATUSES}
        counts |= {f: sum(f in r["flags"] for r in mine) for f in FLAGS}
        per_analysis[analysis] = counts
    return {"per_analysis": per_analysis, "windows": rows}


def problem_windows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The windows that were not simply on time: any status but ok, or any flag."""
    return [r for r in rows if r["status"] != "ok" or r["flags"]]


RANGE_RUN_IDS = 6


def window_ranges(
    rows: Sequence[dict[str, Any]], next_key: Callable[[str, str], str | None]
) -> list[dict[str, Any]]:
    """Problem windows grouped into ranges: consecutive windows (`next_key(analysis,
    key)` is the window after `key`) of one analysis with the same status, flags and
    reason become one row (`first`, `last`, `windows`), so 96 missing hours read as one
    line. Counts add up; up to RANGE_RUN_IDS run ids are kept as evidence."""
    ranges: list[dict[str, Any]] = []
    for row in rows:
        kind = (row["analysis"], row["status"], tuple(row["flags"]), row.get("reason"))
        last = ranges[-1] if ranges else None
        if (
            last
            and last["kind"] == kind
            and next_key(row["analysis"], last["last"]) == row["window"]
        ):
            last.update(last=row["window"], last_deadline=row["deadline"])
            last["windows"] += 1
            for count in ("runs", "failed_runs", "retries"):
                last[count] += row[count]
            last["run_ids"] += [r for r in row["run_ids"] if r not in last["run_ids"]]
            continue
        ranges.append(
            {
                "kind": kind,
                **{k: row[k] for k in ("analysis", "status", "flags", "runs", "failed_runs")},
                "reason": row.get("reason"),
                "first": row["window"],
                "last": row["window"],
                "windows": 1,
                "first_deadline": row["deadline"],
                "last_deadline": row["deadline"],
                "first_materialized": row["first_materialized"],
                "hours_after_window_end": row["hours_after_window_end"],
                "retries": row["retries"],
                "run_ids": list(row["run_ids"]),
            }
        )
    for found in ranges:
        del found["kind"]
        found["run_ids"] = found["run_ids"][:RANGE_RUN_IDS]
    return ranges


# --------------------------------------------------------------------------- deliveries

ALERT_REPORTS = {
    "anomalies": "alert",
    "ops-freshness": "ops alert",
    "ops-run-failure": "ops alert",
    "ops-approval-overdue": "ops alert",  # ops/alerts.py APPROVAL_REPORT
}


def _utc(value: datetime) -> datetime:
    """Ledger times are UTC; SQLite hands them back without a zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def deliveries(entries: Iterable[dict[str, Any]], start: datetime, end: datetime) -> list[dict]:
    """Ledger rows last updated in [start, end), oldest first: what went out, to whom, how."""
    rows = []
    for entry in entries:
        when = _utc(entry["updated_at"])
        if not start <= when < end:
            continue
        recipient = entry["recipient"]
        rows.append(
            {
                "when": when.isoformat(timespec="seconds"),
                "kind": ALERT_REPORTS.get(entry["report"], "report email"),
                "channel": "webhook" if recipient.startswith("webhook:") else "email",
                "report": entry["report"],
                "partition": entry["partition"],
                "recipient": recipient,
                "status": entry["status"],
                "attempts": entry["attempts"],
                "error": entry["error"],
            }
        )
    return sorted(rows, key=lambda r: (r["when"], r["report"], r["recipient"]))


def delivery_counts(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{kind: {status: count}}."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        counts[row["kind"]][row["status"]] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}


# -------------------------------------------------------------------- log policy findings

DEFAULT_SENSITIVE_PREFIXES = (
    "/admin",
    "/wp-admin",
    "/.env",
    "/.git",
    "/phpmyadmin",
    "/server-status",
)
DEFAULT_ALLOWLIST = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "::1/128",
    "fc00::/7",
)
BURST_STATUSES = (401, 403)
SAMPLES = 3
PATH_CHARS = 200
RULES = ("sensitive-path", "auth-failure-burst", "pii-email", "pii-card")

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})")
CARD = re.compile(r"(?<![0-9])(?:[0-9][ +-]?){12,18}[0-9](?![0-9])")
# A cheap RE2 pre-filter so only candidate lines reach the Python regexes.
PII_HINT = r"(?i)@|%40|(?:[0-9](?:[ +-]|%20)?){13}"


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def card_numbers(text: str) -> list[str]:
    """Runs of 13–19 digits (spaces or dashes allowed) that pass the Luhn check."""
    found = []
    for match in CARD.finditer(text):
        digits = re.sub(r"[^0-9]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            found.append(match.group())
    return found


def redact(text: str) -> str:
    """The text with e-mail addresses as a***@domain and card numbers as ****1234."""

    def card(match: re.Match) -> str:
        digits = re.sub(r"[^0-9]", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return "****" + digits[-4:]
        return match.group()

    text = EMAIL.sub(lambda m: f"{m.group()[0]}***@{m.group(1)}", text)
    return CARD.sub(card, text)


def display_path(path: str) -> str:
    """A logged path as the report shows it: decoded, redacted, bounded."""
    return _bounded(redact(unquote(path)))


def _bounded(text: str) -> str:
    return text if len(text) <= PATH_CHARS else text[:PATH_CHARS] + "…"


ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
IIS_UNICODE = re.compile(r"%u([0-9A-Fa-f]{4})")
OVERLONG = re.compile(rb"[\xc0\xc1][\x80-\xbf]")
DECODE_ROUNDS = 3
EVIDENCE_COLUMNS = ["client", "path", "time", "file", "line"]


def _percent_decoded(text: str) -> str:
    """One round of URL-decoding: %XX, IIS %uXXXX, and overlong UTF-8 of ASCII
    (%c0%ae is '.'), which old servers accepted; other invalid UTF-8 becomes U+FFFD."""
    text = IIS_UNICODE.sub(lambda m: chr(int(m.group(1), 16)), text)
    raw = unquote_to_bytes(text)
    raw = OVERLONG.sub(lambda m: bytes([((m.group()[0] & 0x1F) << 6) | (m.group()[1] & 0x3F)]), raw)
    return raw.decode("utf-8", errors="replace")


def _without_dot_segments(segments: list[str]) -> list[str]:
    """RFC 3986 remove_dot_segments on a split path; `..` never climbs above the root."""
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in (".", ""):
            kept.append(segment)
    return kept


def normalized_path(target: str) -> str:
    """The path a server would serve for this request-target, as OWASP CRS transforms it
    before matching: absolute form to path, query dropped, URL-decoded until stable
    (double encoding), NULs removed, backslashes as slashes, `;params` stripped, `//`
    collapsed, dot segments resolved, lower-cased."""
    path = ABSOLUTE_FORM.sub("", target)
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    for _ in range(DECODE_ROUNDS):
        if "%" not in path:
            break
        decoded = _percent_decoded(path)
        if decoded == path:
            break
        path = decoded
    path = path.replace("\0", "").replace("\\", "/")
    segments = [segment.split(";", 1)[0] for segment in path.split("/")]
    kept = _without_dot_segments(segments)
    trailing = "/" if kept and segments[-1] in ("", ".", "..") else ""
    return ("/" + "/".join(kept) + trailing).lower()


def client_address(client: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client as an address: `[v6]` brackets and a `%zone` dropped, an IPv4-mapped
    IPv6 address (`::ffff:10.1.2.3`) as its IPv4 address; None when not an IP."""
    text = client.strip().removeprefix("[").removesuffix("]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def parse_allowlist(text: str | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDRs (or addresses); None or empty gives the private ranges."""
    entries = [e.strip() for e in (text or "").split(",") if e.strip()] or DEFAULT_ALLOWLIST
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"AGENT_REPORTS_COMPLIANCE_ALLOWLIST: {entry!r} is not a CIDR like 10.0.0.0/8"
            ) from None
    return tuple(networks)


def parse_prefixes(text: str | None) -> tuple[str, ...]:
    """Comma-separated path prefixes, each starting with '/'; empty gives the defaults."""
    prefixes = tuple(p.strip() for p in (text or "").split(",") if p.strip())
    for prefix in prefixes:
        if not prefix.startswith("/") or prefix == "/":
            raise ValueError(
                f"AGENT_REPORTS_COMPLIANCE_SENSITIVE_PATHS: {prefix!r} must start with '/' "
                "and name a path, like /admin"
            )
    return prefixes or DEFAULT_SENSITIVE_PREFIXES


@dataclass(frozen=True)
class PolicyConfig:
    allowlist: tuple = field(default_factory=lambda: parse_allowlist(None))
    sensitive_prefixes: tuple[str, ...] = DEFAULT_SENSITIVE_PREFIXES
    burst_threshold: int = 20
    burst_seconds: int = 300

    def sensitive_pattern(self) -> str:
        """RE2 and Python: a path that is the prefix or continues it with / ? ; . (any
        case, any //)."""
        names = "|".join(re.escape(p.lstrip("/")) for p in self.sensitive_prefixes)
        return rf"(?i)^/+(?:{names})(?:[/?;.#]|$)"

    def candidate_pattern(self) -> str:
        """RE2: a path that could normalise into a sensitive one. Without a `%` or a NUL
        before the query, normalising (dot segments, `//`, `;params`, backslashes, case,
        absolute form) cannot create the letters of a prefix's first segment: they are in
        the raw text. Only these paths reach `normalized_path`."""
        firsts = {p.strip("/").split("/")[0] for p in self.sensitive_prefixes}
        names = "|".join(re.escape(name) for name in sorted(firsts))
        return rf"(?i)^[^?#]*(?:%|\x00|{names})"

    @functools.cached_property
    def _sensitive_re(self) -> re.Pattern:
        return re.compile(self.sensitive_pattern())

    def sensitive(self, target: str) -> str | None:
        """The normalised path when the request-target reaches a sensitive prefix."""
        path = normalized_path(target)
        return path if self._sensitive_re.search(path) else None


class _Group:
    """What one finding accumulates: count, first/last time, a few evidence lines."""

    def __init__(self) -> None:
        self.count, self.first, self.last = 0, None, None
        self.samples: list[str] = []
        self.matched: str | None = None  # the normalised path a sensitive-path rule matched

    def add(self, time: int, where: str) -> None:
        self.count += 1
        self.first = time if self.first is None else min(self.first, time)
        self.last = time if self.last is None else max(self.last, time)
        if len(self.samples) < SAMPLES:
            self.samples.append(where)


class PolicyScan:
    """Streams record chunks (RECORD_SCHEMA plus `file` and `line`) into policy findings;
    memory grows with the matching lines, not with the log."""

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.lines = 0
        self._allowed: dict[str, bool] = {}
        self._groups: dict[tuple[str, str, str], _Group] = defaultdict(_Group)
        self._denials: dict[str, list[tuple[int, str]]] = defaultdict(list)

    def allowed(self, client: str) -> bool:
        """Whether the client is inside the allow-list; a non-IP client never is."""
        if client not in self._allowed:
            address = client_address(client)
            self._allowed[client] = address is not None and any(
                address in network for network in self.config.allowlist
            )
        return self._allowed[client]

    def add(self, chunk: pa.Table) -> None:
        self.lines += chunk.num_rows
        if chunk.num_rows == 0:
            return
        path = pc.fill_null(chunk.column("path"), "")
        status = chunk.column("status")
        reached = pc.and_(pc.greater_equal(status, 200), pc.less(status, 400))
        self._sensitive(chunk, path, reached)
        for row in chunk.filter(pc.match_substring_regex(path, PII_HINT)).to_pylist():
            self._pii(row)
        denied = chunk.filter(pc.is_in(status, pa.array(BURST_STATUSES, pa.int16())))
        for row in denied.select(["client", "time", "file", "line"]).to_pylist():
            self._denials[row["client"]].append((row["time"], _where(row)))

    def _sensitive(self, chunk: pa.Table, path: pa.ChunkedArray, reached: pa.ChunkedArray) -> None:
        """Sensitive-path hits among the answered requests: each distinct path that could
        match, raw or once normalised, is normalised once per chunk."""
        could = pc.and_(reached, pc.match_substring_regex(path, self.config.candidate_pattern()))
        candidates = chunk.filter(could).select(EVIDENCE_COLUMNS)
        paths = candidates.column("path")
        matched = {p: m for p in pc.unique(paths).to_pylist() if (m := self.config.sensitive(p))}
        if not matched:
            return
        hits = candidates.filter(pc.is_in(paths, pa.array(list(matched), pa.string())))
        for row in hits.to_pylist():
            if not self.allowed(row["client"]):
                shown = display_path(row["path"])
                self._hit("sensitive-path", row, shown, matched[row["path"]])

    def _hit(self, rule: str, row: dict, shown: str, matched: str | None = None) -> None:
        group = self._groups[rule, row["client"], shown]
        group.add(row["time"], _where(row))
        group.matched = matched

    def _pii(self, row: dict) -> None:
        decoded = unquote(row["path"])
        if EMAIL.search(decoded):
            self._hit("pii-email", row, display_path(row["path"]))
        if card_numbers(decoded):
            self._hit("pii-card", row, display_path(row["path"]))

    def findings(self) -> list[dict[str, Any]]:
        """Every finding, ordered by rule, then first time, then client; ids F1, F2, ..."""
        found = [
            _finding(rule, client, path, group)
            for (rule, client, path), group in self._groups.items()
        ]
        for client, denials in self._denials.items():
            found += bursts(client, denials, self.config)
        found.sort(key=lambda f: (RULES.index(f["rule"]), f["first"], f["client"], f["path"]))
        return [{"id": f"F{n}", **f} for n, f in enumerate(found, 1)]


def _where(row: dict) -> str:
    return f"{row['file']}:{row['line']}"


def _finding(rule: str, client: str, path: str, group: _Group) -> dict[str, Any]:
    return {
        "rule": rule,
        "client": client,
        "path": path,
        "first": _iso(group.first),
        "last": _iso(group.last),
        "count": group.count,
        "evidence": group.samples,
        **({"normalized": _bounded(redact(group.matched))} if group.matched else {}),
    }


def bursts(
    client: str, denials: list[tuple[int, str]], config: PolicyConfig
) -> list[dict[str, Any]]:
    """Episodes in which `client` got at least `burst_threshold` 401/403 answers within
    `burst_seconds`; overlapping windows merge into one episode."""
    k, span = config.burst_threshold, config.burst_seconds
    if len(denials) < k:
        return []
    denials = sorted(denials)
    times = np.array([t for t, _ in denials], dtype=np.int64)
    starts = np.flatnonzero(times[k - 1 :] - times[: len(times) - k + 1] <= span)
    episodes = []
    for lo, hi in _merged(starts, k):
        group = _Group()
        for time, where in denials[lo:hi]:
            group.add(time, where)
        episodes.append(_finding("auth-failure-burst", client, "(401/403 answers)", group))
    return episodes


def _merged(starts: np.ndarray, k: int) -> list[tuple[int, int]]:
    """[start, start + k) index ranges, overlapping ones merged, as (lo, hi) pairs."""
    ranges: list[tuple[int, int]] = []
    for start in starts.tolist():
        if ranges and start < ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], start + k)
        else:
            ranges.append((start, start + k))
    return ranges


# ------------------------------------------------------------------------- log coverage

MOSTLY_UNREADABLE = 0.5  # more than this share of a month's lines skipped: verdict unknown


def log_coverage(
    files_read: int,
    per_file: dict[str, dict[str, Any]],
    unreadable: Sequence[str],
    problem: str | None = None,
) -> dict[str, Any]:
    """What the scan read of the month from `files_read` files, per file (`parsed`,
    `skipped`, ...: the reader's counts), and whether it vouches for the month. The
    verdict is `unknown`, with its reasons, when the logs could not be read (`problem`),
    no file or no line of the month was found, a file broke off, or most of the month's
    lines were skipped; else `ok`."""
    files = [{"file": name, **counts} for name, counts in sorted(per_file.items())]
    parsed, skipped = (sum(f[k] for f in files) for k in ("parsed", "skipped"))
    reasons = [problem] if problem else []
    if not problem and not files_read:
        reasons.append("no log file found")
    elif not problem and not parsed:
        reasons.append(f"no line of the month could be read from {files_read} file(s)")
    if unreadable:
        reasons.append(f"{len(unreadable)} file(s) broke off: {'; '.join(unreadable[:SAMPLES])}")
    if skipped > MOSTLY_UNREADABLE * (parsed + skipped):
        reasons.append(f"{skipped} of {parsed + skipped} line(s) unreadable")
    return {
        "verdict": "unknown" if reasons else "ok",
        "reasons": reasons,
        "lines": parsed + skipped,
        "parsed": parsed,
        "skipped": skipped,
        "files": files,
    }
