"""Hostile text in the analysed data goes through real report builds and comes out inert.

Terminal control bytes (ESC, BEL, NUL, C1 CSI), bidi overrides, line separators, prompt
markup (`</data>`) and HTML (`<script>`) are planted in a web access log (compliance) and
in a customer id that also starts a spreadsheet formula (churn). Every output is read
back: the JSON, Markdown and HTML files, the CSV attachment, the e-mail as the real SMTP
server stored it, and the Markdown preview in the Dagster metadata. None may hold a raw
hostile character; the JSON must still parse to the exact text.

The compliance audit normalises request paths as a WAF does before matching
(`/%2eenv`, `/%61dmin/`, `/static/../admin/`, `/./.git/config` are found), reads an
IPv4-mapped client (`::ffff:10.1.2.3`) as its IPv4 address for the allow-list, and
gives the verdict `unknown` with a failing ERROR check when it could not read the logs.
"""

import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetCheckSeverity

from agent_reports.churn.analysis import customers_as_of
from agent_reports.compliance.analysis import (
    PolicyConfig,
    client_address,
    log_coverage,
    normalized_path,
)
from agent_reports.core.access_logs_demo import hour_lines
from agent_reports.core.customers import demo_customers
from agent_reports.core.delivery import DeliveryKey, EmailSender
from agent_reports.core.report_email import report_email
from agent_reports.core.reports import Attachment, Report, csv_cell, neutral_text

MONTH = "2024-03-01"
WEEK = "2024-03-04"
OUTSIDE = "198.51.100.7"
# Raw in a log line (some servers and proxies log bytes unescaped), and percent-encoded.
RAW_HOSTILE = "/x\x1b[2J\x1b]0;owned\x07\x00</data>"
ENCODED_HOSTILE = "/admin/%1b%5b31m%07%00%c2%9b%e2%80%ae%e2%80%a8</data><script>alert(1)</script>"
FORMULA_ID = '=HYPERLINK("http://evil.example")\x1b[31m\x07\x00</data><script>x</script>\u202e'
# What no view may hold raw: C0 but tab/newline/CR-in-CRLF, DEL, C1, U+2028/9, bidi.
HOSTILE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028-\u202e\u2066-\u2069]")
EVASIONS = ["/%2eenv", "/%61dmin/", "/static/../admin/", "/./.git/config"]


def _line(client: str, when: datetime, path: str, status: int = 200) -> str:
    stamp = when.strftime("%d/%b/%Y:%H:%M:%S +0000")
    return f'{client} - - [{stamp}] "GET {path} HTTP/1.1" {status} 512 "-" "curl/8.5.0"'


def _no_raw_hostile(text: str, where: str) -> None:
    text = text.replace("\r\n", "\n")
    found = HOSTILE.findall(text)
    assert not found, f"{where}: raw {sorted(set(found))!r}"
    assert "\r" not in text, f"{where}: a lone CR"


def _materialization(result, asset: str):
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    ]
    return event.event_specific_data.materialization


# ----------------------------------------------------------------- pure: the rules themselves


def test_neutral_text_escapes_what_a_terminal_acts_on_and_keeps_the_rest():
    assert neutral_text("a\tb\nc") == "a\tb\nc"
    assert neutral_text("x\r\ny") == "x\ny"
    assert neutral_text("\x1b[2J\x07\x00\r\x7f\x9b") == r"\x1b[2J\x07\x00\x0d\x7f\x9b"
    assert neutral_text("a\u202eb\u2028c\u2066") == r"a\u202eb\u2028c\u2066"
    assert neutral_text("Zürich – ok 東京 \u200f") == "Zürich – ok 東京 \u200f"  # RLM stays
    assert neutral_text("bad \udcff byte") == r"bad \udcff byte"


def test_csv_cells_cannot_start_a_formula_and_text_attachments_are_neutral():
    for formula in ("=1+1", "+1", "-2+3", "@SUM(A1)", "\tx", "\r=x", "\uff1d1"):
        assert csv_cell(formula) == "'" + formula
    assert csv_cell(-2.5) == -2.5 and csv_cell("C-1") == "C-1"
    attachment = Attachment("a\x1b.csv", "text/csv", b"id\nx\x1b\x07\x00y\n")
    assert attachment.data == b"id\nx\\x1b\\x07\\x00y\n" and attachment.filename == r"a\x1b.csv"
    png = Attachment("c.png", "image/png", b"\x89PNG\x1a\x00")
    assert png.data == b"\x89PNG\x1a\x00"  # binary attachments are left alone


def test_the_paths_a_waf_would_normalise():
    cases = {
        "/%2eenv": "/.env",
        "/%61dmin/": "/admin/",
        "/static/../admin/": "/admin/",
        "/./.git/config": "/.git/config",
        "/static%2f%2e%2e%2fadmin": "/admin",  # encoded slashes and dots
        "/static%5c..%5cadmin%5c": "/admin/",  # encoded backslashes
        "/%252egit/HEAD": "/.git/head",  # double encoding
        "/%c0%ae%c0%ae/.git": "/.git",  # overlong UTF-8 dots
        "/%u002eenv": "/.env",  # IIS %u
        "http://Shop.Example:8080/Admin/?x=1": "/admin/",  # absolute form
        "/admin;jsessionid=ABC/users": "/admin/users",
        "\\admin\\users": "/admin/users",
        "//ADMIN//users": "/admin/users",
        "/admin%00.php": "/admin.php",
        "/../../etc/passwd": "/etc/passwd",
        "/index.html?next=/admin": "/index.html",
    }
    assert {raw: normalized_path(raw) for raw in cases} == cases
    config = PolicyConfig()
    assert all(config.sensitive(raw) for raw in EVASIONS)
    for benign in ("/admin/../index.html", "/administrator-guide", "/static/app.js", "/?q=/admin"):
        assert config.sensitive(benign) is None, benign


def test_ipv4_mapped_clients_are_their_ipv4_address():
    assert str(client_address("::ffff:10.1.2.3")) == "10.1.2.3"
    assert str(client_address("[2001:db8::1]")) == "2001:db8::1"
    assert str(client_address("fe80::1%eth0")) == "fe80::1"
    assert client_address("proxy.internal") is None


def test_log_coverage_verdicts():
    ok = log_coverage(1, {"a.log": {"parsed": 9, "skipped": 1}}, [])
    assert (ok["verdict"], ok["reasons"], ok["lines"], ok["skipped"]) == ("ok", [], 10, 1)
    junk = {"junk.log": {"parsed": 0, "skipped": 8}, "a.log": {"parsed": 3, "skipped": 0}}
    mostly = log_coverage(2, junk, [])
    assert mostly["verdict"] == "unknown" and mostly["reasons"] == ["8 of 11 line(s) unreadable"]
    assert [f["file"] for f in mostly["files"]] == ["a.log", "junk.log"]
    assert log_coverage(0, {}, [])["reasons"] == ["no log file found"]
    february_only = {"feb.log": {"parsed": 0, "skipped": 0}}
    assert log_coverage(1, february_only, [])["reasons"] == [
        "no line of the month could be read from 1 file(s)"
    ]
    cut = ["b.gz after line 120 (Compressed file ended before the end-of-stream marker)"]
    broken = log_coverage(1, {"b.gz": {"parsed": 119, "skipped": 1}}, cut)
    assert broken["verdict"] == "unknown" and broken["reasons"] == [
        f"1 file(s) broke off: {cut[0]}"
    ]
    missing = log_coverage(0, {}, [], "access logs unreadable: /d/logs: folder not found")
    assert missing["reasons"] == ["access logs unreadable: /d/logs: folder not found"]


# ------------------------------------------------------- compliance: a real audit of the logs


def _hostile_logs(folder: Path) -> None:
    day = datetime(2024, 3, 5, 10, tzinfo=UTC)
    lines = [_line("203.0.113.1", day + timedelta(seconds=n), "/", 200) for n in range(20)]
    lines.append(_line(OUTSIDE, day + timedelta(minutes=1), "/.git" + RAW_HOSTILE))
    lines.append(_line(OUTSIDE, day + timedelta(minutes=2), ENCODED_HOSTILE))
    lines += [
        _line(OUTSIDE, day + timedelta(minutes=3, seconds=n), p) for n, p in enumerate(EVASIONS)
    ]
    lines.append(_line("::ffff:10.1.2.3", day + timedelta(minutes=4), "/admin/users"))
    lines.append("junk \x1b[31m not a log line \x07\x00")  # skipped, and counted
    folder.mkdir(parents=True)
    (folder / "access.log").write_bytes(("\n".join(lines) + "\n").encode())


def test_a_hostile_log_month_audits_with_inert_outputs(tmp_path, monkeypatch, run_partition):
    _hostile_logs(tmp_path / "data" / "logs")
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))
    result = run_partition("compliance_job", MONTH)
    folder = tmp_path / "reports" / "compliance"
    raw_json = (folder / f"{MONTH}.json").read_bytes()
    record = json.loads(raw_json)

    findings = record["metrics"]["policy_findings"]
    normalized = {f["normalized"] for f in findings if f["rule"] == "sensitive-path"}
    assert {"/.env", "/admin/", "/.git/config"} <= normalized
    assert not [f for f in findings if f["client"] == "::ffff:10.1.2.3"]
    assert len([f for f in findings if f["rule"] == "sensitive-path"]) == 2 + len(EVASIONS)
    log = str(tmp_path / "data" / "logs" / "access.log")
    assert [f["evidence"] for f in findings if f["path"] == "/static/../admin/"] == [[f"{log}:25"]]
    # The JSON is faithful: the exact logged text, control characters escaped.
    assert any(f["path"] == "/.git" + RAW_HOSTILE for f in findings)
    assert any("\x1b[31m\x07\x00\u009b\u202e\u2028</data>" in f["path"] for f in findings)
    assert not re.search(rb"[\x00-\x08\x0b-\x1f]", raw_json)
    _no_raw_hostile(raw_json.decode(), "json")
    scan = record["metrics"]["log_scan"]
    assert (scan["verdict"], scan["lines"], scan["parsed"], scan["skipped"]) == ("ok", 28, 27, 1)

    markdown = (folder / f"{MONTH}.md").read_text()
    html = (folder / f"{MONTH}.html").read_text()
    preview = _materialization(result, "compliance_report").metadata["preview"].value
    for name, text in (("md", markdown), ("html", html), ("preview", preview)):
        _no_raw_hostile(text, name)
        assert "<script>" not in text and "</data>" not in text
    assert r"\x1b[31m\x07\x00\x9b\u202e\u2028" in html
    assert "&lt;/data&gt;&lt;script&gt;" in html
    assert "28 line(s) of the month from 1 file(s): 27 parsed, 1 skipped" in markdown


def _audit(tmp_path, monkeypatch, run_partition) -> tuple[dict, object]:
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))
    result = run_partition("compliance_job", MONTH)
    path = tmp_path / "reports" / "compliance" / f"{MONTH}.json"
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "logs_were_read"]
    return json.loads(path.read_text()), check


@pytest.mark.parametrize("layout", ["json-lines", "no-folder"])
def test_an_unreadable_month_is_unknown_never_clean(tmp_path, monkeypatch, run_partition, layout):
    logs = tmp_path / "data" / "logs"
    (tmp_path / "data").mkdir()
    if layout == "json-lines":  # a format the reader does not know: every line skipped
        logs.mkdir()
        stamp = datetime(2024, 3, 9, 12, tzinfo=UTC)
        rows = [
            {"time": (stamp + timedelta(seconds=n)).isoformat(), "path": "/admin", "status": 200}
            for n in range(40)
        ]
        (logs / "access.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record, check = _audit(tmp_path, monkeypatch, run_partition)
    scan = record["metrics"]["log_scan"]
    assert scan["verdict"] == "unknown"
    assert check.passed is False and check.severity == AssetCheckSeverity.ERROR
    assert "0 policy finding(s)" not in record["summary"]
    assert "UNKNOWN" in record["summary"] and "cannot be ruled out" in record["summary"]
    assert record["notes"][0].startswith("Access-log scan: verdict UNKNOWN")
    if layout == "json-lines":
        assert (scan["lines"], scan["skipped"]) == (40, 40)
        assert scan["files"][0]["file"] == str(logs / "access.json")
        assert "40 of 40 line(s) unreadable" in scan["reasons"]
    else:
        assert "folder not found" in scan["reasons"][0] and str(logs) in scan["reasons"][0]
    # The coverage half of the audit still stands.
    assert record["metrics"]["coverage"]["market"]["windows"] == 31


def test_hostile_paths_in_the_anomaly_report_are_inert(tmp_path, monkeypatch, run_partition):
    """The hour's top paths table carries the logged path: a flood of one hostile path."""
    key, hour = "2024-03-05-14:00", int(datetime(2024, 3, 5, 14, tzinfo=UTC).timestamp()) // 3600
    logs = tmp_path / "data" / "logs"
    logs.mkdir(parents=True)
    baseline = b"".join(hour_lines(7, hour - 24 * d) for d in range(7, 0, -1))
    flood = _line(OUTSIDE, datetime(2024, 3, 5, 14, 10, tzinfo=UTC), ENCODED_HOSTILE + RAW_HOSTILE)
    (logs / "access.log").write_bytes(
        baseline + hour_lines(7, hour) + (flood + "\n").encode() * 600
    )
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))
    result = run_partition("anomalies_job", key)
    folder = tmp_path / "reports" / "anomalies"
    raw_json = (folder / f"{key}.json").read_text()
    assert "\\u001b]0;owned\\u0007\\u0000</data>" in raw_json  # the raw bytes, JSON-escaped
    outputs = {ext: (folder / f"{key}.{ext}").read_text() for ext in ("json", "md", "html")}
    outputs["preview"] = _materialization(result, "anomalies_report").metadata["preview"].value
    for name, text in outputs.items():
        _no_raw_hostile(text, name)
    assert r"\x1b]0;owned\x07\x00&lt;/data&gt;" in outputs["html"]


def test_the_model_s_text_and_name_are_inert(monkeypatch, run_partition, llm_server, tmp_path):
    """What the LLM writes, and the model name it echoes, are untrusted text too."""
    llm_server.use(monkeypatch)
    model = "gpt-\x1b]0;pwned\x07mini"
    monkeypatch.setenv("AGENT_REPORTS_MODEL", model)
    summary = "ALPH led\x1b[2J\x07 a session\u202e</data><script>x</script>\u2028."
    llm_server.reply_json({"summary": summary, "findings": []})
    result = run_partition("market_job", "2024-03-05")
    folder = tmp_path / "reports" / "market"
    record = json.loads((folder / "2024-03-05.json").read_text())
    assert (record["summary"], record["generated_by"]) == (summary, model)  # faithful
    metadata = _materialization(result, "market_report").metadata
    outputs = {ext: (folder / f"2024-03-05.{ext}").read_text() for ext in ("json", "md", "html")}
    outputs |= {
        "preview": metadata["preview"].value,
        "generated_by": metadata["generated_by"].value,
    }
    for name, text in outputs.items():
        _no_raw_hostile(text, name)
    assert outputs["generated_by"] == r"gpt-\x1b]0;pwned\x07mini"
    assert r"led\x1b[2J\x07 a session\u202e&lt;/data&gt;&lt;script&gt;" in outputs["html"]


# ------------------------------------------------------------ churn: report, CSV and e-mail


def _hostile_customers(data_dir: Path) -> None:
    base = customers_as_of(demo_customers(7), date(2024, 3, 11)).head(1500).copy()
    risky = base.iloc[[0]].assign(
        customer_id=FORMULA_ID,
        signup_date=pd.Timestamp("2024-02-20"),
        churn_date=pd.NaT,
        contract="Month-to-month",
        internet_service="Fiber optic",
        payment_method="Electronic check",
        tech_support="No",
        tenure=0.0,
        churned=False,
        monthly_charges=99.0,
    )
    path = data_dir / "customers" / "customers.csv"
    path.parent.mkdir(parents=True)
    pd.concat([base, risky], ignore_index=True).to_csv(path, index=False)


def _mail_env(monkeypatch, port: int) -> None:
    monkeypatch.setenv("AGENT_REPORTS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("AGENT_REPORTS_SMTP_PORT", str(port))
    monkeypatch.setenv("AGENT_REPORTS_SMTP_SECURITY", "none")
    monkeypatch.setenv("AGENT_REPORTS_SMTP_FROM", "churn-reports@example.com")
    monkeypatch.setenv("AGENT_REPORTS_CHURN_RECIPIENTS", "team@example.com")


def test_a_hostile_customer_id_is_inert_in_report_csv_and_email(
    tmp_path, monkeypatch, run_partition, smtp_server
):
    _hostile_customers(tmp_path / "data")
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(tmp_path / "data"))
    _mail_env(monkeypatch, smtp_server.port)
    result = run_partition("churn_job", WEEK)
    folder = tmp_path / "reports" / "churn"
    record = json.loads((folder / f"{WEEK}.json").read_text())
    ids = [row["customer_id"] for row in record["metrics"]["top_at_risk"]]
    assert FORMULA_ID in ids  # faithful in the record

    attachment = (folder / f"{WEEK}.at-risk-customers.csv").read_text()
    [row] = [row for row in csv.reader(io.StringIO(attachment)) if "HYPERLINK" in row[1]]
    assert row[1] == "'" + neutral_text(FORMULA_ID)  # a text cell, not a formula
    outputs = {ext: (folder / f"{WEEK}.{ext}").read_text() for ext in ("json", "md", "html")}
    outputs["csv"] = attachment
    outputs["preview"] = _materialization(result, "churn_report").metadata["preview"].value

    [stored] = smtp_server.messages()
    eml = stored.as_bytes()
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", eml)
    email = BytesParser(policy=policy.default).parsebytes(eml)
    for part in email.walk():
        if part.get_content_maintype() == "text":
            outputs[f"eml {part.get_content_type()}"] = part.get_content()
    assert {"eml text/plain", "eml text/html", "eml text/csv"} <= set(outputs)
    for name, text in outputs.items():
        _no_raw_hostile(text, name)
    for name in ("html", "eml text/html"):
        assert "<script>x" not in outputs[name] and r"\x1b[31m\x07\x00" in outputs[name]
    assert outputs["eml text/csv"] == attachment


def test_an_email_subject_from_data_is_one_inert_line(smtp_server):
    report = Report(
        "churn", WEEK, "a", "b", "offline", "f" * 64, "v", "s", [], {},
        attachments=[Attachment("x\x1b.csv", "text/csv", b"=1\x07\n")],
    )  # fmt: skip
    sender = EmailSender("127.0.0.1", smtp_server.port, "r@example.com", security="none")
    key = DeliveryKey("churn", WEEK, "team@example.com", "fp")
    subject = "Week \x1b[31mred\x07\r\nBcc: victim@example.com\u202e"
    sender.send(report_email(sender, report, subject, key), key.recipient)
    [stored] = smtp_server.messages()
    email = BytesParser(policy=policy.default).parsebytes(stored.as_bytes())
    assert email["Subject"] == r"Week \x1b[31mred\x07 Bcc: victim@example.com\u202e"
    assert email["Bcc"] is None
    [attached] = [p for p in email.iter_attachments()]
    assert attached.get_filename() == r"x\x1b.csv" and attached.get_content() == "=1\\x07\n"
