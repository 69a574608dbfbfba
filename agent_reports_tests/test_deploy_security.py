"""Security basics: the webserver `make run` starts listens on loopback only, and report HTML
and Markdown carry data (a ticker holding a <script>) as inert text."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import psutil
import pytest

from agent_reports_tests.conftest import free_port, start_process, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "<script>alert(1)</script>"


def make_run_command(dagster_home: Path) -> list[str]:
    """The command line `make run` executes (`tools/dev.py run`, which starts `dg dev`),
    read with `make -n`, not guessed."""
    dry_run = subprocess.run(
        ["make", "-n", "run", f"DAGSTER_HOME={dagster_home}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line for line in dry_run.stdout.splitlines() if "tools/dev.py run" in line]
    assert len(lines) == 1, dry_run.stdout
    return shlex.split(lines[0])


def listening_addresses(root_pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by the process tree."""
    processes = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    found = set()
    for process in processes:
        try:
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def test_make_run_webserver_listens_on_loopback_only(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    args = make_run_command(home)
    assert "--host" in args and args[args.index("--host") + 1] == "127.0.0.1"
    # The same command on a free port (3000 may be in use by someone's `make run`).
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    process = start_process(args, tmp_path / "make_run.log", cwd=ROOT, env=env)
    try:
        wait_for_port(port, process, timeout=120)
        addresses = listening_addresses(process.pid)
        webserver = {ip for ip, p in addresses if p == port}
        assert webserver == {"127.0.0.1"}, addresses
        # Nothing in the tree (webserver, code server, daemon) listens beyond loopback.
        assert all(ip.startswith("127.") or ip == "::1" for ip, _ in addresses), addresses
    finally:
        stop_process(process, timeout=30)


@pytest.fixture
def script_ticker(isolated_dirs: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A drop folder whose only ticker is a <script> element; returns the day to run."""
    market = isolated_dirs / "data" / "market"
    market.mkdir(parents=True)
    rows = [
        f"2024-03-{d:02d},{SCRIPT},{10 + d},{11 + d},{9 + d},{10 + d},{1000 + d}" for d in (4, 5)
    ]
    (market / "prices.csv").write_text("date,ticker,open,high,low,close,volume\n" + "\n".join(rows))
    monkeypatch.setenv("AGENT_REPORTS_SOURCE", "files")
    monkeypatch.setenv("AGENT_REPORTS_DATA_DIR", str(isolated_dirs / "data"))
    return "2024-03-05"


def test_report_escapes_a_script_in_a_ticker(
    script_ticker: str, isolated_dirs: Path, run_partition
) -> None:
    result = run_partition("market_job", script_ticker)
    assert result.success
    folder = isolated_dirs / "reports" / "market"
    html = (folder / f"{script_ticker}.html").read_text()
    markdown = (folder / f"{script_ticker}.md").read_text()

    # The ticker reached the report (as data), and never as markup.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert "\\<script\\>alert(1)\\</script\\>" in markdown
    assert SCRIPT not in markdown
