"""The files source: any CSV names and layouts it promises to read, and a precise error for
anything it cannot, with nothing written for the partition."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from agent_reports.core.sources import MARKET_COLUMNS, FileSource, InputError, read_market_csv

HEADER = "date,ticker,open,high,low,close,volume"
DAY = "2024-03-05"


def _rows(ticker: str, closes: list[float], start_day: int = 1) -> list[str]:
    return [
        f"2024-03-{start_day + i:02d},{ticker},{c},{c + 1},{c - 1},{c},{1000 + i}"
        for i, c in enumerate(closes)
    ]


@pytest.fixture
def files_env(isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = isolated_dirs / "data"
    (data / "market").mkdir(parents=True)
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(data))
    return data / "market"


def test_any_names_mixed_tickers_gzip_and_extra_columns(files_env: Path) -> None:
    (files_env / "aaa.csv").write_text("\n".join([HEADER, *_rows("AAA", [10, 11, 12])]) + "\n")
    mixed = [
        "ticker,date,close,open,high,low,volume,exchange",
        "BBB,2024-03-01,20,20,21,19,500,XNAS",
        "CCC,2024-03-01,30,30,31,29,700,XNYS",
        "",
        "BBB,2024-03-02,21,21,22,20,510,XNAS",
    ]
    (files_env / "mixed export.CSV.csv").write_text("\n".join(mixed) + "\n")
    with gzip.open(files_env / "ddd.csv.gz", "wt") as handle:
        handle.write("\n".join([HEADER, *_rows("DDD", [40, 41])]) + "\n")
    (files_env / "notes.txt").write_text("not a csv, ignored")

    prices = FileSource(files_env.parent).market_prices(
        pd.Timestamp("2024-03-01").date(), pd.Timestamp("2024-03-03").date()
    )
    assert sorted(prices["ticker"].unique()) == ["AAA", "BBB", "CCC", "DDD"]
    assert len(prices) == 2 + 3 + 2  # AAA 1st-2nd, BBB x2 + CCC, DDD x2 (the 3rd is excluded)
    assert list(prices.columns) == [*MARKET_COLUMNS, "file", "line"]
    assert prices["adj_close"].isna().all()  # none of these files has an adjusted close
    bbb = prices[prices["ticker"] == "BBB"].iloc[1]
    assert (bbb["close"], bbb["volume"]) == (21.0, 510.0)


@pytest.mark.parametrize(
    ("content", "line", "column", "phrase"),
    [
        (
            [HEADER, "2024-03-01,AAA,1,2,0.5,1.5,100", "2024-03-02,AAA,1,2,0.5,oops,100"],
            3,
            "close",
            "expected a number, got 'oops'",
        ),
        (
            [HEADER, "2024-03-01,AAA,1,2,0.5,1.5,100", "2024-03-02,AAA,1,2"],
            3,
            "low",
            "the row has 4 fields, the header 7",
        ),
        ([HEADER, "2024-03-01,AAA,1,2,0.5,1.5,100,extra,more"], 2, None, "the row has 9 fields"),
        ([HEADER, "03/01/2024,AAA,1,2,0.5,1.5,100"], 2, "date", "YYYY-MM-DD"),
        (["date,ticker,open,high,low,volume", "2024-03-01,AAA,1,2,0.5,100"], 1, "close", "header"),
        ([HEADER, "2024-03-01,,1,2,0.5,1.5,100"], 2, "ticker", "expected a ticker"),
    ],
)
def test_malformed_csv_names_file_line_and_column(
    tmp_path: Path, content: list[str], line: int, column: str | None, phrase: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(content) + "\n")
    with pytest.raises(InputError) as raised:
        read_market_csv(path)
    error = raised.value
    assert (error.path, error.line, error.column) == (str(path), line, column)
    assert phrase in str(error)
    assert str(error).startswith(f"{path}:{line}: ")


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    whole = gzip.compress(("\n".join([HEADER, *_rows("AAA", [1.0] * 20)]) + "\n").encode())
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut\.csv\.gz: cannot be read"):
        read_market_csv(path)


def test_a_bad_file_fails_the_run_and_writes_nothing(files_env, run_partition, isolated_dirs):
    (files_env / "good.csv").write_text("\n".join([HEADER, *_rows("AAA", [10, 11, 12, 13, 14])]))
    (files_env / "bad.csv").write_text(
        HEADER + "\n2024-03-04,BBB,1,2,0.5,1.5,100\n2024-03-05,BBB,1,"
    )
    result = run_partition("market_job", DAY, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.event_specific_data.error
    assert "bad.csv:3: column 'low': no value" in error.message
    assert failure.event_specific_data.user_failure_data.metadata["line"].value == 3
    assert not (isolated_dirs / "reports" / "market").exists()


def test_missing_prices_stop_at_the_blocking_check(files_env, run_partition, isolated_dirs):
    rows = _rows("AAA", [10, 11, 12, 13, 14])
    rows[4] = "2024-03-05,AAA,13,14,12,,1004"  # empty close
    (files_env / "a.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    result = run_partition("market_job", DAY, raise_on_error=False)
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["prices_present_and_positive"].passed is False
    assert checks["high_not_below_low"].passed is True
    examples = json.loads(checks["prices_present_and_positive"].metadata["examples"].value)
    assert examples[0]["ticker"] == "AAA" and examples[0]["date"].startswith("2024-03-05")
    assert not result.success
    assert not (isolated_dirs / "reports" / "market").exists()


def test_duplicates_and_inverted_ranges_are_caught(files_env, run_partition):
    rows = _rows("AAA", [10, 11, 12, 13, 14])
    rows.append(rows[-1])  # the same (date, ticker) twice
    rows.append("2024-03-05,BBB,5,4,6,5,100")  # high < low
    (files_env / "a.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    result = run_partition("market_job", DAY, raise_on_error=False)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["one_row_per_date_and_ticker"] is False
    assert checks["high_not_below_low"] is False


def test_an_empty_day_is_a_report_not_a_failure(files_env, run_partition, isolated_dirs):
    (files_env / "a.csv").write_text("\n".join([HEADER, *_rows("AAA", [10, 11, 12])]) + "\n")
    result = run_partition("market_job", "2024-03-09")  # a Saturday with no rows
    assert result.success
    record = json.loads((isolated_dirs / "reports" / "market" / "2024-03-09.json").read_text())
    assert record["metrics"]["trading_day"] is False
    assert record["findings"] == []
    assert "No trading" in record["summary"]
