"""Demo web traffic: realistic access-log lines with labelled incidents, deterministic per hour.

Every hour's lines come from a generator seeded by (seed, hour), so any window is the same
whichever range it is read with. Traffic follows a daily curve (quiet nights, busy
afternoons, lighter weekends); the server logs in America/New_York local time, so the
offsets change with DST. About `INCIDENT_RATE` of the hours carry one incident, labelled
by `demo_incidents` for tests and benchmarks, and every UTC day has at least one (a 5xx
burst at an hour drawn per day) and one request a compliance policy flags (an outside
client reaching `/admin/`), so any recent window of the demo shows an alert and a
finding. A few malformed lines are mixed in.

`write_demo_logs` writes the hours a window needs as daily files (`access.log-YYYYMMDD`)
under `<logs>/demo/`, appending to a day's file as later hours are asked for, so the demo
is read through the files → log store → window path that users' files take.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SERVER_TZ = ZoneInfo("America/New_York")
INCIDENT_RATE = 0.03
INCIDENT_KINDS = ("error_burst", "traffic_spike", "traffic_drop", "crawler_flood", "slow_endpoint")
PEAK_REQUESTS = 1200
MALFORMED_RATE = 0.0005
POLICY_CLIENT, POLICY_PATH = "198.51.100.77", "/admin/settings"  # outside any allow-list
DEMO_FOLDER = "demo"

_PATHS = [
    "/",
    "/login",
    "/logout",
    "/search",
    "/cart",
    "/checkout",
    "/api/v1/items",
    "/api/v1/orders",
    "/api/v1/users/me",
    "/api/v1/recommendations",
    "/static/app.js",
    "/static/app.css",
    "/static/logo.png",
    "/favicon.ico",
    "/robots.txt",
    "/docs/getting-started",
    "/docs/api",
    "/blog",
    "/pricing",
    "/health",
] + [f"/product/{i}" for i in range(40)]
_PATH_LATENCY = np.array([0.02 if p.startswith("/static") else 0.06 for p in _PATHS])
_PATH_LATENCY[[5, 7, 9]] = [0.25, 0.18, 0.30]  # checkout, orders, recommendations
_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/126.0 Mobile",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "curl/8.8.0",
    "python-requests/2.32.3",
]
_AGENT_WEIGHTS = np.array([0.34, 0.2, 0.1, 0.16, 0.12, 0.04, 0.02, 0.02])
_CLIENTS = 600


def _weights(count: int, exponent: float) -> np.ndarray:
    raw = 1.0 / np.arange(1, count + 1) ** exponent
    return raw / raw.sum()


_PATH_WEIGHTS = _weights(len(_PATHS), 0.9)
_CLIENT_WEIGHTS = _weights(_CLIENTS, 0.6)


def _client_names(seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    octets = rng.integers(1, 255, size=(_CLIENTS, 3))
    return np.array([f"203.{a}.{b}.{c}" for a, b, c in octets])


def _daily_hour(seed: int, day: int, salt: int) -> int:
    """An hour (epoch hours) of the UTC day `day` (epoch days), drawn per (seed, day)."""
    return day * 24 + int(np.random.default_rng([seed, day, salt]).integers(24))


def demo_incident(seed: int, hour: int) -> str | None:
    """The incident injected in `hour` (epoch hours, UTC), if any."""
    rng = np.random.default_rng([seed, hour, 99])
    if rng.random() >= INCIDENT_RATE:
        return "error_burst" if hour == _daily_hour(seed, hour // 24, 98) else None
    kind = INCIDENT_KINDS[int(rng.integers(len(INCIDENT_KINDS)))]
    if kind == "traffic_drop" and _expected_requests(hour) < 500:
        return "traffic_spike"  # a drop in a quiet hour is indistinguishable from noise
    return kind


def demo_incidents(seed: int, start: datetime, end: datetime) -> dict[int, str]:
    """Labelled incidents of the hours in [start, end): {epoch hour: kind}."""
    hours = range(int(start.timestamp()) // 3600, -(-int(end.timestamp()) // 3600))
    return {h: kind for h in hours if (kind := demo_incident(seed, h)) is not None}


def _expected_requests(hour: int) -> float:
    """A daily curve in server local time: about 10% of peak at 04:00, peak at 15:00."""
    local = datetime.fromtimestamp(hour * 3600, SERVER_TZ)
    phase = (local.hour - 15) / 24 * 2 * math.pi
    level = 0.1 + 0.9 * ((1 + math.cos(phase)) / 2) ** 1.5
    weekend = 0.7 if local.weekday() >= 5 else 1.0
    return PEAK_REQUESTS * level * weekend


def _offset_text(hour: int) -> tuple[int, str]:
    offset = datetime.fromtimestamp(hour * 3600, UTC).astimezone(SERVER_TZ).utcoffset()
    seconds = int(offset.total_seconds())
    sign = "-" if seconds < 0 else "+"
    return seconds, f"{sign}{abs(seconds) // 3600:02d}{abs(seconds) % 3600 // 60:02d}"


def hour_lines(seed: int, hour: int) -> bytes:
    """All log lines of one UTC hour (epoch hours), newline-terminated, in time order."""
    rng = np.random.default_rng([seed, hour])
    incident = demo_incident(seed, hour)
    n = int(rng.poisson(_expected_requests(hour)))
    if incident == "traffic_spike":
        n = int(n * rng.uniform(3, 5))
    elif incident == "traffic_drop":
        n = int(n * rng.uniform(0.08, 0.2))
    clients = _client_names(seed)[rng.choice(_CLIENTS, n, p=_CLIENT_WEIGHTS)]
    path_index = rng.choice(len(_PATHS), n, p=_PATH_WEIGHTS)
    agents = np.array(_AGENTS)[rng.choice(len(_AGENTS), n, p=_AGENT_WEIGHTS)]
    status = rng.choice([200, 304, 301, 404, 500], n, p=[0.915, 0.05, 0.01, 0.022, 0.003])
    latency = _PATH_LATENCY[path_index] * rng.lognormal(0, 0.5, n)
    paths = np.array(_PATHS, dtype=object)[path_index]
    if incident == "error_burst":
        hit = rng.random(n) < rng.uniform(0.15, 0.35)
        status = np.where(hit, rng.choice([500, 502, 503], n), status)
    elif incident == "slow_endpoint":
        path_index = np.where(rng.random(n) < 0.2, 9, path_index)
        paths = np.array(_PATHS, dtype=object)[path_index]
        slow = path_index == 9
        latency = np.where(slow, latency * rng.uniform(12, 20), latency)
    elif incident == "crawler_flood":
        extra = int(max(n, 200) * rng.uniform(1.0, 2.0))
        clients = np.concatenate([clients, np.full(extra, f"198.51.100.{rng.integers(2, 250)}")])
        crawl = np.array([f"/product/{i}?page={j}" for i, j in rng.integers(0, 900, (extra, 2))])
        paths = np.concatenate([paths, crawl])
        agents = np.concatenate(
            [agents, np.full(extra, "MegaScraper/3.1 (+http://scrape.example)")]
        )
        status = np.concatenate([status, rng.choice([200, 404], extra, p=[0.6, 0.4])])
        latency = np.concatenate([latency, rng.lognormal(np.log(0.05), 0.3, extra)])
        n += extra
    if hour == _daily_hour(seed, hour // 24, 97):  # the day's policy finding
        clients = np.append(clients, POLICY_CLIENT)
        paths = np.append(paths, POLICY_PATH)
        agents = np.append(agents, _AGENTS[6])
        status = np.append(status, 200)
        latency = np.append(latency, 0.05)
        n += 1
    sizes = np.where(status == 304, 0, rng.lognormal(8.5, 1.0, n).astype(np.int64))
    seconds = np.sort(rng.integers(0, 3600, n))
    order = rng.permutation(n)  # shuffle attributes, keep times sorted
    return _format(
        hour,
        seconds,
        clients[order],
        paths[order],
        status[order],
        sizes[order],
        agents[order],
        np.maximum(latency[order], 0.001),
        rng,
    )


def _format(hour, seconds, clients, paths, status, sizes, agents, latency, rng) -> bytes:
    offset, offset_text = _offset_text(hour)
    local = pa.array(hour * 3600 + seconds + offset, pa.timestamp("s"))
    stamps = pc.strftime(local, format="%d/%b/%Y:%H:%M:%S", locale="C")
    columns = [
        pa.array(clients.astype(str)),
        pa.scalar(" - - ["),
        stamps,
        pa.scalar(f' {offset_text}] "GET '),
        pa.array(paths.astype(str)),
        pa.scalar(' HTTP/1.1" '),
        pa.array(status.astype(str)),
        pa.scalar(" "),
        pa.array(sizes.astype(str)),
        pa.scalar(' "-" "'),
        pa.array(agents.astype(str)),
        pa.scalar('" '),
        pa.array(np.char.mod("%.3f", latency)),
    ]
    lines = pc.binary_join_element_wise(*columns, "").to_pylist()
    for position in np.flatnonzero(rng.random(len(lines)) < MALFORMED_RATE):
        lines[position] = lines[position][: int(rng.integers(5, 40))]  # a truncated write
    return ("\n".join(lines) + "\n").encode() if lines else b""


def demo_blocks(seed: int, start: datetime, end: datetime) -> Iterator[bytes]:
    """The lines of every hour touching [start, end), one block per hour."""
    first = int(start.timestamp()) // 3600
    last = -(-int(end.timestamp()) // 3600)
    for hour in range(first, last):
        yield hour_lines(seed, hour)


def write_demo_logs(seed: int, logs: Path, start: datetime, end: datetime) -> list[Path]:
    """Every hour of each UTC day touching [start, end), up to the hour `end` falls in,
    in `<logs>/demo/access.log-YYYYMMDD` (a day's file grows as later hours are asked
    for); the hours already written are kept in `.written.json` beside them, under a lock
    so two runs at once write each hour once. Returns the day files."""
    folder = logs / DEMO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    first, last = int(start.timestamp()) // 3600, -(-int(end.timestamp()) // 3600)
    files = []
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state_path = folder / ".written.json"
        written = json.loads(state_path.read_text()) if state_path.exists() else {}
        for day in range(first // 24, -(-last // 24)):
            path = folder / f"access.log-{datetime.fromtimestamp(day * 86400, UTC):%Y%m%d}"
            done, size = written.get(path.name, (day * 24, 0)) if path.exists() else (day * 24, 0)
            wanted = min(last, day * 24 + 24)
            if wanted > done:
                with open(path, "ab") as out:
                    out.truncate(size)  # what a run killed mid-write left after it
                    for hour in range(done, wanted):
                        out.write(hour_lines(seed, hour))
                written[path.name] = (wanted, path.stat().st_size)
                state_path.write_text(json.dumps(written, sort_keys=True))
            files.append(path)
    return files
