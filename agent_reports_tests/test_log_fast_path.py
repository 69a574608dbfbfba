"""The tokenizer fast path (core/log_tokenizer.py) against the regex path it stands in for:
identical records, line numbers, malformed lines and counts, in every preset that has one.

The lines are written by hand from the servers' documentation (Apache mod_log_config's
Combined example and its escaping rules — `\\"`, `\\\\`, `\\xhh` —, nginx's `log_format`
with `\\x22` escapes and `$upstream_response_time` lists, Debian's vhost_combined, Traefik's
CLF), each good line next to the ways real files break it.
"""

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from agent_reports.core import access_logs, log_tokenizer
from agent_reports.core.access_logs import MAX_LINE_BYTES, read_log_file
from agent_reports.core.log_formats import PRESETS

ALL_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
T = b"[10/Oct/2000:13:55:36 -0700]"

# (request, status, bytes, referer, agent) of Combined lines, as Apache writes them.
GOOD = [
    (
        b"GET /apache_pb.gif HTTP/1.0",
        b"200",
        b"2326",
        b"http://www.example.com/start.html",
        b"Mozilla/4.08 [en] (Win98; I ;Nav)",
    ),
    (b"GET /index.html HTTP/1.1", b"304", b"-", b"-", b"curl/8.5.0"),
    (b'GET /search?q=\\"x\\" HTTP/1.1', b"200", b"512", b"-", b'Mozilla/5.0 \\"compatible\\"'),
    (b"GET /a\\\\b HTTP/1.1", b"404", b"0", b"", b"-"),
    (
        b"GET /caf\xc3\xa9/men\xc3\xba HTTP/2.0",
        b"200",
        b"1",
        b"-",
        b"Mozilla/5.0 (\xc3\x9cn\xc3\xafcode)",
    ),
    (b"GET /x HTTP/1.1", b"200", b"7", b"-", b"Mozilla \\x22quoted\\x22"),  # nginx's \x22
    (b"GET /", b"200", b"15", b"-", b"-"),  # HTTP/0.9: no protocol
    (b"-", b"408", b"0", b"-", b"-"),  # a connection closed before its request
    (b"GET /a b HTTP/1.1", b"400", b"226", b"-", b"-"),  # a raw space: no method/path
    (b"get /lower http/1.1", b"200", b"3", b"-", b"-"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"400", b"226", b"-", b"-"),  # TLS
    (b"POST /api/v1/jobs HTTP/2.0", b"503", b"19", b"https://ui.example.com/", b"Mozilla/5.0"),
]


def _plain(parts: tuple[bytes, ...]) -> bool:
    """A line the fast path must read itself: no escape, valid UTF-8."""
    text = b" ".join(parts)
    return b"\\" not in text and text.decode("utf-8", errors="replace").isprintable()


CLIENTS = [b"127.0.0.1", b"2001:db8::1", b"::ffff:10.1.2.3", b"fe80::1%eth0"]


def combined(client=b"127.0.0.1", user=b"frank", stamp=T, parts=GOOD[0]) -> bytes:
    request, status, size, referer, agent = parts
    return b'%s - %s %s "%s" %s %s "%s" "%s"' % (
        client,
        user,
        stamp,
        request,
        status,
        size,
        referer,
        agent,
    )


def broken() -> list[bytes]:
    """Lines each preset must reject or read with care, from a good Combined line."""
    good = combined()
    return [
        b"",
        b"   \t",
        b"\x00\x01\x02\x7fgarbage \xff\xfe",
        good.replace(b"/apache_pb.gif", b"/\xff\xfe.gif"),  # not UTF-8
        good.replace(b"Oct", b"oct"),
        good.replace(b"10/Oct", b"31/Feb"),
        good.replace(b"-0700", b"+1500"),
        good.replace(b"-0700", b"+1400"),
        good.replace(b" 200 ", b" 600 "),
        good.replace(b" 200 ", b" 099 "),
        good.replace(b" 2326 ", b" -5 "),
        good + b"  ",  # trailing spaces: the regex allows them
        good + b"\t",
        good + b"\r",  # CRLF
        good.replace(b"Win98;", b"Win98;\rI"),  # a lone CR inside quotes
        good.replace(b"Win98;", b"Win98;\tI"),
        b'"127.0.0.1"' + good[len(b"127.0.0.1") :],  # a quoted client
        good.replace(b" - frank", b' a"b frank'),  # a quote inside a token
        good.replace(b" - frank", b" -  frank"),  # two spaces
        good.replace(b'HTTP/1.0" 200', b'HTTP/1.0"x 200'),  # text after a closing quote
        good.replace(b'"-"', b'"-'),
        good[:-1] + b'x"y"',
        good.replace(b"frank ", b"frank\x0c"),
        b"x" * (MAX_LINE_BYTES + 10),
        good.replace(b"-0700]", b"-0700 ]"),
        good.replace(b"13:55:36", b"13:5a:36"),
        good.replace(b"[10/", b"(10/"),
    ]


def truncated() -> bytes:
    """A line cut inside its request: its open quote would swallow the lines after it."""
    return combined()[:70]


# A preset's line from a Combined one: (prefix, suffix) as the documentation shows them.
TAILS = {
    "combined": [(b"", b"")],
    "common": [],  # built below: the Combined line without its last two fields
    "combined_rt": [(b"", b" 1520"), (b"", b" 4250000"), (b"", b" -")],
    "nginx_main": [(b"", b' "-"'), (b"", b' "198.51.100.23, 10.0.0.1"')],
    "nginx_main_timed": [
        (b"", b' "-" 0.250 0.248'),
        (b"", b' "-" 0.003 0.003 : 0.001'),  # internal redirect: a colon list
        (b"", b' "-" 0.120 0.050, 0.070'),  # two upstreams: a comma list
        (b"", b' "-" 0.000 -'),
    ],
    "vhost_combined": [(b"www.example.com:443 ", b""), (b"blog.example.org:80 ", b"")],
    "traefik": [
        (b"", b' 1 "whoami@docker" "http://172.18.0.3:80" 3ms'),
        (b"", b' 2 "api@file" "http://10.0.0.7:8080" 4120ms'),
        (b"", b' 3 "-" "-" 0ms'),
    ],
}


def _as(preset: str, line: bytes, index: int) -> bytes:
    if preset == "common":
        head = line.rsplit(b' "', 2)[0] if line.count(b'"') >= 4 else line
        return head
    if preset.startswith("nginx"):
        line = line.replace(b" - frank ", b" - - ") if b" - frank " in line else line
    prefix, suffix = TAILS[preset][index % len(TAILS[preset])]
    return prefix + line + suffix


def _file(tmp_path: Path, preset: str, copies: int = 40) -> tuple[Path, int]:
    """Good lines (many, so most of each block is fast-path work) with broken ones among
    them, and one truncated line in the second half only; and how many of the good lines
    the fast path must read itself (no escape, one upstream time)."""
    lines: list[bytes] = []
    plain = 0
    for copy in range(copies):
        minute = b"%02d" % (copy % 60)
        stamp = T.replace(b":55:", b":" + minute + b":")
        for index, parts in enumerate(GOOD):
            client = CLIENTS[(copy + index) % len(CLIENTS)]
            user = b"-" if index % 3 else b"frank"
            lines.append(_as(preset, combined(client, user, stamp, parts), copy + index))
            plain += _plain(parts) and b", " not in lines[-1][-20:] and b" : " not in lines[-1]
        if copy % 8 == 3:
            lines += [_as(preset, line, copy) for line in broken()]
        if copy == copies * 3 // 4:
            lines.append(truncated())
    path = tmp_path / f"{preset}.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, plain


def _read(path: Path, preset: str | None, chunk_bytes: int) -> dict:
    log_format = PRESETS[preset] if preset else None
    if log_format is not None and log_format.rt_unit is None and "rt" in log_format.fields:
        log_format = log_format.with_unit(1e-6)
    chunks = list(read_log_file(path, *ALL_TIME, chunk_bytes, log_format=log_format))
    return {
        "records": pa.concat_tables([c.records for c in chunks]),
        "malformed": pa.concat_tables([c.malformed for c in chunks]).to_pylist(),
        "counts": [(c.lines_read, c.parsed, c.skipped) for c in chunks],
        "formats": [c.log_format.name if c.log_format else None for c in chunks],
        "changes": [c.format_changes for c in chunks],
    }


def _fast_lines(monkeypatch) -> tuple[list[int], list[int]]:
    """Counts, per block, of the lines the fast path vouched for, and the rows of each
    tokenizing (spies: a block tokenized twice had a row swallowing lines)."""
    vouched: list[int] = []
    rows: list[int] = []
    real = access_logs.fast_records
    real_csv = log_tokenizer._read_csv

    def csv_spy(*args):
        table, invalid = real_csv(*args)
        rows.append(table.num_rows + len(invalid))
        return table, invalid

    def spy(*args):
        found = real(*args)
        vouched.append(0 if found is None else int(found[0].sum()))
        return found

    monkeypatch.setattr(access_logs, "fast_records", spy)
    monkeypatch.setattr(log_tokenizer, "_read_csv", csv_spy)
    return vouched, rows


@pytest.mark.parametrize("preset", sorted(TAILS))
def test_fast_and_regex_paths_give_identical_records_and_counts(
    tmp_path: Path, monkeypatch, preset: str
) -> None:
    path, plain = _file(tmp_path, preset)
    size = path.stat().st_size
    for chunk_bytes in (size + 1, size // 3):  # one block; three (one with the cut line)
        with monkeypatch.context() as patch:
            patch.setattr(access_logs, "fast_records", lambda *args: None)
            slow = _read(path, preset, chunk_bytes)
        with monkeypatch.context() as patch:
            vouched, rows = _fast_lines(patch)
            fast = _read(path, preset, chunk_bytes)
        assert fast["records"].schema == slow["records"].schema
        assert fast["records"].to_pylist() == slow["records"].to_pylist()
        assert fast["malformed"] == slow["malformed"]
        assert fast["counts"] == slow["counts"]
        assert fast["formats"] == slow["formats"] and fast["changes"] == slow["changes"]
        assert sum(vouched) >= plain  # the fast path did the work, not the regex
        assert len(rows) == len(vouched) + 1  # the cut line's block was tokenized again
        skipped = sum(count[2] for count in fast["counts"])
        assert skipped >= 5 * len(broken()) // 2  # the broken lines were not all read


def test_detected_format_takes_the_fast_path_with_the_same_result(tmp_path, monkeypatch):
    path, plain = _file(tmp_path, "nginx_main_timed", copies=200)
    with monkeypatch.context() as patch:
        patch.setattr(access_logs, "fast_records", lambda *args: None)
        slow = _read(path, None, 1 << 20)
    vouched, _rows = _fast_lines(monkeypatch)
    fast = _read(path, None, 1 << 20)
    assert fast["formats"] == slow["formats"] == ["nginx_main_timed"]
    assert fast["records"].to_pylist() == slow["records"].to_pylist()
    assert fast["malformed"] == slow["malformed"] and fast["counts"] == slow["counts"]
    assert sum(vouched) >= plain


def test_the_fast_path_fields_of_documented_lines(tmp_path: Path) -> None:
    """A few values by hand, so both paths cannot agree on a wrong reading."""
    path = tmp_path / "doc.log"
    lines = [combined(), combined(b"2001:db8::1", b"-", T, GOOD[1]), combined(parts=GOOD[6])]
    path.write_bytes(b"\n".join(lines) + b"\n")
    records = _read(path, "combined", 1 << 20)["records"].to_pylist()
    first, second, third = records
    assert first["client"] == "127.0.0.1" and first["user"] == "frank"
    assert first["time"] == int(datetime(2000, 10, 10, 20, 55, 36, tzinfo=UTC).timestamp())
    assert (first["method"], first["path"], first["protocol"]) == (
        "GET",
        "/apache_pb.gif",
        "HTTP/1.0",
    )
    assert first["referer"] == "http://www.example.com/start.html"
    assert first["user_agent"] == "Mozilla/4.08 [en] (Win98; I ;Nav)"
    assert (first["status"], first["bytes"]) == (200, 2326)
    assert second["client"] == "2001:db8::1" and second["user"] is None
    assert (second["bytes"], second["referer"]) == (0, None)
    assert (third["method"], third["path"], third["protocol"]) == ("GET", "/", None)
