"""Hourly traffic features and anomaly detection against a seasonal baseline: no Dagster.

`HourlyTraffic` folds parsed log chunks into per-hour aggregates whose size depends on
the number of distinct clients, paths and user agents, never on the number of lines
(latency goes into a fixed log-spaced histogram). `hour_features` turns one hour into the
report's metrics; `detect` compares them with a baseline made of the same hour on the
previous `BASELINE_DAYS` days (the `TRAILING_HOURS` hours before stand in while fewer
days exist), using the median and the median absolute deviation (MAD). Same-hour values
carry the daily seasonality;
floors on the spread keep quiet hours, where counts are small and noisy, from alarming.
The verdict (anomalies, scores, severity) is computed here, never by the LLM.

Coverage: every hour counts the lines it read, parsed and skipped, per file, with the
file's format; lines with no readable timestamp (a file in an unknown format) are charged
to every hour (`untimed`). An hour whose lines are mostly unreadable gets the verdict
`unknown`, never `none`: the detector cannot vouch for what it did not read.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from agent_reports.core.access_logs import FormatChange, LogChunk

BASELINE_DAYS = 7
TRAILING_HOURS = 3
NEW_AGENT_LOOKBACK_HOURS = 24
# Hours of logs read before the first hour of a run: the baseline, and the new-agent
# lookback of the earliest baseline hour.
LOOKBACK_HOURS = BASELINE_DAYS * 24 + NEW_AGENT_LOOKBACK_HOURS
MIN_BASELINE_HOURS = 4
MIN_REQUESTS_FOR_RATES = 50
TOP = 5
MAX_TEXT = 120
SAMPLES_PER_HOUR = 5
LATENCY_BINS = np.geomspace(1e-4, 1e3, 701)  # seconds; about 2.3% wide
SEVERITIES = ("none", "low", "medium", "high")
UNKNOWN = "unknown"  # the verdict of an hour whose logs were mostly unreadable
MAX_UNREADABLE_SHARE = 0.5
SCORE_THRESHOLD = 4.0


@dataclass(frozen=True)
class Feature:
    """How a feature is judged: direction, and the smallest spread that counts as noise."""

    name: str
    direction: str  # "up", "down" or "both"
    relative_floor: float
    absolute_floor: float
    poisson: bool = False  # a count: its noise is at least √expected
    needs_requests: bool = False  # a rate: unreliable in nearly empty hours


FEATURES = (
    Feature("requests", "both", 0.15, 10, poisson=True),
    Feature("bytes", "both", 0.25, 50_000),
    Feature("distinct_clients", "both", 0.2, 5, poisson=True),
    Feature("rate_4xx", "up", 0.3, 0.02, needs_requests=True),
    Feature("rate_5xx", "up", 0.3, 0.01, needs_requests=True),
    Feature("latency_p50_ms", "up", 0.25, 5, needs_requests=True),
    Feature("latency_p95_ms", "up", 0.25, 20, needs_requests=True),
    Feature("top_client_share", "up", 0.3, 0.05, needs_requests=True),
    Feature("new_user_agent_share", "up", 0.3, 0.05, needs_requests=True),
)


def _clip(text: str | None) -> str:
    text = "-" if text is None else text
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


class _Hour:
    """Running aggregates of one hour."""

    def __init__(self) -> None:
        self.status: Counter[int] = Counter()
        self.bytes = 0
        self.latency = np.zeros(len(LATENCY_BINS) + 1, dtype=np.int64)
        self.clients: Counter[str] = Counter()
        self.agents: Counter[str] = Counter()
        self.paths: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0, 0])
        self.malformed = 0
        self.samples: list[dict[str, Any]] = []
        self.parsed_by_file: Counter[str] = Counter()
        self.skipped_by_file: Counter[str] = Counter()
        self.first_skipped: dict[str, int] = {}  # file → time of its first skipped line


def _grouped(table: pa.Table, keys: list[str], aggregations: list) -> list[dict[str, Any]]:
    return table.group_by(keys, use_threads=False).aggregate(aggregations).to_pylist()


class HourlyTraffic:
    """Per-hour aggregates of a stream of log chunks (hours are epoch hours, UTC)."""

    def __init__(self) -> None:
        self.hours: dict[int, _Hour] = defaultdict(_Hour)
        self.untimed: Counter[str] = Counter()  # file → malformed lines with no time at all
        self.formats: dict[str, str] = {}  # file → the format it was last read in
        self.format_changes: list[FormatChange] = []
        self._features: dict[int, dict[str, Any]] = {}

    @property
    def malformed_without_time(self) -> int:
        return sum(self.untimed.values())

    def add(self, chunk: LogChunk) -> None:
        self._add_records(chunk.records, chunk.file)
        self._add_malformed(chunk.malformed)
        if chunk.file:
            name = chunk.log_format.name if chunk.log_format else "unknown"
            self.formats[chunk.file] = name
        self.format_changes += chunk.format_changes

    def add_all(self, chunks: Iterable[LogChunk]) -> HourlyTraffic:
        for chunk in chunks:
            self.add(chunk)
        return self

    def _add_records(self, records: pa.Table, file: str) -> None:
        if records.num_rows == 0:
            return
        hour = pc.divide(records.column("time"), 3600)
        for item in pc.value_counts(hour).to_pylist():
            self.hours[item["values"]].parsed_by_file[file] += item["counts"]
        path = pc.replace_substring_regex(pc.fill_null(records.column("path"), "-"), r"\?.*", "")
        status = records.column("status")
        rt = records.column("request_time")
        bins = np.searchsorted(LATENCY_BINS, pc.fill_null(rt, -1).to_numpy(zero_copy_only=False))
        table = pa.table(
            {
                "hour": hour,
                "status": status,
                "bytes": records.column("bytes"),
                "client": records.column("client"),
                "agent": pc.fill_null(records.column("user_agent"), "-"),
                "path": path,
                "is4xx": pc.and_(pc.greater_equal(status, 400), pc.less(status, 500)),
                "is5xx": pc.greater_equal(status, 500),
                "rt": rt,
                "bin": pa.array(np.where(pc.is_null(rt).to_numpy(zero_copy_only=False), -1, bins)),
            }
        )
        for row in _grouped(table, ["hour", "status"], [("bytes", "sum"), ([], "count_all")]):
            entry = self.hours[row["hour"]]
            entry.status[row["status"]] += row["count_all"]
            entry.bytes += row["bytes_sum"] or 0
        for row in _grouped(table, ["hour", "bin"], [([], "count_all")]):
            if row["bin"] >= 0:
                self.hours[row["hour"]].latency[row["bin"]] += row["count_all"]
        for column, attribute in (("client", "clients"), ("agent", "agents")):
            for row in _grouped(table, ["hour", column], [([], "count_all")]):
                getattr(self.hours[row["hour"]], attribute)[row[column]] += row["count_all"]
        aggregations = [
            ([], "count_all"),
            ("is4xx", "sum"),
            ("is5xx", "sum"),
            ("rt", "sum"),
            ("rt", "count"),
        ]
        for row in _grouped(table, ["hour", "path"], aggregations):
            totals = self.hours[row["hour"]].paths[row["path"]]
            totals[0] += row["count_all"]
            totals[1] += row["is4xx_sum"] or 0
            totals[2] += row["is5xx_sum"] or 0
            totals[3] += row["rt_sum"] or 0.0
            totals[4] += row["rt_count"]

    def _add_malformed(self, malformed: pa.Table) -> None:
        for row in malformed.to_pylist():
            if row["time"] is None:
                self.untimed[row["file"]] += 1
                continue
            entry = self.hours[row["time"] // 3600]
            entry.malformed += 1
            entry.skipped_by_file[row["file"]] += 1
            entry.first_skipped.setdefault(row["file"], row["time"])
            if len(entry.samples) < SAMPLES_PER_HOUR:
                entry.samples.append(
                    {"file": _clip(row["file"]), "line": row["line"], "text": row["text"]}
                )

    def features(self, hour: int) -> dict[str, Any]:
        """The metrics of one hour (an hour with no lines has zero requests); call after `add`."""
        if hour not in self._features:
            entry = self.hours.get(hour) or _Hour()
            features = hour_features(entry, self._new_agent_share(hour, entry))
            self._features[hour] = features | {"coverage": self.coverage(hour)}
        return self._features[hour]

    def coverage(self, hour: int) -> dict[str, Any]:
        """Lines of the hour read, parsed and skipped, in total and per file, with the
        untimed lines of every file and the format changes that start in the hour."""
        entry = self.hours.get(hour) or _Hour()
        names = sorted(set(entry.parsed_by_file) | set(entry.skipped_by_file) | set(self.untimed))
        files = [self._file_coverage(hour, entry, name) for name in names]
        parsed = sum(entry.parsed_by_file.values())
        skipped, untimed = entry.malformed, self.malformed_without_time
        read = parsed + skipped + untimed
        changes = [c for c in self.format_changes if c.time is not None and c.time // 3600 == hour]
        return {
            "lines_read": read,
            "lines_parsed": parsed,
            "lines_skipped": skipped,
            "lines_untimed": untimed,
            "unreadable_share": round((skipped + untimed) / read, 6) if read else None,
            "files": files,
            "format_changes": [_change(c) for c in changes],
        }

    def _file_coverage(self, hour: int, entry: _Hour, name: str) -> dict[str, Any]:
        parsed, skipped = entry.parsed_by_file[name], entry.skipped_by_file[name]
        untimed = self.untimed[name]
        read = parsed + skipped + untimed
        unreadable = read and (skipped + untimed) / read > MAX_UNREADABLE_SHARE
        return {
            "file": _clip(name),
            "format": self.formats.get(name, "unknown"),
            "lines_read": read,
            "lines_parsed": parsed,
            "lines_skipped": skipped,
            "lines_untimed": untimed,
            "unreadable_since": self._unreadable_since(hour, name) if unreadable else None,
        }

    def _unreadable_since(self, hour: int, name: str) -> str | None:
        """When the file's lines became mostly unreadable: its first skipped line of the
        earliest hour of the run of unreadable hours that ends with `hour`."""
        since = None
        for earlier in range(hour, hour - LOOKBACK_HOURS, -1):
            entry = self.hours.get(earlier)
            if entry is None or entry.skipped_by_file[name] <= entry.parsed_by_file[name]:
                break
            since = entry.first_skipped.get(name)
        return None if since is None else _iso(since)

    def _new_agent_share(self, hour: int, entry: _Hour) -> float | None:
        requests = sum(entry.status.values())
        if not requests:
            return None
        seen: set[str] = set()
        for earlier in range(hour - NEW_AGENT_LOOKBACK_HOURS, hour):
            if earlier in self.hours:
                seen.update(self.hours[earlier].agents)
        if not seen:
            return None
        new = sum(n for agent, n in entry.agents.items() if agent not in seen)
        return round(new / requests, 6)


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _change(change: FormatChange) -> dict[str, Any]:
    return {
        "file": _clip(change.file),
        "line": change.line,
        "time": None if change.time is None else _iso(change.time),
        "previous": change.previous,
        "new": change.new,
    }


def unreadable(features: dict[str, Any]) -> bool:
    """The hour's lines were mostly unreadable: no verdict can be given on them."""
    share = features["coverage"]["unreadable_share"]
    return share is not None and share > MAX_UNREADABLE_SHARE


def _quantile_ms(histogram: np.ndarray, q: float) -> float | None:
    total = histogram.sum()
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(histogram), q * total))
    low = LATENCY_BINS[max(index - 1, 0)]
    high = LATENCY_BINS[min(index, len(LATENCY_BINS) - 1)]
    return round(math.sqrt(low * high) * 1000, 3)


def _top(counter: Counter[str], count: int = TOP) -> list[dict[str, Any]]:
    items = sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:count]
    return [{"name": _clip(name), "requests": n} for name, n in items]


def _top_paths(entry: _Hour, index: int, label: str, minimum: int = 1) -> list[dict[str, Any]]:
    rows = [(path, totals) for path, totals in entry.paths.items() if totals[0] >= minimum]
    if index == 3:  # mean latency, over paths with a request time
        rows = [(p, t) for p, t in rows if t[4]]
        rows.sort(key=lambda item: (-item[1][3] / item[1][4], item[0]))
        value = [round(t[3] / t[4] * 1000, 1) for _, t in rows[:TOP]]
    else:
        rows = [(p, t) for p, t in rows if t[index]]
        rows.sort(key=lambda item: (-item[1][index], item[0]))
        value = [int(t[index]) for _, t in rows[:TOP]]
    return [{"name": _clip(p), label: v} for (p, _), v in zip(rows[:TOP], value, strict=True)]


def hour_features(entry: _Hour, new_agent_share: float | None) -> dict[str, Any]:
    requests = sum(entry.status.values())
    errors_4xx = sum(n for s, n in entry.status.items() if 400 <= s < 500)
    errors_5xx = sum(n for s, n in entry.status.items() if s >= 500)
    top_client = max(entry.clients.values(), default=0)
    path_counts = Counter({p: int(t[0]) for p, t in entry.paths.items()})
    return {
        "requests": requests,
        "status_counts": {str(s): n for s, n in sorted(entry.status.items())},
        "malformed_lines": entry.malformed,
        "malformed_samples": entry.samples,
        "bytes": int(entry.bytes),
        "rate_4xx": round(errors_4xx / requests, 6) if requests else None,
        "rate_5xx": round(errors_5xx / requests, 6) if requests else None,
        "latency_p50_ms": _quantile_ms(entry.latency, 0.5),
        "latency_p95_ms": _quantile_ms(entry.latency, 0.95),
        "distinct_clients": len(entry.clients),
        "top_client_share": round(top_client / requests, 6) if requests else None,
        "new_user_agent_share": new_agent_share,
        "top_clients": _top(entry.clients),
        "top_paths": _top(path_counts),
        "top_user_agents": _top(entry.agents, 3),
        "top_5xx_paths": _top_paths(entry, 2, "errors_5xx"),
        "top_4xx_paths": _top_paths(entry, 1, "errors_4xx"),
        "slowest_paths": _top_paths(entry, 3, "mean_latency_ms", minimum=5),
    }


def baseline_hours(hour: int) -> tuple[list[int], list[int]]:
    """The same hour on the previous days, and the trailing hours (the fallback)."""
    same_hour = [hour - 24 * d for d in range(1, BASELINE_DAYS + 1)]
    return same_hour, [hour - h for h in range(1, TRAILING_HOURS + 1)]


def baseline_values(traffic: HourlyTraffic, hour: int) -> dict[str, list[float]]:
    """Each feature's values over the same hour of previous days that had traffic; when
    fewer than MIN_BASELINE_HOURS of those exist (new logs), the trailing hours too."""
    values: dict[str, list[float]] = {f.name: [] for f in FEATURES}
    same_hour, trailing = baseline_hours(hour)
    for group in (same_hour, trailing):
        if len(values["requests"]) >= MIN_BASELINE_HOURS:
            break
        for earlier in group:
            features = traffic.features(earlier)
            if not features["requests"] or unreadable(features):
                continue
            for feature in FEATURES:
                if features[feature.name] is not None:
                    values[feature.name].append(features[feature.name])
    return values


def severity_of(score: float) -> str:
    magnitude = abs(score)
    if magnitude >= 12:
        return "high"
    if magnitude >= 7:
        return "medium"
    return "low" if magnitude >= SCORE_THRESHOLD else "none"


def _evidence(feature: str, hour: dict[str, Any]) -> dict[str, Any]:
    by_feature = {
        "rate_5xx": ("top_5xx_paths",),
        "rate_4xx": ("top_4xx_paths",),
        "latency_p50_ms": ("slowest_paths",),
        "latency_p95_ms": ("slowest_paths",),
        "top_client_share": ("top_clients", "top_user_agents"),
        "new_user_agent_share": ("top_user_agents", "top_clients"),
    }
    keys = by_feature.get(feature, ("top_clients", "top_paths"))
    return {key: hour[key][:3] for key in keys}


def expected_range(feature: Feature, baseline: list[float]) -> tuple[float, float, float, float]:
    """The baseline's median and robust spread, and the range within SCORE_THRESHOLD
    spreads of the median: what the hour is judged against."""
    median = float(np.median(baseline))
    mad = 1.4826 * float(np.median(np.abs(np.asarray(baseline) - median)))
    spread = max(mad, feature.relative_floor * abs(median), feature.absolute_floor)
    if feature.poisson:
        spread = max(spread, 3 * math.sqrt(max(median, 1)))
    low = max(median - SCORE_THRESHOLD * spread, 0.0)
    high = median + SCORE_THRESHOLD * spread
    if feature.name.endswith("share") or feature.name.startswith("rate"):
        high = min(high, 1.0)
    return median, spread, low, high


def judge(feature: Feature, observed: float, baseline: list[float]) -> dict[str, Any] | None:
    """An anomaly when `observed` is more than SCORE_THRESHOLD robust spreads off the median."""
    median, spread, low, high = expected_range(feature, baseline)
    score = (observed - median) / spread
    if feature.direction == "up":
        score = max(score, 0.0)
    elif feature.direction == "down":
        score = min(score, 0.0)
    if abs(score) < SCORE_THRESHOLD:
        return None
    return {
        "metric": feature.name,
        "observed": observed,
        "expected_low": round(low, 6),
        "expected_high": round(high, 6),
        "baseline_median": round(median, 6),
        "score": round(score, 2),
        "severity": severity_of(score),
    }


def detect(hour: dict[str, Any], baseline: dict[str, list[float]]) -> dict[str, Any]:
    """The verdict for one hour: ranked anomalies and the overall severity."""
    anomalies = []
    if baseline.get("requests") and len(baseline["requests"]) >= MIN_BASELINE_HOURS:
        for feature in FEATURES:
            observed, values = hour[feature.name], baseline[feature.name]
            if observed is None or len(values) < MIN_BASELINE_HOURS:
                continue
            if feature.needs_requests and hour["requests"] < MIN_REQUESTS_FOR_RATES:
                continue
            anomaly = judge(feature, observed, values)
            if anomaly is not None:
                anomaly["evidence"] = _evidence(feature.name, hour)
                anomalies.append(anomaly)
    anomalies.sort(key=lambda a: (-abs(a["score"]), a["metric"]))
    severity = max((a["severity"] for a in anomalies), key=SEVERITIES.index, default="none")
    if unreadable(hour):
        severity = UNKNOWN
    return {
        "severity": severity,
        "anomalies": anomalies,
        "baseline_hours": len(baseline.get("requests", [])),
        "baseline_sufficient": len(baseline.get("requests", [])) >= MIN_BASELINE_HOURS,
        "bands": bands(hour, baseline),
    }


CHARTED = ("requests", "rate_5xx")


def bands(hour: dict[str, Any], baseline: dict[str, list[float]]) -> dict[str, Any]:
    """For the report's chart: the hour's value of each CHARTED feature, its baseline
    values and expected range (empty while the baseline is too short)."""
    found = {}
    for feature in FEATURES:
        values = baseline.get(feature.name) or []
        if feature.name in CHARTED and len(values) >= MIN_BASELINE_HOURS:
            median, _, low, high = expected_range(feature, values)
            found[feature.name] = {
                "observed": hour[feature.name],
                "baseline": [round(v, 6) for v in values],
                "median": round(median, 6),
                "expected_low": round(low, 6),
                "expected_high": round(high, 6),
            }
    return found


def partition_traffic(traffic: HourlyTraffic, hour: int) -> dict[str, Any]:
    """What the detection of `hour` needs: its features and its baseline values."""
    return {
        "hour": hour,
        "features": traffic.features(hour),
        "baseline": baseline_values(traffic, hour),
    }
