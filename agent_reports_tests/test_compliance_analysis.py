"""The audit's pure functions on hand-built records: deadlines and the month a window is
audited in, window classification, deliveries, and the log policy rules with decoys."""

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from agent_reports.anomalies.partitions import ANOMALIES
from agent_reports.briefing.partitions import BRIEFING
from agent_reports.compliance.analysis import (
    Materialization,
    PolicyConfig,
    PolicyScan,
    RunAttempt,
    Window,
    coverage,
    deliveries,
    display_path,
    luhn_valid,
    parse_allowlist,
    parse_prefixes,
    problem_windows,
    windows_due,
)
from agent_reports.core.access_logs import RECORD_SCHEMA
from agent_reports.market.partitions import MARKET

NY = ZoneInfo("America/New_York")
MARCH, APRIL = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)


def _day(key: str, tz=UTC) -> Window:
    start = datetime.fromisoformat(key).replace(tzinfo=tz)
    analysis = MARKET if tz is UTC else BRIEFING
    return Window(analysis.name, key, start, start + timedelta(days=1), analysis.deadline)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_deadlines_follow_each_analysis_and_new_york_dst():
    assert _day("2024-03-05").deadline == datetime(2024, 3, 7, 1, tzinfo=UTC)  # end + 25 h
    start, end = (datetime(2024, 3, 5, h, tzinfo=UTC) for h in (10, 11))
    hour = Window("anomalies", "2024-03-05-10:00", start, end, ANOMALIES.deadline)
    assert hour.deadline == datetime(2024, 3, 5, 13, tzinfo=UTC)
    # 09:30 New York: 14:30 UTC before the 10 March DST change, 13:30 UTC after it.
    assert _day("2024-03-08", NY).deadline.astimezone(UTC) == datetime(
        2024, 3, 8, 14, 30, tzinfo=UTC
    )
    assert _day("2024-03-11", NY).deadline.astimezone(UTC) == datetime(
        2024, 3, 11, 13, 30, tzinfo=UTC
    )


def test_each_window_is_audited_in_exactly_one_month():
    days = [
        _day((datetime(2024, 2, 1, tzinfo=UTC) + timedelta(days=n)).date().isoformat())
        for n in range(90)
    ]
    months = [datetime(2024, m, 1, tzinfo=UTC) for m in (2, 3, 4, 5)]
    audited = [windows_due(days, lo, hi) for lo, hi in itertools.pairwise(months)]
    march = [w.key for w in audited[1]]
    assert march[0] == "2024-02-28" and march[-1] == "2024-03-29" and len(march) == 31
    keys = [w.key for month in audited for w in month]
    assert len(keys) == len(set(keys))  # no window in two audits


def test_windows_are_classified_from_history_before_the_cutoff():
    windows = [_day(f"2024-03-{d:02d}") for d in range(1, 8)]
    on_time, late, after = _ts("2024-03-02T06:00"), _ts("2024-03-05T06:00"), _ts("2024-04-02T00:00")
    mats = [
        Materialization("market", "2024-03-01", on_time, "r1"),
        Materialization("market", "2024-03-02", late, "r2"),
        Materialization("market", "2024-03-03", _ts("2024-03-04T06:00"), "r3"),
        Materialization("market", "2024-03-03", _ts("2024-03-04T07:00"), "r4", degraded=True),
        Materialization("market", "2024-03-05", after, "r5"),  # after the cutoff: not counted
        Materialization("market", "2024-03-07", _ts("2024-03-08T06:30"), "r8"),
    ]
    runs = [
        RunAttempt("market", "r6", ("2024-03-06",), "FAILURE", _ts("2024-03-07T06:00")),
        RunAttempt("market", "r7", ("2024-03-07",), "FAILURE", _ts("2024-03-08T06:00")),
        RunAttempt("market", "r8", ("2024-03-07",), "SUCCESS", _ts("2024-03-08T06:30"), 1, "r7"),
        RunAttempt("market", "r9", ("2024-03-04",), "FAILURE", _ts("2024-04-02T06:00")),  # later
    ]
    result = coverage(
        windows, mats, runs, APRIL, analyses=["market", "anomalies", "churn", "briefing"]
    )
    got = {r["window"]: (r["status"], r["flags"]) for r in result["windows"]}
    assert got == {
        "2024-03-01": ("ok", []),
        "2024-03-02": ("late", []),
        "2024-03-03": ("ok", ["degraded", "re-run"]),
        "2024-03-04": ("missing", []),
        "2024-03-05": ("missing", []),
        "2024-03-06": ("failed", []),
        "2024-03-07": ("ok", ["retried", "failed attempts"]),
    }
    assert result["per_analysis"]["market"] == {
        "windows": 7, "ok": 3, "late": 1, "missing": 2, "failed": 1, "not scheduled": 0,
        "degraded": 1, "re-run": 1, "retried": 1, "failed attempts": 1,
    }  # fmt: skip
    assert result["per_analysis"]["churn"]["windows"] == 0  # every analysis has a row
    problems = {r["window"]: r for r in problem_windows(result["windows"])}
    assert "2024-03-01" not in problems
    assert problems["2024-03-07"]["run_ids"] == ["r7", "r8"]
    assert problems["2024-03-02"]["hours_after_window_end"] == 54.0


def test_deliveries_of_the_month_only_with_kind_and_channel():
    def entry(report, recipient, status, when, error=None):
        return {
            "report": report, "partition": "p", "recipient": recipient, "status": status,
            "attempts": 1, "error": error, "updated_at": when,
        }  # fmt: skip

    entries = [
        entry(
            "anomalies", "ops@example.com", "sent", datetime.fromisoformat("2024-03-03T01:00")
        ),  # naive: UTC
        entry("churn", "team@example.com", "failed", datetime(2024, 3, 4, tzinfo=UTC), "550"),
        entry("ops-freshness", "webhook:abcd", "sent", datetime.fromisoformat("2024-03-31T23:59")),
        entry(
            "briefing", "team@example.com", "sent", datetime.fromisoformat("2024-04-01T00:00")
        ),  # April
        entry(
            "briefing", "team@example.com", "sent", datetime.fromisoformat("2024-02-29T23:59")
        ),  # Feb
    ]
    rows = deliveries(entries, MARCH, APRIL)
    assert [(r["kind"], r["channel"], r["status"]) for r in rows] == [
        ("alert", "email", "sent"),
        ("report email", "email", "failed"),
        ("ops alert", "webhook", "sent"),
    ]
    assert rows[0]["when"] == "2024-03-03T01:00:00+00:00"


def test_luhn_and_redaction():
    assert luhn_valid("4111111111111111") and luhn_valid("5500005555555559")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234567812345678")
    shown = display_path(
        "/x?mail=bob.jones%40corp.example&card=4111-1111-1111-1111&id=1234567812345678"
    )
    assert shown == "/x?mail=b***@corp.example&card=****1111&id=1234567812345678"


def test_configuration_errors_name_the_bad_entry():
    assert [str(n) for n in parse_allowlist("203.0.113.0/24, 198.51.100.7")] == [
        "203.0.113.0/24",
        "198.51.100.7/32",
    ]
    assert len(parse_allowlist(None)) == 6  # private ranges and loopback
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not a CIDR"):
        parse_allowlist("10.0.0.0/8,10.0.0.300")
    assert parse_prefixes("/internal, /metrics") == ("/internal", "/metrics")
    with pytest.raises(ValueError, match="'admin' must start with '/'"):
        parse_prefixes("admin")


def _records(rows: list[tuple[str, str, str, int]]) -> pa.Table:
    """(client, time, path, status) rows as a chunk with file and line columns."""
    columns = {name: [] for name in RECORD_SCHEMA.names}
    for client, when, path, status in rows:
        values = {"time": int(_ts(when)), "client": client, "method": "GET", "path": path}
        values |= {"status": status, "bytes": 1}
        for name in RECORD_SCHEMA.names:
            columns[name].append(values.get(name))
    table = pa.Table.from_pydict(columns, schema=RECORD_SCHEMA)
    table = table.append_column("file", pa.array(["f.log"] * len(rows)))
    return table.append_column("line", pa.array(range(1, len(rows) + 1), pa.int64()))


def test_policy_rules_find_the_planted_rows_and_skip_the_decoys():
    rows = [
        ("198.51.100.7", "2024-03-05T10:00:00", "/wp-admin/install.php", 200),
        ("198.51.100.7", "2024-03-05T10:00:01", "/phpmyadmin", 302),
        ("198.51.100.7", "2024-03-05T10:00:02", "/server-status", 403),  # not reached
        ("192.168.1.5", "2024-03-05T10:00:03", "/admin", 200),  # allow-listed
        ("::1", "2024-03-05T10:00:04", "/.env", 200),  # allow-listed (IPv6 loopback)
        ("some-host", "2024-03-05T10:00:05", "/.git/HEAD", 200),  # not an IP: not allowed
        ("198.51.100.7", "2024-03-05T10:00:06", "/adminer.php", 200),  # another path
    ]
    # 20 × 403 within 5 minutes exactly: a burst; then 19 within 5 minutes: none.
    rows += [
        ("192.0.2.1", f"2024-03-06T10:{n // 4:02d}:{n % 4 * 15:02d}", "/l", 403) for n in range(20)
    ]
    rows += [("192.0.2.2", f"2024-03-06T11:00:{n:02d}", "/l", 401) for n in range(19)]
    # Two bursts of one client an hour apart: two episodes.
    rows += [
        ("192.0.2.3", f"2024-03-07T0{h}:00:{n:02d}", "/l", 401) for h in (1, 3) for n in range(21)
    ]
    scan = PolicyScan(PolicyConfig())
    scan.add(_records(rows[:10]))  # across chunks
    scan.add(_records(rows[10:]))
    found = [(f["rule"], f["client"], f["path"], f["count"]) for f in scan.findings()]
    assert found == [
        ("sensitive-path", "198.51.100.7", "/wp-admin/install.php", 1),
        ("sensitive-path", "198.51.100.7", "/phpmyadmin", 1),
        ("sensitive-path", "some-host", "/.git/HEAD", 1),
        ("auth-failure-burst", "192.0.2.1", "(401/403 answers)", 20),
        ("auth-failure-burst", "192.0.2.3", "(401/403 answers)", 21),
        ("auth-failure-burst", "192.0.2.3", "(401/403 answers)", 21),
    ]
    assert scan.lines == len(rows)


def test_a_wider_allow_list_and_own_prefixes_apply():
    rows = [
        ("198.51.100.7", "2024-03-05T10:00:00", "/admin", 200),
        ("203.0.113.9", "2024-03-05T10:00:01", "/internal/debug", 200),
    ]
    config = PolicyConfig(
        allowlist=parse_allowlist("198.51.100.0/24"), sensitive_prefixes=("/admin", "/internal")
    )
    scan = PolicyScan(config)
    scan.add(_records(rows))
    assert [(f["client"], f["path"]) for f in scan.findings()] == [
        ("203.0.113.9", "/internal/debug")
    ]


EVASIONS = ["/%2eenv", "/%61dmin/", "/static/../admin/", "/./.git/config"]


def test_the_scan_normalises_evasions_and_spares_mapped_internal_clients():
    """Paths are matched as a WAF normalises them; `::ffff:10.1.2.3` is 10.1.2.3."""
    outside, when = "198.51.100.7", "2024-03-05T10:00:0{}"
    rows = [(outside, when.format(n), path, 200) for n, path in enumerate(EVASIONS)]
    rows += [
        ("::ffff:10.1.2.3", when.format(4), "/admin/users", 200),  # internal, IPv4-mapped
        ("::ffff:203.0.113.5", when.format(5), "/%2Egit/config", 200),  # external, mapped
        (outside, when.format(6), "/static/../admin/", 404),  # not reached
        (outside, when.format(7), "/static/app.js?v=%2e%2e", 200),  # encoded query only
        (outside, when.format(8), "/admin/../index.html", 200),  # serves /index.html
    ]
    scan = PolicyScan(PolicyConfig())
    scan.add(_records(rows))
    found = [(f["client"], f["path"], f["normalized"], f["evidence"]) for f in scan.findings()]
    assert found == [
        (outside, "/.env", "/.env", ["f.log:1"]),
        (outside, "/admin/", "/admin/", ["f.log:2"]),
        (outside, "/static/../admin/", "/admin/", ["f.log:3"]),
        (outside, "/./.git/config", "/.git/config", ["f.log:4"]),
        ("::ffff:203.0.113.5", "/.git/config", "/.git/config", ["f.log:6"]),
    ]
    assert scan.lines == len(rows)


def test_a_multi_segment_prefix_is_found_however_its_slashes_are_written():
    config = PolicyConfig(sensitive_prefixes=("/internal/debug",))
    written = [
        "/internal\\debug",
        "/internal//debug/",
        "/INTERNAL;v=1/./debug",
        "/internal%2fdebug",
    ]
    rows = [("198.51.100.7", f"2024-03-05T10:00:0{n}", p, 200) for n, p in enumerate(written)]
    rows.append(("198.51.100.7", "2024-03-05T10:00:09", "/internal/debugger", 200))  # another
    scan = PolicyScan(config)
    scan.add(_records(rows))
    assert [f["normalized"] for f in scan.findings()] == [
        "/internal/debug",
        "/internal/debug/",
        "/internal/debug",
        "/internal/debug",
    ]
