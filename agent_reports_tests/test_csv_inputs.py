"""Market and customer files as exporters and spreadsheets write them (agent_reports_tests/
data/: Yahoo and Stooq layouts, a German Excel's semicolon CSV, Excel "Unicode text"): found
where a user puts them, read in their dialect or refused with a precise error, counted in
every report, and parsed once while they do not change."""

import bz2
import gzip
import json
import os
import shutil
import zipfile
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from agent_reports.core.customers import read_customers_file, read_customers_files
from agent_reports.core.sources import FileSource, InputError, read_market_csv
from agent_reports.market.analysis import market_metrics, split_ratio

DATA = Path(__file__).parent / "data"
MARCH = (date(2024, 2, 1), date(2024, 4, 1))


@pytest.fixture
def drop(isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty drop folder the `files` source reads, with the cache under the test's state."""
    data = isolated_dirs / "data"
    data.mkdir()
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(data))
    return data


def _put(drop: Path, fixture: str, as_name: str | None = None) -> Path:
    target = drop / (as_name or fixture)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / fixture, target)
    return target


def _report(isolated_dirs: Path, analysis: str, key: str) -> dict:
    return json.loads((isolated_dirs / "reports" / analysis / f"{key}.json").read_text())


# --------------------------------------------------------------------------- dialects


@pytest.mark.parametrize(
    ("fixture", "ticker", "first", "dialect"),
    [
        (
            "market/yahoo/MSFT.csv",
            "MSFT",
            ("2024-03-04", 413.440002, 414.920013, 413.161438, 17596000),
            "comma-separated, utf-8",
        ),
        (
            "market/stooq/aapl.us.txt",
            "AAPL.US",
            ("2024-03-04", 176.15, 175.1, None, 81510101),
            "comma-separated, utf-8",
        ),
        (
            "market/stooq/nadj_us_d.csv",
            "NADJ.US",
            ("2024-02-26", 99.6, 100.0, None, 1000000),
            "comma-separated, utf-8",
        ),
        (
            "market/excel/prices-de.csv",
            "IBM",
            ("2024-03-04", 187.76, 185.98, None, 4012345),
            "semicolon-separated, decimal comma, utf-8-sig",
        ),
        (
            "market/excel/prices-unicode.txt",
            "NVDA",
            ("2024-03-04", 841.3, 852.37, None, 61561600),
            "tab-separated, utf-16",
        ),
    ],
)
def test_each_export_layout_and_dialect_reads_its_prices(fixture, ticker, first, dialect):
    parsed = read_market_csv(DATA / fixture)
    row = parsed.prices.iloc[0]
    day, open_, close, adj_close, volume = first
    assert row["ticker"] == ticker
    assert row["date"] == pd.Timestamp(day)
    assert (row["open"], row["close"], row["volume"]) == pytest.approx((open_, close, volume))
    assert row["adj_close"] == pytest.approx(adj_close) if adj_close else pd.isna(row["adj_close"])
    assert parsed.dialect == dialect
    assert row["line"] == 2


def test_an_excel_sep_hint_line_names_the_delimiter(tmp_path):
    path = tmp_path / "IBM.csv"
    path.write_text(
        "sep=;\nDate;Open;High;Low;Close;Volume\n2024-03-04;187,76;188,3;185,55;185,98;4012345\n"
    )
    parsed = read_market_csv(path)
    assert parsed.prices.iloc[0][["close", "line"]].tolist() == [185.98, 3]
    assert parsed.dialect == "semicolon-separated, decimal comma, utf-8"


def test_a_yfinance_download_with_its_three_header_lines(tmp_path):
    parsed = read_market_csv(DATA / "market/yfinance/AAPL.csv")
    first = parsed.prices.iloc[0]
    assert (first["ticker"], first["line"], first["volume"]) == ("AAPL", 4, 81510100)
    assert first["close"] == pytest.approx(174.0497589111328)
    assert first["open"] == pytest.approx(175.14306640625)  # columns by name, not position
    wide = tmp_path / "download.csv"
    wide.write_text(
        "Price,Close,Close,High,High,Low,Low,Open,Open,Volume,Volume\n"
        "Ticker,AAPL,MSFT,AAPL,MSFT,AAPL,MSFT,AAPL,MSFT,AAPL,MSFT\nDate,,,,,,,,,,\n"
    )
    with pytest.raises(InputError, match=r"download.csv:2: column 'ticker': 2 tickers side by"):
        read_market_csv(wide)


def test_thousands_separators_and_a_second_ticker_in_a_semicolon_file():
    prices = read_market_csv(DATA / "market/excel/prices-de.csv").prices
    brk = prices[prices["ticker"] == "BRK-B"].iloc[0]
    assert (brk["open"], brk["close"], brk["volume"]) == (1409.2, 1408.3, 612001.0)
    assert prices["date"].max() == pd.Timestamp("2024-03-08")  # 08.03.2024, day first


def test_a_yahoo_null_row_is_rejected_and_counted_not_read_as_prices():
    parsed = read_market_csv(DATA / "market/yahoo/MSFT.csv")
    assert len(parsed.prices) == 4
    assert parsed.rejected == [(6, "no prices (blank or null)")]
    assert parsed.summary("MSFT.csv") | {} == {
        "file": "MSFT.csv",
        "rows": 5,
        "rejected": 1,
        "dialect": "comma-separated, utf-8",
        "ticker_from": "file name",
        "adj_close": True,
        "first_date": "2024-03-04",
        "last_date": "2024-03-07",
    }


def test_a_file_that_fits_no_delimiter_says_how_it_looks(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("Date;Open;High;Low;Close\n2024-03-04;1,5;2;1;1,5\n")  # no volume
    with pytest.raises(InputError) as raised:
        read_market_csv(path)
    assert (raised.value.line, raised.value.column) == (1, "volume")
    assert "the file looks semicolon-separated" in str(raised.value)


def test_a_decimal_comma_cell_that_is_not_a_number_is_named(tmp_path):
    path = tmp_path / "IBM.csv"
    path.write_text(
        "Date;Open;High;Low;Close;Volume\n2024-03-04;1,5;2;1;1,5;10\n2024-03-05;1,5;2;1;x;9\n"
    )
    with pytest.raises(InputError) as raised:
        read_market_csv(path)
    assert str(raised.value) == (
        f"{path}:3: column 'close': expected a number with a decimal comma, got 'x'"
    )


def test_a_per_ticker_file_needs_a_ticker_name(tmp_path):
    path = tmp_path / "prices export 2024.csv"
    shutil.copyfile(DATA / "market/yahoo/MSFT.csv", path)
    with pytest.raises(InputError, match="no ticker column, and the file name is not a ticker"):
        read_market_csv(path)


@pytest.mark.parametrize(
    "fixture",
    ["customers/telco-comma.csv", "customers/telco-de.csv", "customers/telco-unicode.txt"],
)
def test_customer_exports_in_every_dialect_read_the_same(fixture):
    expected = read_customers_file(DATA / "customers/telco-comma.csv").frame
    parsed = read_customers_file(DATA / fixture)
    pd.testing.assert_frame_equal(parsed.frame, expected)
    assert parsed.frame["total_charges"].tolist()[2] == 1840.75  # "1.840,75" in the German file
    if fixture.endswith("-de.csv"):
        assert parsed.dialect == "semicolon-separated, decimal comma, utf-8-sig"
        assert parsed.rejected == [(6, "empty row")]  # Excel's row of bare semicolons


def test_a_legacy_windows_encoding_is_detected_not_a_codec_error(tmp_path):
    text = (DATA / "customers/telco-comma.csv").read_text()
    text = text.replace("Electronic check", "Elektronische Überweisung (Gebühr)")
    path = tmp_path / "old-excel.csv"
    path.write_bytes(text.encode("cp1252"))
    parsed = read_customers_file(path)
    assert parsed.frame["payment_method"].iloc[0] == "Elektronische Überweisung (Gebühr)"
    assert parsed.dialect.startswith("comma-separated, cp125")


def test_a_customer_header_that_fits_no_delimiter_says_how_it_looks(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("customerID;tenure;Contract;Churn\nX1;3;Two year;No\n", encoding="utf-16")
    with pytest.raises(InputError) as raised:
        read_customers_file(path)
    assert raised.value.column == "monthly_charges"
    assert "the file looks semicolon-separated, utf-16" in str(raised.value)


# ----------------------------------------------------------------------------- finding


def test_files_are_found_in_subfolders_in_any_case_and_compression(drop):
    market = drop / "market"
    _put(drop, "market/yahoo/MSFT.csv", "market/2024/MSFT.CSV")
    text = (DATA / "market/stooq/aapl.us.txt").read_bytes()
    (market / "2024" / "aapl.us.TXT.GZ").write_bytes(gzip.compress(text))
    (market / "ibm.csv.bz2").write_bytes(
        bz2.compress((DATA / "market/excel/prices-de.csv").read_bytes())
    )
    with zipfile.ZipFile(market / "nvda.zip.csv.zip", "w") as archive:
        archive.write(DATA / "market/excel/prices-unicode.txt", "prices.txt")
    (market / "README.txt").write_text("Prices from our broker, one file per year.\n")
    (market / "2024" / "prices.xlsx").write_bytes(b"PK\x03\x04")
    (market / ".DS_Store").write_bytes(b"\x00\x01")
    (market / ".git" / "objects").mkdir(parents=True)
    (market / ".git" / "objects" / "pack.csv").write_text("a hidden folder is not walked into")
    with zipfile.ZipFile(market / "2024" / "SPLT.zip", "w") as archive:
        archive.write(DATA / "market/yahoo/SPLT.csv", "SPLT.csv")

    read = FileSource(drop).market_read(*MARCH)
    tickers = ["AAPL.US", "BRK-B", "IBM", "MSFT", "NVDA", "SPLT"]
    assert sorted(read.prices["ticker"].unique()) == tickers
    files = {f["file"]: f for f in read.coverage["files"]}
    assert set(files) == {
        "2024/MSFT.CSV",
        "2024/SPLT.zip",
        "2024/aapl.us.TXT.GZ",
        "ibm.csv.bz2",
        "nvda.zip.csv.zip",
    }
    assert read.coverage["rows_read"] == 5 + 5 + 6 + 3 + 24
    assert read.coverage["rows_rejected"] == 1
    assert read.coverage["ignored"] == [
        {"file": ".DS_Store", "reason": "hidden file"},
        {"file": ".git", "reason": "hidden folder"},
        {"file": "2024/prices.xlsx", "reason": "an Excel workbook: save it as CSV"},
        {"file": "README.txt", "reason": "a text file without a price header"},
    ]
    assert set(read.prices["file"]) == set(files)


@pytest.mark.parametrize("state", ["missing", "empty", "no csv"])
def test_a_missing_or_empty_folder_fails_the_run_naming_it(
    drop, run_partition, state, isolated_dirs
):
    if state != "missing":
        (drop / "market").mkdir()
    if state == "no csv":
        (drop / "market" / "prices.xlsx").write_bytes(b"PK\x03\x04")
    result = run_partition("market_job", "2024-03-05", raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert f"{drop / 'market'}: " in message
    assert ("folder not found" if state == "missing" else "no CSV files here") in message
    if state == "no csv":
        assert "prices.xlsx: an Excel workbook" in message
    assert not (isolated_dirs / "reports" / "market").exists()


def test_every_unreadable_file_is_named_in_the_failure(drop):
    _put(drop, "market/yahoo/MSFT.csv", "market/MSFT.csv")
    (drop / "market" / "a.csv").write_text(
        "Date,Open,High,Low,Close,Volume\n2024-03-04,1,2,x,1,1\n"
    )
    (drop / "market" / "b.csv").write_bytes(b"\x1f\x8b broken")
    (drop / "market" / "c.csv.gz").write_bytes(b"\x1f\x8b broken")
    with pytest.raises(InputError) as raised:
        FileSource(drop).market_read(*MARCH)
    message = str(raised.value)
    assert message.startswith(f"{drop / 'market' / 'a.csv'}:2: column 'low': expected a number")
    also = f"also unreadable: {drop / 'market' / 'b.csv'}:1, {drop / 'market' / 'c.csv.gz'})"
    assert message.endswith(also)


# ------------------------------------------------------------------------ split days


@pytest.mark.parametrize(
    ("fixture", "ticker", "basis", "evidence"),
    [
        ("market/yahoo/SPLT.csv", "SPLT", "adj_close", "adjusted close"),
        ("market/stooq/nadj_us_d.csv", "NADJ.US", "close, split-adjusted", "price move"),
    ],
)
def test_a_two_for_one_split_is_flagged_not_reported_as_a_crash(fixture, ticker, basis, evidence):
    prices = read_market_csv(DATA / fixture).prices
    metrics = market_metrics(prices, date(2024, 3, 28))
    got = metrics["tickers"][ticker]
    assert got["close"] == 54.06  # the raw close is still reported
    assert got["return_1d"] == pytest.approx(54.06 * 2 / 106.84 - 1, abs=1e-6)  # +1.2%
    assert got["price_basis"] == basis
    assert got["split"] == {
        "ratio": "2:1",
        "raw_return_1d": pytest.approx(54.06 / 106.84 - 1, abs=1e-6),
        "evidence": evidence,
    }
    assert 0.05 < got["volatility_20d"] < 0.6  # the split's -49 % log return is not in it
    if evidence == "price move":
        assert got["volume_ratio_20d"] < 1.5  # volumes before the split are scaled too
    assert metrics["top_movers"][0]["return_1d"] > 0


@pytest.mark.parametrize(
    ("move", "ratio"),
    [(0.5, (2, 1)), (0.251, (4, 1)), (10.2, (1, 10)), (0.667, (3, 2)), (0.9, None), (0.0, None)],
)
def test_split_ratios_forward_and_reverse(move, ratio):
    assert split_ratio(move) == ratio


def test_the_day_before_a_split_has_no_split(drop):
    prices = read_market_csv(DATA / "market/stooq/nadj_us_d.csv").prices
    day = market_metrics(prices, date(2024, 3, 27))["tickers"]["NADJ.US"]
    assert (day["split"], day["price_basis"]) == (None, "close")


def test_the_split_reads_as_a_split_in_the_report(drop, run_partition, isolated_dirs):
    _put(drop, "market/stooq/nadj_us_d.csv", "market/nadj_us_d.csv")
    run_partition("market_job", "2024-03-28")
    record = _report(isolated_dirs, "market", "2024-03-28")
    notes = " ".join(record["notes"])
    assert "NADJ.US: probable 2:1 split (raw close −49.40 %" in notes
    assert "-49" not in record["summary"] and "−49" not in record["summary"]
    assert "+1.20 %" in record["summary"] + json.dumps(record["findings"])
    assert any(f["title"] == "NADJ.US: probable 2:1 split" for f in record["findings"])
    markdown = (isolated_dirs / "reports" / "market" / "2024-03-28.md").read_text()
    assert "| NADJ.US | 54.06 | " in markdown and "adj close" not in markdown  # none in file


# ---------------------------------------------------------------- checks and coverage


def test_a_zero_close_fails_the_blocking_check(drop, run_partition, isolated_dirs):
    path = _put(drop, "market/stooq/aapl.us.txt", "market/aapl.us.txt")
    path.write_text(path.read_text().replace(",168.49,169,", ",168.49,0,"))
    result = run_partition("market_job", "2024-03-08", raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    check = checks["prices_present_and_positive"]
    assert check.passed is False
    [example] = json.loads(check.metadata["examples"].value)
    assert (example["close"], example["file"], example["line"]) == ("0.0", "aapl.us.txt", "5")
    assert not result.success
    assert not (isolated_dirs / "reports" / "market").exists()


def test_the_report_counts_rows_read_and_rejected_and_names_what_it_skipped(
    drop, run_partition, isolated_dirs
):
    _put(drop, "market/yahoo/MSFT.csv", "market/MSFT.csv")
    _put(drop, "market/stooq/aapl.us.txt", "market/2024/aapl.us.txt")
    (drop / "market" / "notes.md").write_text("# where these came from\n")
    result = run_partition("market_job", "2024-03-07")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    rows_check = checks["input_rows_mostly_read"]  # 1 of 10 rows is not more than a tenth
    assert rows_check.passed is True and rows_check.metadata["rows_rejected"].value == 1
    record = _report(isolated_dirs, "market", "2024-03-07")
    coverage = record["metrics"]["input"]
    assert (coverage["rows_read"], coverage["rows_rejected"]) == (10, 1)
    assert coverage["rows_in_window"] == 4 + 4  # 4 MSFT rows, AAPL up to the 7th
    assert coverage["rejected_examples"] == ["MSFT.csv:6: no prices (blank or null)"]
    assert coverage["ignored"] == [{"file": "notes.md", "reason": "not a CSV file (.md)"}]
    note = next(n for n in record["notes"] if n.startswith("Input:"))
    assert note == (
        "Input: 2 file(s) in market/, 10 rows read (8 in this window), 1 rejected "
        "(MSFT.csv:6: no prices (blank or null)); not read: notes.md: not a CSV file (.md)."
    )
    markdown = (isolated_dirs / "reports" / "market" / "2024-03-07.md").read_text()
    assert "| MSFT.csv | comma-separated, utf-8 | 5 | 1 | 2024-03-04 | 2024-03-07 |" in markdown


def test_a_rerun_on_cached_files_writes_the_same_bytes(drop, run_partition, isolated_dirs):
    _put(drop, "market/yahoo/SPLT.csv", "market/SPLT.csv")
    _put(drop, "customers/telco-de.csv", "customers/telco-de.csv")
    outputs = [
        isolated_dirs / "reports" / "market" / "2024-03-28.json",
        isolated_dirs / "reports" / "churn" / "2024-03-04.json",
    ]
    run_partition("market_job", "2024-03-28")  # parses the files
    run_partition("churn_job", "2024-03-04")
    first = [path.read_bytes() for path in outputs]
    run_partition("market_job", "2024-03-28")  # reads them from the cache
    run_partition("churn_job", "2024-03-04")
    assert [path.read_bytes() for path in outputs] == first
    assert b"hits" not in first[0] + first[1]


def test_a_day_outside_the_files_is_not_a_quiet_holiday(drop, run_partition, isolated_dirs):
    _put(drop, "market/yahoo/MSFT.csv", "market/MSFT.csv")
    run_partition("market_job", "2024-06-03")  # a Monday, months after the file ends
    notes = _report(isolated_dirs, "market", "2024-06-03")["notes"]
    assert "No prices for this day: the market files hold 2024-03-04 to 2024-03-07." in notes


def test_the_churn_report_counts_customer_rows(drop, run_partition, isolated_dirs):
    _put(drop, "customers/telco-de.csv", "customers/2024/telco-de.csv")
    result = run_partition("churn_job", "2024-03-04")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["input_rows_mostly_read"].passed is False  # 1 of 5 rows: more than a tenth
    assert checks["input_rows_mostly_read"].description == "1 of 5 rows rejected (20%)"
    record = _report(isolated_dirs, "churn", "2024-03-04")
    coverage = record["metrics"]["input"]
    assert (coverage["rows_read"], coverage["rows_rejected"]) == (5, 1)
    assert "Input: 1 file(s) in customers/, 5 rows read, 1 rejected" in " ".join(record["notes"])


# ------------------------------------------------------------------------------ cache


def test_an_unchanged_file_is_read_from_the_cache_and_a_changed_one_again(drop, isolated_dirs):
    msft = _put(drop, "market/yahoo/MSFT.csv", "market/MSFT.csv")
    _put(drop, "market/stooq/aapl.us.txt", "market/aapl.us.txt")
    source = FileSource(drop)
    first = source.market_read(*MARCH)
    assert first.coverage["cache"] == {"hits": 0, "misses": 2}
    assert list((isolated_dirs / "state" / "parsed_csv" / "market").glob("*.pickle"))
    again = source.market_read(*MARCH)
    assert again.coverage["cache"] == {"hits": 2, "misses": 0}
    pd.testing.assert_frame_equal(again.prices, first.prices)

    stat = msft.stat()
    msft.write_text(msft.read_text().replace("414.920013", "999.0"))
    os.utime(msft, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the size differs
    changed = source.market_read(*MARCH)
    assert changed.coverage["cache"] == {"hits": 1, "misses": 1}
    assert 999.0 in changed.prices["close"].tolist()

    replaced = msft.with_name("new.tmp")
    replaced.write_bytes(msft.read_bytes())
    os.replace(replaced, msft)  # same bytes, a new inode and mtime
    assert source.market_read(*MARCH).coverage["cache"] == {"hits": 1, "misses": 1}


def test_a_damaged_cache_entry_is_parsed_again(drop, isolated_dirs):
    _put(drop, "customers/telco-comma.csv", "customers/telco.csv")
    frame, _ = read_customers_files(drop / "customers", isolated_dirs / "cache")
    entries = list((isolated_dirs / "cache" / "customers").glob("*.pickle"))
    assert len(entries) == 2  # the file's parse and the folder's combined base
    for entry in entries:
        entry.write_bytes(b"not a pickle")
    again, coverage = read_customers_files(drop / "customers", isolated_dirs / "cache")
    assert coverage["cache"] == {"hits": 0, "misses": 1}
    pd.testing.assert_frame_equal(again, frame)


def test_a_cache_that_cannot_be_written_does_not_fail_the_read(drop, isolated_dirs):
    _put(drop, "market/yahoo/MSFT.csv", "market/MSFT.csv")
    blocked = isolated_dirs / "not-a-folder"
    blocked.write_text("a file where the cache folder would go")
    read = FileSource(drop, blocked).market_read(*MARCH)
    assert len(read.prices) == 4
    assert FileSource(drop, blocked).market_read(*MARCH).coverage["cache"]["misses"] == 1
