"""The access-log parser on real files: each field, offsets, DST, gz, misplaced and bad lines."""

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from agent_reports.core.access_logs import (
    MAX_LINE_BYTES,
    parse_blocks,
    read_access_logs,
    read_log_file,
)
from agent_reports.core.log_formats import LogFormat
from agent_reports.core.sources import FileSource, InputError

ALL_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
COMBINED = (
    '192.0.2.7 - alice [10/Oct/2023:13:55:36 -0700] "GET /a/b?x=1 HTTP/1.1" 404 2326 '
    '"https://ref.example/" "Mozilla/5.0 (X11)"'
)


def _read(path: Path, start=ALL_TIME[0], end=ALL_TIME[1], **kwargs) -> tuple[list, list]:
    chunks = list(read_log_file(path, start, end, **kwargs))
    records = pa.concat_tables([c.records for c in chunks]).to_pylist()
    malformed = pa.concat_tables([c.malformed for c in chunks]).to_pylist()
    return records, malformed


def _utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_combined_format_fields(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text(COMBINED + "\n")
    [record], malformed = _read(path)
    assert malformed == []
    assert record == {
        "time": _utc(2023, 10, 10, 20, 55, 36),
        "client": "192.0.2.7",
        "user": "alice",
        "method": "GET",
        "path": "/a/b?x=1",
        "protocol": "HTTP/1.1",
        "status": 404,
        "bytes": 2326,
        "referer": "https://ref.example/",
        "user_agent": "Mozilla/5.0 (X11)",
        "request_time": None,
        "vhost": None,
    }


def test_common_format_dash_bytes_and_request_times(tmp_path: Path) -> None:
    path = tmp_path / "mixed"
    path.write_text(
        '::1 - - [01/Feb/2024:00:00:00 +0000] "POST /login HTTP/2.0" 302 -\n'
        + COMBINED
        + " 0.250\n"  # nginx $request_time, seconds
        + COMBINED
        + " 1500000\n"  # apache %D, microseconds
        + '10.0.0.1 - - [01/Feb/2024:00:00:01 +0000] "-" 400 0 "-" "-"\n'  # no request line
    )
    records, malformed = _read(path)
    assert malformed == []
    assert [(r["method"], r["path"], r["bytes"]) for r in records] == [
        ("POST", "/login", 0),
        ("GET", "/a/b?x=1", 2326),
        ("GET", "/a/b?x=1", 2326),
        (None, None, 0),
    ]
    assert records[0]["referer"] is None and records[0]["user_agent"] is None
    assert [r["request_time"] for r in records] == [None, 0.25, 1.5, None]


def test_offsets_across_midnight_and_dst_give_utc_hours(tmp_path: Path) -> None:
    # New York fall-back night: 01:30 happens twice, at -0400 and then at -0500.
    path = tmp_path / "ny.log"
    lines = [
        '1.1.1.1 - - [05/Nov/2023:01:30:00 -0400] "GET / HTTP/1.1" 200 1',
        '1.1.1.1 - - [05/Nov/2023:01:30:00 -0500] "GET / HTTP/1.1" 200 1',
        '1.1.1.1 - - [31/Dec/2023:23:30:00 -0130] "GET / HTTP/1.1" 200 1',  # next year in UTC
        '1.1.1.1 - - [01/Jan/2024:00:30:00 +0530] "GET / HTTP/1.1" 200 1',  # previous day
    ]
    path.write_text("\n".join(lines) + "\n")
    records, _ = _read(path)
    assert [r["time"] for r in records] == [
        _utc(2023, 11, 5, 5, 30),
        _utc(2023, 11, 5, 6, 30),
        _utc(2024, 1, 1, 1, 0),
        _utc(2023, 12, 31, 19, 0),
    ]


def test_lines_belong_to_their_own_hour_whatever_the_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    # A rotated, gzipped file with a line of 10:xx, and a plain file with a late 09:xx line.
    with gzip.open(logs / "access.log.2.gz", "wt") as file:
        file.write('1.1.1.1 - - [01/Mar/2024:10:15:00 +0000] "GET /gz HTTP/1.1" 200 1\n')
    (logs / "whatever-name").write_text(
        '1.1.1.1 - - [01/Mar/2024:11:00:00 +0100] "GET /late HTTP/1.1" 200 1\n'
        '1.1.1.1 - - [01/Mar/2024:11:00:00 +0000] "GET /other HTTP/1.1" 200 1\n'
    )
    hour = (datetime(2024, 3, 1, 10, tzinfo=UTC), datetime(2024, 3, 1, 11, tzinfo=UTC))
    chunks = list(FileSource(tmp_path).access_logs(*hour))
    paths = sorted(r["path"] for c in chunks for r in c.records.to_pylist())
    assert paths == ["/gz", "/late"]


def test_malformed_lines_are_counted_sampled_and_placed(tmp_path: Path) -> None:
    good = '1.1.1.1 - - [01/Mar/2024:10:15:00 +0000] "GET / HTTP/1.1" 200 1'
    bad = [
        b"\x00\xff\xfe binary junk \x80",
        good[:30].encode(),  # truncated write
        good.replace("/ HTTP", "/" + "a" * MAX_LINE_BYTES + " HTTP").encode(),  # over-long
        good.replace("01/Mar", "30/Feb").encode(),  # impossible date
        good.replace("10:15", "25:15").encode(),  # impossible hour
        good.replace('" 200', '" 999').encode(),  # impossible status
        good.replace("/ HTTP", "/caf\xe9 HTTP").encode("latin-1"),  # not UTF-8
    ]
    path = tmp_path / "junk.log"
    path.write_bytes(b"\n".join([good.encode(), *bad, b"", good.encode()]) + b"\n")
    records, malformed = _read(path)
    assert len(records) == 2
    assert [m["line"] for m in malformed] == [2, 3, 4, 5, 6, 7, 8]  # the blank line is skipped
    assert {m["time"] for m in malformed} == {_utc(2024, 3, 1, 10, 15)}
    assert malformed[0]["text"].startswith("\\x00\\xff\\xfe binary junk")
    assert all(len(m["text"]) <= 201 for m in malformed)


def test_small_chunks_and_a_truncated_gz_lose_no_good_line(tmp_path: Path) -> None:
    line = '1.1.1.1 - - [01/Mar/2024:10:15:00 +0000] "GET /x HTTP/1.1" 200 1\n'
    data = gzip.compress((line * 2000).encode())
    whole, cut = tmp_path / "whole.gz", tmp_path / "cut.gz"
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    records, malformed = _read(whole, chunk_bytes=1000)  # lines straddle every block edge
    assert len(records) == 2000 and malformed == []
    chunks = list(read_access_logs([cut], *ALL_TIME))
    assert sum(c.records.num_rows for c in chunks) > 0
    [note] = [m for c in chunks for m in c.malformed.to_pylist()]
    assert "file unreadable after line" in note["text"]


def test_missing_logs_folder_is_a_clear_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="logs"):
        FileSource(tmp_path).access_logs(*ALL_TIME)


CORPUS = Path(__file__).parent / "data" / "access_logs"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def _iso_seconds(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_of_the_corpus_is_detected_and_parsed_field_by_field(name: str) -> None:
    chunks = list(read_log_file(CORPUS / name, *ALL_TIME))
    records = pa.concat_tables([c.records for c in chunks]).to_pylist()
    expected = EXPECTED[name]
    assert [c.log_format.name for c in chunks] == [expected["format"]]
    assert sum(c.malformed.num_rows for c in chunks) == 0
    assert [c.format_changes for c in chunks] == [()]
    want = [{**r, "time": _iso_seconds(r["time"])} for r in expected["records"]]
    for got, wanted in zip(records, want, strict=True):
        rt = got.pop("request_time"), wanted.pop("request_time")
        assert got == wanted
        assert rt[0] == pytest.approx(rt[1]) if rt[1] is not None else rt[0] is None
    first = chunks[0]
    assert (first.parsed, first.skipped, first.lines_read) == (len(want), 0, len(want))


def _logs(tmp_path: Path, files: dict[str, str]) -> Path:
    logs = tmp_path / "logs"
    for name, text in files.items():
        (logs / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / name).write_text(text)
    return logs


def _records_by_file(tmp_path: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for chunk in FileSource(tmp_path).access_logs(*ALL_TIME):
        found.setdefault(Path(chunk.file).name, []).extend(chunk.records.to_pylist())
    return found


def test_a_configured_format_string_wins_over_detection(tmp_path, monkeypatch) -> None:
    # %T (whole seconds) with slow requests: detection alone would call 120 microseconds.
    line = '10.0.0.1 - - [01/Mar/2024:10:00:00 +0000] "GET /slow HTTP/1.1" 200 5 "-" "ua" {}\n'
    nginx = (
        '10.0.0.2 - - [01/Mar/2024:10:00:01 +0000] "GET /n HTTP/1.1" 200 7 "-" "ua" rid-42 0.250\n'
    )
    _logs(
        tmp_path,
        {
            "apache/access.log": line.format(120) + line.format(90),
            "edge/nginx.log": nginx,
            ".agent_reports.toml": (
                "[formats]\n"
                '"edge/*" = \'$remote_addr - $remote_user [$time_local] "$request" $status '
                '$body_bytes_sent "$http_referer" "$http_user_agent" $request_id '
                "$request_time'\n"
            ),
        },
    )
    monkeypatch.setenv(
        "AGENT_REPORTS_LOG_FORMAT",
        '%h %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\" %T',
    )
    found = _records_by_file(tmp_path)
    assert [r["request_time"] for r in found["access.log"]] == [120.0, 90.0]
    assert [(r["path"], r["request_time"]) for r in found["nginx.log"]] == [("/n", 0.25)]


def test_a_bad_format_names_the_config_file_and_its_key(tmp_path, monkeypatch) -> None:
    _logs(tmp_path, {"a.log": "", ".agent_reports.toml": '[formats]\n"*.log" = "%h %u %r"\n'})
    with pytest.raises(InputError, match=r"\.agent_reports\.toml: column 'formats\.\*\.log'.*%t"):
        FileSource(tmp_path).access_logs(*ALL_TIME)
    (tmp_path / "logs" / ".agent_reports.toml").unlink()
    monkeypatch.setenv("AGENT_REPORTS_LOG_FORMAT", "%h %{%Y}t")
    with pytest.raises(InputError, match=r"AGENT_REPORTS_LOG_FORMAT: .*only the default %t"):
        FileSource(tmp_path).access_logs(*ALL_TIME)


def _combined(n: int, minute: int, extra: str = "") -> str:
    return (
        f'192.0.2.{n % 200} - - [01/Mar/2024:14:{minute:02d}:00 +0000] "GET /p{n} HTTP/1.1" '
        f'200 {n} "-" "agent"{extra}\n'
    )


def test_a_format_change_inside_a_file_is_followed_and_reported(tmp_path: Path) -> None:
    before = "".join(_combined(n, 10) for n in range(300))
    # The config gains "$http_x_forwarded_for" $request_time $upstream_response_time at 14:20.
    after = "".join(_combined(n, 20, ' "-" 0.500 0.498') for n in range(300, 600))
    path = tmp_path / "access.log"
    path.write_text(before + after)
    chunks = list(read_log_file(path, *ALL_TIME, chunk_bytes=40_000))
    records = pa.concat_tables([c.records for c in chunks]).to_pylist()
    assert [r["bytes"] for r in records] == list(range(600))
    assert [r["request_time"] for r in records[300:]] == [0.5] * 300
    assert sum(c.skipped for c in chunks) == 0 and sum(c.parsed for c in chunks) == 600
    [change] = [change for c in chunks for change in c.format_changes]
    assert (change.line, change.time) == (301, _utc(2024, 3, 1, 14, 20))
    assert (change.previous, change.new) == ("combined", "nginx_main_timed")
    assert chunks[-1].log_format.name == "nginx_main_timed"


def test_appended_lines_parse_with_the_stored_format_and_line_numbers(tmp_path: Path) -> None:
    # %D file: the first part decides microseconds; the appended part alone (small values)
    # would be detected as whole seconds.
    first = "".join(_combined(n, 10, f" {150_000 + n}") for n in range(50))
    appended = "".join(_combined(n, 11, " 3") for n in range(50, 60)) + "\x00junk\n"
    [chunk] = parse_blocks([first.encode()], "access.log", *ALL_TIME)
    stored = chunk.log_format.spec
    assert chunk.log_format.name == "combined_rt (us)" and chunk.lines_read == 50
    [more] = parse_blocks(
        [appended.encode()],
        "access.log",
        *ALL_TIME,
        log_format=LogFormat.from_spec(stored),
        first_line=chunk.lines_read + 1,
    )
    assert more.records.column("request_time").to_pylist() == [3e-6] * 10
    assert more.malformed.column("line").to_pylist() == [61]
    assert (more.lines_read, more.parsed, more.skipped) == (61, 10, 1)


def test_unknown_formats_are_skipped_and_timed_by_their_own_stamp(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text(
        "2024-03-01 14:00:01 INFO started\n"  # no readable stamp anywhere in the file
        "[01/Mar/2024:14:30:00 +0000] 10.0.0.1 GET / 200\n"
    )
    records, malformed = _read(path)
    assert records == []
    assert [(m["line"], m["time"]) for m in malformed] == [
        (1, _utc(2024, 3, 1, 14, 30)),
        (2, _utc(2024, 3, 1, 14, 30)),
    ]
    junk = tmp_path / "junk.log"
    junk.write_text("no time here\nnor here\n")
    chunks = list(read_log_file(junk, *ALL_TIME))
    assert [m["time"] for c in chunks for m in c.malformed.to_pylist()] == [None, None]
    assert [(c.parsed, c.skipped, c.log_format) for c in chunks] == [(0, 2, None)]


def test_a_line_cut_inside_quotes_does_not_swallow_the_next_lines(tmp_path: Path) -> None:
    lines = [_combined(n, 10) for n in range(6)]
    lines[1] = lines[1][:70] + "\n"  # cut inside the quoted request: an unclosed quote
    lines[3] = lines[3].replace('"agent"', '"a \\"quoted\\" agent"')  # Apache's escape
    lines[4] = lines[4].replace("/p4", '/p4"x').replace(' "-"', ' "-\r-"')  # stray ", lone CR
    path = tmp_path / "access.log"
    path.write_text("".join(lines))
    records, malformed = _read(path)
    assert [r["path"] for r in records] == ["/p0", "/p2", "/p3", "/p5"]
    assert records[2]["user_agent"] == 'a \\"quoted\\" agent'
    assert [m["line"] for m in malformed] == [2, 5]
