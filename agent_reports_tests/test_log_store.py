"""The ingest-once log store: offsets, logrotate's renames and compression, truncation, two
ingests at once, a SIGKILL mid-ingest, late lines.

Files are named as logrotate leaves them (`access.log`, `access.log.1`, `access.log.2.gz`,
`access.log-YYYYMMDD.gz` with `dateext`), and lines follow Apache's Combined Log Format
example from the mod_log_config documentation:
    127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326
    "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey
from filelock import FileLock

from agent_reports.core import log_store
from agent_reports.core.access_logs import read_access_logs
from agent_reports.core.log_store import LogStore

START = datetime(2024, 3, 1, 10, tzinfo=UTC)
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
COMBINED = (
    '{client} - frank [{time} +0000] "GET {path} HTTP/1.0" 200 2326 '
    '"http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)"\n'
)


def combined(first: datetime, count: int, tag: str, step: float = 10.0) -> str:
    """`count` Combined-format lines from `first`, `step` seconds apart, paths /<tag>/<n>."""
    return "".join(
        COMBINED.format(
            client=f"127.0.0.{n % 250 + 1}",
            time=(first + timedelta(seconds=n * step)).strftime("%d/%b/%Y:%H:%M:%S"),
            path=f"/{tag}/{n}",
        )
        for n in range(count)
    )


def append(path: Path, text: str) -> None:
    with open(path, "a") as file:
        file.write(text)


def gzip_to(source: Path, target: Path) -> None:
    """What logrotate's `compress` does: a new .gz file, the original removed."""
    with open(source, "rb") as plain, gzip.open(target, "wb") as packed:
        shutil.copyfileobj(plain, packed)
    source.unlink()


def stored_paths(store: LogStore) -> list[str]:
    return [p for chunk in store.read(*EVER) for p in chunk.records.column("path").to_pylist()]


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder


@pytest.fixture
def store(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "store")


def test_a_growing_file_is_read_from_its_offset(logs: Path, store: LogStore) -> None:
    access = logs / "access.log"
    append(access, combined(START, 3, "a"))
    assert store.ingest(logs).lines == 3
    more = combined(START + timedelta(minutes=5), 2, "b")
    partial = combined(START + timedelta(minutes=9), 1, "c")
    append(access, more + partial[:40])  # the server is mid-write of a line
    second = store.ingest(logs)
    assert (second.lines, second.bytes_read) == (2, len(more.encode()))
    append(access, partial[40:])
    assert store.ingest(logs).lines == 1
    assert store.ingest(logs).files_read == 0  # unchanged: a stat, nothing read
    assert stored_paths(store) == ["/a/0", "/a/1", "/a/2", "/b/0", "/b/1", "/c/0"]


def test_rotation_by_rename_and_gzip_is_not_read_again(logs: Path, store: LogStore) -> None:
    access = logs / "access.log"
    append(access, combined(START, 100, "day1"))
    store.ingest(logs)
    append(access, combined(START + timedelta(hours=1), 5, "tail1"))  # after the last ingest
    # logrotate with delaycompress: rename, then a new access.log
    access.rename(logs / "access.log.1")
    append(access, combined(START + timedelta(hours=2), 7, "day2"))
    assert store.ingest(logs).lines == 5 + 7
    # Next rotation: .1 is compressed to .2.gz, access.log becomes .1.
    gzip_to(logs / "access.log.1", logs / "access.log.2.gz")
    access.rename(logs / "access.log.1")
    append(access, combined(START + timedelta(hours=3), 4, "day3"))
    third = store.ingest(logs)
    assert (third.lines, third.files_read) == (4, 1)
    # dateext: the same content under a date name; a tail written before compression.
    append(access, combined(START + timedelta(hours=4), 3, "tail3"))
    (logs / "access.log.2.gz").rename(logs / "access.log-20240301.gz")
    gzip_to(logs / "access.log.1", logs / "access.log-20240302.gz")
    assert store.ingest(logs).lines == 3
    assert store.ingest(logs).files_read == 0
    paths = stored_paths(store)
    assert len(paths) == len(set(paths)) == 100 + 5 + 7 + 4 + 3


def test_a_truncated_or_replaced_file_is_read_again(logs: Path, store: LogStore) -> None:
    access = logs / "access.log"
    append(access, combined(START, 50, "before"))
    store.ingest(logs)
    # logrotate copytruncate: copy to access.log.1, truncate in place, the server goes on.
    shutil.copyfile(access, logs / "access.log.1")
    with open(access, "r+") as file:
        file.truncate(0)
    append(access, combined(START + timedelta(hours=1), 6, "after"))
    summary = store.ingest(logs)
    assert summary.lines == 6
    # Another file at the same path, longer than what was read: read from its start.
    access.unlink()
    append(access, combined(START + timedelta(hours=2), 80, "replaced"))
    assert store.ingest(logs).lines == 80
    paths = stored_paths(store)
    assert len(paths) == len(set(paths)) == 50 + 6 + 80


def test_the_store_reads_a_window_as_the_raw_reader_does(logs: Path, store: LogStore) -> None:
    """Same records and malformed lines (numbered from the file's start across ingests)."""
    access = logs / "access.log"
    append(access, combined(START, 500, "x", step=30))
    store.ingest(logs)
    append(access, "\x1b[31mjunk\n\n" + combined(START + timedelta(hours=5), 40, "y"))
    store.ingest(logs)
    window = (START + timedelta(hours=1), START + timedelta(hours=5, minutes=3))
    raw = list(read_access_logs([access], *window))
    stored = list(store.read(*window))
    for part in ("records", "malformed"):
        expected = [row for chunk in raw for row in getattr(chunk, part).to_pylist()]
        got = [row for chunk in stored for row in getattr(chunk, part).to_pylist()]
        assert sorted(got, key=str) == sorted(expected, key=str) and expected
    [junk] = [row for chunk in stored for row in chunk.malformed.to_pylist()]
    assert junk["line"] == 501 and junk["time"] == int(
        (START + timedelta(seconds=499 * 30)).timestamp()
    )
    numbered = [r for c in store.read(*EVER, numbered=True) for r in c.records.to_pylist()]
    assert {r["path"]: r["line"] for r in numbered}["/y/0"] == 503  # after junk and a blank
    assert numbered[0]["file"] == str(access)


def timed(first: datetime, count: int, tag: str, unit_values: list[int]) -> str:
    """Combined lines with an integer request time appended, as Apache's `%D` (µs) or `%T`
    (s) writes it: `LogFormat "... \"%{User-agent}i\" %D"` (mod_log_config)."""
    lines = combined(first, count, tag).splitlines()
    values = (unit_values * count)[:count]
    return "".join(f"{line} {value}\n" for line, value in zip(lines, values, strict=True))


def numbered_records(store: LogStore) -> list[dict]:
    return [r for chunk in store.read(*EVER, numbered=True) for r in chunk.records.to_pylist()]


def test_appended_lines_keep_the_detected_format_and_the_line_numbers(
    logs: Path, store: LogStore
) -> None:
    """A `%D` file (µs: its median is far above 60) grows by lines whose own median
    (5) would be read as `%T` whole seconds if they were detected on their own."""
    access = logs / "access.log"
    append(access, timed(START, 200, "a", [1520, 4250000, 310]))
    store.ingest(logs)
    append(access, timed(START + timedelta(hours=1), 3, "b", [5]))
    store.ingest(logs)
    records = {r["path"]: r for r in numbered_records(store)}
    assert records["/a/1"]["request_time"] == pytest.approx(4.25)
    assert [records[f"/b/{n}"]["request_time"] for n in range(3)] == [pytest.approx(5e-6)] * 3
    assert [records[f"/b/{n}"]["line"] for n in range(3)] == [201, 202, 203]
    [chunk] = [c for c in store.read(*EVER) if c.records.num_rows]
    assert chunk.file == str(access) and chunk.log_format.rt_unit == 1e-6
    assert chunk.parsed == 203 and chunk.skipped == 0 and chunk.format_changes == ()


def test_a_format_change_found_at_ingest_is_kept_and_not_found_again(
    logs: Path, store: LogStore
) -> None:
    """Combined, then (a config change) Combined + `%D`: the change is stored with its
    line and time, read back by windows holding it, and the lines appended after it are
    read in the new format without a second change."""
    access = logs / "access.log"
    append(access, combined(START, 300, "old"))
    store.ingest(logs)
    append(access, timed(START + timedelta(hours=1), 150, "new", [1520, 4250000, 310]))
    store.ingest(logs)
    append(access, timed(START + timedelta(hours=2), 150, "more", [2000, 90000]))
    store.ingest(logs)
    changes = [c for chunk in store.read(*EVER) for c in chunk.format_changes]
    [change] = changes
    assert (change.file, change.line) == (str(access), 301)
    assert change.time == int((START + timedelta(hours=1)).timestamp())
    assert change.previous == "combined" and change.new != "combined"
    hour_one = (START + timedelta(hours=1), START + timedelta(hours=2))
    assert [c for chunk in store.read(*hour_one) for c in chunk.format_changes] == [change]
    assert not [c for chunk in store.read(START, hour_one[0]) for c in chunk.format_changes]
    records = {r["path"]: r for r in numbered_records(store)}
    assert records["/more/1"]["request_time"] == pytest.approx(0.09)
    assert records["/more/0"]["line"] == 451
    assert sum(c.skipped for c in store.read(*EVER)) == 0


def test_the_configured_format_is_honoured_by_the_store(logs: Path, store: LogStore) -> None:
    """`.agent_reports.toml` names `%T` (whole seconds) for *.log: values whose median
    would make detection choose µs are read as seconds, in the configured format."""
    definition = '%h %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-agent}i\\" %T'
    (logs / ".agent_reports.toml").write_text(f"[formats]\n\"*.log\" = '{definition}'\n")
    append(logs / "slow.log", timed(START, 20, "slow", [90, 120]))
    append(logs / "other.txt", timed(START, 20, "auto", [90, 120]))  # not configured
    store.ingest(logs)
    records = {r["path"]: r for r in numbered_records(store)}
    assert records["/slow/0"]["request_time"] == 90.0
    assert records["/auto/0"]["request_time"] == pytest.approx(90e-6)
    formats = {c.file: c.log_format for c in store.read(*EVER) if c.records.num_rows}
    assert formats[str(logs / "slow.log")].name == "*.log"
    assert formats[str(logs / "other.txt")].name != "*.log"


def test_an_older_store_gains_the_format_columns(logs: Path, tmp_path: Path) -> None:
    """A store made before formats were kept: opened, migrated, and read on."""
    root = tmp_path / "old"
    root.mkdir()
    with closing(sqlite3.connect(root / "manifest.sqlite")) as db:
        db.execute(  # `contents` as the first stores made it
            "CREATE TABLE contents (id INTEGER PRIMARY KEY, path TEXT NOT NULL, "
            "head_len INTEGER NOT NULL, head_hash TEXT NOT NULL, consumed INTEGER NOT NULL, "
            "lines INTEGER NOT NULL, last_time INTEGER, problem TEXT)"
        )
    store = LogStore(root)
    append(logs / "access.log", combined(START, 5, "x"))
    store.ingest(logs)
    with closing(sqlite3.connect(root / "manifest.sqlite")) as db:
        [(spec,)] = db.execute("SELECT log_format FROM contents").fetchall()
    assert spec and [c.log_format.name for c in store.read(*EVER) if c.records.num_rows] == [
        "combined"
    ]


INGEST = """
import json, sys
from pathlib import Path
from agent_reports.core import log_store
summary = log_store.LogStore(Path(sys.argv[1])).ingest(Path(sys.argv[2]))
print(json.dumps({"lines": summary.lines}))
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env)


def test_two_ingests_at_once_count_each_line_once(logs: Path, tmp_path: Path) -> None:
    """Two processes ingest the same folder at once: they queue on the store's lock (held
    here first, so both are sure to be waiting), then one reads everything, the other
    nothing."""
    for day in range(3):
        first = START + timedelta(days=day)
        append(logs / f"access.log-2024030{day + 1}", combined(first, 20_000, f"d{day}"))
    root = tmp_path / "store"
    LogStore(root)
    with FileLock(root / "ingest.lock"):
        processes = [_python(INGEST, str(root), str(logs)) for _ in range(2)]
        time.sleep(3)
        assert [p.poll() for p in processes] == [None, None]  # both wait for the lock
    outputs = [json.loads(p.communicate(timeout=300)[0]) for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert sorted(o["lines"] for o in outputs) == [0, 60_000]
    assert len(stored_paths(LogStore(root))) == 60_000


KILLED = """
import os, signal, sys
from pathlib import Path
from agent_reports.core import log_store
log_store.COMMIT_BYTES = 100_000
real = log_store.LogStore._transaction
calls = []
def dying(self, db):
    calls.append(1)
    if len(calls) == int(sys.argv[3]):  # the hour files are written, the commit is next
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, db)
log_store.LogStore._transaction = dying
log_store.LogStore(Path(sys.argv[1])).ingest(Path(sys.argv[2]))
"""


@pytest.mark.parametrize("kill_at_commit", [1, 4])
def test_a_kill_mid_ingest_then_resume_counts_each_line_once(
    logs: Path, tmp_path: Path, kill_at_commit: int
) -> None:
    append(logs / "access.log.1", combined(START, 6_000, "old"))
    append(logs / "access.log", combined(START + timedelta(hours=17), 3_000, "new"))
    root = tmp_path / "store"
    process = _python(KILLED, str(root), str(logs), str(kill_at_commit))
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    orphans = list(root.glob("records/*/*.parquet"))
    assert orphans  # the killed ingest had written hour files it never committed
    store = LogStore(root)
    store.ingest(logs)
    paths = stored_paths(store)
    assert len(paths) == len(set(paths)) == 9_000
    assert sum(stats.lines for stats in store.hour_stats(0, 10**9).values()) == 9_000
    on_disk = {p.relative_to(root).as_posix() for p in root.glob("*/*/*.parquet")}
    with sqlite3.connect(root / "manifest.sqlite") as db:
        assert on_disk == {row[0] for row in db.execute("SELECT name FROM parts")}


def test_a_kill_at_any_moment_then_resume_counts_each_line_once(logs: Path, tmp_path: Path) -> None:
    append(logs / "access.log", combined(START, 40_000, "all", step=2))
    root = tmp_path / "store"
    code = INGEST.replace(
        "from agent_reports.core import log_store",
        "from agent_reports.core import log_store\nlog_store.COMMIT_BYTES = 300_000",
    )
    process = _python(code, str(root), str(logs))
    deadline = time.monotonic() + 120
    while not list(root.glob("records/*/*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    store = LogStore(root)
    store.ingest(logs)
    paths = stored_paths(store)
    assert len(paths) == len(set(paths)) == 40_000


def test_late_lines_for_a_reported_hour_are_listed(logs: Path, store: LogStore) -> None:
    """The store says which hours got lines after a moment (a report's): the late ones."""
    append(logs / "access.log", combined(START, 720, "web1"))  # 10:00-12:00, 10 s apart
    store.ingest(logs)
    ten, eleven = (int((START + timedelta(hours=h)).timestamp()) // 3600 for h in (0, 1))
    reported = time.time()
    assert store.hours_changed_since(reported) == {}
    time.sleep(0.01)
    # A second server's file for 10:00-10:30 is delivered after the hour was reported.
    with gzip.open(logs / "web2-access.log-20240301.gz", "wt") as file:
        file.write(combined(START, 180, "web2"))
    store.ingest(logs)
    assert list(store.hours_changed_since(reported)) == [ten]
    assert eleven in store.hours_changed_since(0)
    stats = store.hour_stats(ten, ten + 1)[ten]
    assert (stats.lines, stats.files, stats.malformed) == (360 + 180, 2, 0)


def test_merging_an_hours_parts_keeps_its_lines_and_its_time(logs: Path, store: LogStore) -> None:
    access = logs / "access.log"
    for minute in range(log_store.MAX_PARTS_PER_HOUR + 2):  # one ingest per minute
        append(access, combined(START + timedelta(minutes=minute), 6, f"m{minute}"))
        store.ingest(logs)
    last = store.hours_changed_since(0)
    ten = int(START.timestamp()) // 3600
    stats = store.hour_stats(ten, ten + 1)[ten]
    # Nine parts were merged into one at the ninth ingest; the tenth added one.
    assert (stats.parts, stats.lines) == (2, 6 * (log_store.MAX_PARTS_PER_HOUR + 2))
    assert store.hours_changed_since(last[ten]) == {}  # merging is not a late arrival
    assert len(stored_paths(store)) == stats.lines


def test_the_files_source_reads_through_the_store(tmp_path: Path) -> None:
    from agent_reports.core.sources import FileSource

    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs / "access.log", combined(START, 720, "web"))
    hour = (START + timedelta(hours=1), START + timedelta(hours=2))
    chunks = list(FileSource(tmp_path).access_logs(*hour))
    assert sum(c.records.num_rows for c in chunks) == 360
    assert list((tmp_path / "state" / "log_store").glob("*/manifest.sqlite"))
    assert log_store.folder_store(logs).hour_stats(0, 10**9)


HOUR_KEY = "2024-03-01-10:00"


def _files_env(monkeypatch: pytest.MonkeyPatch, data: Path) -> None:
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(data))


def _late_tick(instance, data: Path, cursor: str | None = None):
    from dagster import build_sensor_context

    from agent_reports.core.resources import DataSourceResource
    from agent_reports.definitions import defs

    sensor = defs.resolve_sensor_def("late_log_lines_sensor")
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        resources={"source": DataSourceResource(kind="files", data_dir=str(data))},
    )
    return sensor.evaluate_tick(context)


def test_store_asset_and_late_lines_rerun_give_a_new_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance
) -> None:
    """The store asset shows the hour; a file delivered after the hour's report
    is listed by the late-lines sensor and, when opted in, re-run into a new report."""
    from agent_reports.definitions import defs

    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    append(data / "logs" / "access.log", combined(START - timedelta(hours=4), 1800, "web1"))
    _files_env(monkeypatch, data)
    job = defs.resolve_job_def("anomalies_job")
    assert job.execute_in_process(partition_key=HOUR_KEY, instance=instance).success
    ingest = defs.resolve_job_def("ingest_job")
    assert ingest.execute_in_process(partition_key=HOUR_KEY, instance=instance).success
    [event] = instance.fetch_materializations(AssetKey("access_log_store"), limit=5).records
    metadata = event.asset_materialization.metadata
    assert event.partition_key == HOUR_KEY
    assert (metadata["lines"].value, metadata["files"].value) == (360, 1)
    assert metadata["malformed_lines"].value == 0 and metadata["bytes"].value > 0
    report = tmp_path / "reports" / "anomalies" / f"{HOUR_KEY}.json"
    first = json.loads(report.read_text())
    assert first["metrics"]["requests"] == 360

    with gzip.open(data / "logs" / "web2-access.log-20240301.gz", "wt") as file:
        file.write(combined(START, 240, "web2"))
    log_store.folder_store(data / "logs").ingest(data / "logs")  # e.g. the next hour's run
    listed = _late_tick(instance, data)
    assert not listed.run_requests
    assert f"anomalies {HOUR_KEY} (+240 of 600 lines)" in listed.skip_message
    assert "compliance" not in listed.skip_message  # March was never audited
    assert _late_tick(instance, data, listed.cursor).skip_message.startswith("no lines stored")

    monkeypatch.setenv("AGENT_REPORTS_LATE_LINES_RERUN", "true")
    monkeypatch.setenv("AGENT_REPORTS_LATE_LINES_MIN_SHARE", "0.5")  # 240 of 600: too few
    assert not _late_tick(instance, data).run_requests
    monkeypatch.delenv("AGENT_REPORTS_LATE_LINES_MIN_SHARE")
    [request] = _late_tick(instance, data).run_requests
    assert (request.partition_key, request.job_name) == (HOUR_KEY, "anomalies_job")
    assert job.execute_in_process(
        partition_key=HOUR_KEY, instance=instance, tags=request.tags
    ).success
    second = json.loads(report.read_text())
    assert second["metrics"]["requests"] == 360 + 240
    assert second["input_fingerprint"] != first["input_fingerprint"]
    assert _late_tick(instance, data).skip_message == "no late lines for a reported window"
