"""Backfill every analysis through the real daemons (`dagster dev`): one run per partition
against the whole range in one run, with the offline analyst and against an
OpenAI-compatible server (llmock) that answers each request after a fixed latency.

For each analyst configuration one `dagster dev` stack runs per data source (anomalies
read a generated month of log files, the others the demo source), with SQLite storage,
reports and state in a temp dir, and every pool's limit set to 1 first (as `make run`
does). Each repeat starts from empty reports and state, and for each analysis:

- per partition: `--sample` runs of the analysis' job, one partition each, launched
  together; the pool (limit 1) queues them, so each pays run start-up and queue polling:
  the orchestration baseline (its partitions are disjoint from the range's);
- range: one asset backfill of the range; BackfillPolicy.single_run() makes it one run.
  Its wall time runs from submission to the run's end: backfill-daemon pick-up (the
  daemon acts about every 30 s), queue, execution;
- again: the same backfill once more; with unchanged inputs every answer comes from the
  response cache, so the LLM server must receive no request.
The sample and the second run happen in the first repeat only (`--every-repeat`: in all).

Printed per analysis and configuration (medians over `--repeats`): seconds per partition
both ways and their ratio, the range's wall time and its split, the second run's wall
time, LLM requests received by the server (counted at llmock), reports that fell back
to the offline template (`degraded`: a figure with any is meaningless), and the peak RSS
(VmHWM) of the run worker and of its largest step process. Also the time to import the
code location (median of 5). Every process imports a snapshot of the tree taken at the
start, so edits made meanwhile cannot reach a run half-way.

Targets on the 2-core machine: market 365 days < 60 s offline and < 90 s at 1 s LLM
latency; anomalies 720 hours over at least 5 million log lines < 180 s; the second run
makes no LLM request; importing the definitions < 2 s.

    # everything (over an hour on a loaded 2-core machine; writes about 1.5 GB of logs
    # under --data-dir once, about 40 s)
    .venv/bin/python benchmarks/backfill.py --repeats 2
    # the cost of investigation with tools: requests, tokens and tool calls per
    # partition with and without tools, in process against llmock (a minute or two)
    .venv/bin/python benchmarks/backfill.py --investigation 3
    # a quick look: small ranges, anomalies on demo data, one repeat
    .venv/bin/python benchmarks/backfill.py --quick
    .venv/bin/python benchmarks/backfill.py --analyses market --analysts offline --quick
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent_reports_tests import dagster_stack as dagster_stack_module  # noqa: E402
from agent_reports_tests.conftest import free_port, start_process, stop_process, wait_for_port  # noqa: E402
from agent_reports_tests.dagster_stack import DagsterStack, Run, dagster_stack  # noqa: E402

BIN = Path(sys.executable).parent
LATENCY_MS = 1000
FAKE_KEY = "sk-bench-not-a-real-key"
# One reply that validates against every analysis' schema (pydantic ignores the fields a
# schema does not have) and passes every analysis' check: no finding names a subject, so
# none can be "invented". llmock's own structured-output default would fill `subjects`
# with "mock-subjects", which the checks reject, and every report would be degraded.
MOCK_REPLY = {
    "summary": "Mock analyst: the figures are in the tables below.",
    "findings": [{"title": "Mock finding", "detail": "Written by llmock.", "subjects": []}],
    "actions": [],
    "probable_cause": "Mock cause.",
    "look_first": "Mock first step.",
}


@dataclass(frozen=True)
class Plan:
    """What one analysis backfills: `count` partitions from `start`, and a sample of
    single-partition runs from `sample_start` (disjoint from the range)."""

    start: datetime
    count: int
    quick: int
    sample_start: datetime
    files: bool = False  # reads the generated log files (AGENT_REPORTS_SOURCE=files)


def _at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


PLANS = {
    "anomalies": Plan(_at(2024, 6, 1), 720, 48, _at(2024, 7, 1, 12), files=True),
    "market": Plan(_at(2024, 1, 1, 12), 365, 30, _at(2025, 6, 2, 12)),
    "churn": Plan(_at(2024, 1, 1, 12), 52, 8, _at(2025, 6, 2, 12)),
    "compliance": Plan(_at(2024, 1, 1, 12), 12, 2, _at(2025, 6, 1, 12)),
    "briefing": Plan(_at(2024, 1, 1, 12), 260, 20, _at(2025, 6, 2, 12)),
}
# Anomalies first: the briefing reads the reports the others wrote.
ORDER = list(PLANS)


# ----------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Analysis:
    name: str
    job: str
    assets: list[str]
    range_keys: list[str]
    sample_keys: list[str]
    files: bool


def load_analyses(names: list[str], quick: bool, sample: int) -> list[Analysis]:
    """Each analysis' job, asset keys and partition keys, read from the code location."""
    warnings.filterwarnings("ignore")  # Dagster's beta/preview notices
    from agent_reports.definitions import defs

    specs = defs.resolve_all_asset_specs()
    analyses = []
    for name in names:
        assets = [s.key.to_user_string() for s in specs if s.group_name == name]
        if not assets:
            print(f"{name}: no assets in the code location, skipped", flush=True)
            continue
        job = defs.resolve_job_def(f"{name}_job")
        partitions = job.partitions_def
        plan = PLANS[name]
        count = plan.quick if quick else plan.count
        keys = partitions.get_partition_keys(current_time=datetime.now(UTC))
        first = partitions.get_partition_key_for_timestamp(plan.start.timestamp())
        sample_first = partitions.get_partition_key_for_timestamp(plan.sample_start.timestamp())
        range_keys = keys[keys.index(first) :][:count]
        sample_keys = keys[keys.index(sample_first) :][:sample]
        if set(range_keys) & set(sample_keys) or len(range_keys) < count:
            raise SystemExit(f"{name}: bad plan {plan}")
        analyses.append(
            Analysis(name, job.name, assets, range_keys, sample_keys, plan.files and not quick)
        )
    return analyses


# ------------------------------------------------------------------------------- log files


def write_log_files(folder: Path, start: datetime, hours: int, scale: int) -> tuple[int, int]:
    """`hours` of demo traffic from `start`, `scale` times the demo's volume, one file per
    UTC day under `folder/logs/`. Returns (lines in total, lines in the month benchmarked).
    Written once: a folder with a complete marker is reused."""
    from agent_reports.anomalies.analysis import LOOKBACK_HOURS
    from agent_reports.core import access_logs_demo as demo

    marker = folder / "complete.json"
    if marker.exists():
        stats = json.loads(marker.read_text())
        return stats["lines"], stats["month_lines"]
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "logs").mkdir(parents=True)
    # The demo's daily curve peaks at PEAK_REQUESTS per hour; raised here, in this
    # process only, to reach the volume the target is about.
    demo.PEAK_REQUESTS = 1200 * scale
    first = int(start.timestamp()) // 3600
    month = range(first + LOOKBACK_HOURS, first + LOOKBACK_HOURS + 720)
    lines = month_lines = 0
    began = time.perf_counter()
    for hour in range(first, first + hours):
        day = datetime.fromtimestamp(hour * 3600, UTC).date()
        block = demo.hour_lines(7, hour)
        count = block.count(b"\n")
        lines += count
        month_lines += count if hour in month else 0
        with open(folder / "logs" / f"access-{day}.log", "ab") as file:
            file.write(block)
    marker.write_text(json.dumps({"lines": lines, "month_lines": month_lines}))
    print(f"wrote {lines:,} log lines in {time.perf_counter() - began:.0f} s to {folder}")
    return lines, month_lines


# ---------------------------------------------------------------------------- run workers


class WorkerWatch:
    """Samples the peak RSS (VmHWM, from /proc) of the run workers `dagster dev` starts,
    and of their step processes, while they live.

    The code server starts a run worker as a `multiprocessing` spawn child of its
    `dagster api grpc` process; with the default multiprocess executor the worker starts
    one process per step (and per asset check). Runs of one stack never overlap
    here, so a run's processes are those created between its start and its end."""

    def __init__(self, root_pid: int, interval: float = 0.2):
        self.root_pid, self.interval = root_pid, interval
        self.known: dict[int, dict] = {}  # pid -> {ppid, created, command, kind}
        self.peak_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _kind(self, command: str, ppid: int) -> str:
        parent = self.known.get(ppid, {})
        if "resource_tracker" in command or "watch_orphans" in command:
            return ""
        if parent.get("kind") == "grpc" and "multiprocessing" in command:
            return "worker"
        if parent.get("kind") in ("worker", "step"):
            return "step"  # a step process (spawned, or forked by a forkserver)
        if "api grpc" in command:
            return "grpc"
        return ""

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                children = psutil.Process(self.root_pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                if child.pid not in self.known:
                    try:
                        command, ppid = " ".join(child.cmdline()), child.ppid()
                        created = child.create_time()
                    except psutil.Error:
                        continue
                    kind = self._kind(command, ppid)
                    self.known[child.pid] = {"ppid": ppid, "created": created, "kind": kind}
                if self.known[child.pid]["kind"] in ("worker", "step"):
                    try:
                        status = Path(f"/proc/{child.pid}/status").read_text()
                    except OSError:
                        continue
                    found = re.search(r"VmHWM:\s+(\d+)", status)
                    if found:
                        kb = int(found.group(1))
                        self.peak_kb[child.pid] = max(self.peak_kb.get(child.pid, 0), kb)

    def peaks_mb(self, runs: list[Run]) -> tuple[float, float]:
        """(the largest run worker, the largest step process) of processes started
        during `runs`, in MB."""
        first = min(r.start_time for r in runs) - 30
        last = max(r.end_time for r in runs)
        worker = step = 0
        for pid, info in list(self.known.items()):
            if first <= info["created"] <= last:
                if info["kind"] == "worker":
                    worker = max(worker, self.peak_kb.get(pid, 0))
                elif info["kind"] == "step":
                    step = max(step, self.peak_kb.get(pid, 0))
        return worker / 1024, step / 1024


# ----------------------------------------------------------------------------- LLM server


class LLMock:
    def __init__(self, port: int):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def _call(self, path: str, method: str = "GET", body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def script(self) -> None:
        behavior = {"type": "reply", "text": json.dumps(MOCK_REPLY), "times": None}
        self._call("/_llmock/scenario", "POST", {"behaviors": [behavior]})

    def script_investigation(self, call: tuple[str, dict], calls: int) -> None:
        """`calls` tool calls (one a request) offered tools, then the answer, from now on."""
        self._call("/_llmock/reset", "POST", {})
        name, arguments = call
        behaviors = [
            {"type": "reply", "tool_calls": [{"name": name, "arguments": arguments}]}
        ] * calls
        behaviors.append({"type": "reply", "text": json.dumps(MOCK_REPLY), "times": None})
        self._call("/_llmock/scenario", "POST", {"behaviors": behaviors})

    def forget_requests(self) -> None:
        self._call("/_llmock/requests", "DELETE")

    def chat_requests(self) -> int:
        requests = self._call("/_llmock/requests")["requests"]
        return sum(r["path"].endswith("/chat/completions") for r in requests)


@contextmanager
def llmock(folder: Path, latency_ms: int) -> Iterator[LLMock]:
    port = free_port()
    args = [str(BIN / "llmock"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--latency-ms", str(latency_ms), "--log-level", "warning"]
    process = start_process(args, folder / "llmock.log")
    try:
        wait_for_port(port, process)
        server = LLMock(port)
        server.script()
        yield server
    finally:
        stop_process(process)


# ------------------------------------------------------------------- cost of investigation

# The first tool of each analysis and arguments it takes, for a scripted investigation.
TOOL_CALLS = {
    "market": ("volume_by_day", {"days": 5}),
    "anomalies": ("breakdown_hour", {"by": "path"}),
    "churn": ("churn_by_segment", {"column": "contract"}),
    "compliance": ("problem_windows", {"analysis": "market"}),
    "briefing": ("input_findings", {"source": "market"}),
}


def investigation_cost(analyses: list[Analysis], partitions: int, steps: int, calls: int) -> None:
    """Requests, tokens and tool calls per partition, with tools off and with up to
    `steps` tool calls, the model (llmock) making `calls` of them before it answers. In
    process (no daemon): what is measured is the LLM traffic, not the orchestration."""
    from dagster import DagsterInstance

    from agent_reports.definitions import defs

    print(f"\ncost of investigation: {partitions} partition(s) per analysis, in process, llmock")
    print(
        f"{'analysis':<11} {'tools':<22} {'requests/p':>10} {'tokens/p':>9} "
        f"{'calls/p':>8} {'s/p':>6}"
    )
    with tempfile.TemporaryDirectory(prefix="investigation-bench-") as folder:
        root = Path(folder)
        with llmock(root, 0) as server:
            for index, setting in enumerate((0, steps)):
                work = root / f"config{index}"
                os.environ.update(stack_env(work, "llm", server, None))
                os.environ["AGENT_REPORTS_LLM_TOOL_STEPS"] = str(setting)
                instance = DagsterInstance.ephemeral()
                for analysis in analyses:
                    rows = []
                    for key in analysis.range_keys[:partitions]:
                        server.script_investigation(
                            TOOL_CALLS[analysis.name], calls if setting else 0
                        )
                        began = time.perf_counter()
                        defs.resolve_job_def(analysis.job).execute_in_process(
                            partition_key=key, instance=instance, raise_on_error=False
                        )
                        rows.append(
                            _cost_row(work, analysis.name, key, time.perf_counter() - began)
                        )
                    label = "off" if not setting else f"{calls} calls, limit {setting}"
                    print(_cost_line(analysis.name, label, rows), flush=True)


def _cost_row(work: Path, analysis: str, key: str, seconds: float) -> tuple:
    path = work / "reports" / analysis / f"{key}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    llm = record.get("llm") or {}
    tokens = (llm.get("prompt_tokens") or 0) + (llm.get("completion_tokens") or 0)
    degraded = record.get("degraded", True)
    return (
        llm.get("requests") or 0,
        tokens,
        len(record.get("investigation") or []),
        seconds,
        degraded,
    )


def _cost_line(analysis: str, label: str, rows: list[tuple]) -> str:
    def med(i: int) -> float:
        return statistics.median(row[i] for row in rows)

    degraded = sum(row[4] for row in rows)
    return (
        f"{analysis:<11} {label:<22} {med(0):>10.1f} {med(1):>9.0f} {med(2):>8.1f} {med(3):>6.1f}"
        + (f"  ({degraded} degraded)" if degraded else "")
    )


# ------------------------------------------------------------------------------ measuring


@dataclass
class Figures:
    """One repeat of one analysis in one configuration."""

    sample_wall: float | None = None
    sample_exec: float | None = None
    sample_rss: tuple[float, float] | None = None
    sample_llm: int | None = None
    range_wall: float = 0.0
    pickup: float = 0.0
    queue: float = 0.0
    execution: float = 0.0
    range_rss: tuple[float, float] = (0.0, 0.0)
    range_llm: int | None = None
    again_wall: float | None = None
    again_execution: float | None = None
    again_llm: int | None = None
    degraded: int = 0
    by: dict[str, int] = field(default_factory=dict)


class Bench:
    def __init__(self, stack: DagsterStack, watch: WorkerWatch, server: LLMock | None):
        self.stack, self.watch, self.server = stack, watch, server

    def _check(self, analysis: Analysis, runs: list[Run], keys: list[str]) -> None:
        failed = [r.run_id for r in runs if r.status != "SUCCESS"]
        report = next(a for a in analysis.assets if a.endswith("_report"))
        done = set(self.stack.materializations(report))
        if failed or not done.issuperset(keys):
            log = self.stack.home / "dagster_dev.log"
            print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise SystemExit(
                f"{analysis.name}: failed runs {failed}; {len(set(keys) - done)} of "
                f"{len(keys)} partitions not materialised"
            )

    def _llm_before(self) -> None:
        if self.server:
            self.server.forget_requests()

    def _llm_after(self) -> int | None:
        return self.server.chat_requests() if self.server else None

    def backfill(self, analysis: Analysis) -> dict[str, float]:
        submitted = time.time()
        backfill = self.stack.launch_backfill(analysis.assets, analysis.range_keys)
        self.stack.wait_until(lambda: self.stack.backfill_runs(backfill), timeout=600)
        ids = [r.run_id for r in self.stack.backfill_runs(backfill)]
        runs = self.stack.wait_for_runs(ids, timeout=3600)
        self._check(analysis, runs, analysis.range_keys)
        if len(runs) != 1:
            raise SystemExit(f"{analysis.name}: the backfill made {len(runs)} runs, not one")
        (run,) = runs
        time.sleep(2 * self.watch.interval)
        return {
            "wall": run.end_time - submitted,
            "pickup": run.creation_time - submitted,
            "queue": run.start_time - run.creation_time,
            "execution": run.end_time - run.start_time,
            "rss": self.watch.peaks_mb([run]),
        }

    def measure(self, analysis: Analysis, reports: Path, first: bool, every: bool) -> Figures:
        """The range; in the first repeat (or every one, `every`), the sample and the
        second run of the range too."""
        figures = Figures()
        if first or every:
            self.sample(analysis, figures)
        self._llm_before()
        whole = self.backfill(analysis)
        figures.range_llm = self._llm_after()
        figures.range_wall, figures.pickup = whole["wall"], whole["pickup"]
        figures.queue, figures.execution = whole["queue"], whole["execution"]
        figures.range_rss = whole["rss"]
        for key in analysis.range_keys:
            record = json.loads((reports / analysis.name / f"{key}.json").read_text())
            figures.degraded += bool(record["degraded"])
            by = record["generated_by"]
            figures.by[by] = figures.by.get(by, 0) + 1
        if first or every:
            self._llm_before()
            again = self.backfill(analysis)
            figures.again_llm = self._llm_after()
            figures.again_wall, figures.again_execution = again["wall"], again["execution"]
        return figures

    def sample(self, analysis: Analysis, figures: Figures) -> None:
        """One run per partition, all launched at once: the queue runs them one by one."""
        self._llm_before()
        submitted = time.time()
        ids = [self.stack.launch_run(analysis.job, key) for key in analysis.sample_keys]
        runs = self.stack.wait_for_runs(ids, timeout=3600)
        self._check(analysis, runs, analysis.sample_keys)
        time.sleep(2 * self.watch.interval)
        figures.sample_wall = max(r.end_time for r in runs) - submitted
        figures.sample_exec = statistics.median(r.end_time - r.start_time for r in runs)
        figures.sample_rss = self.watch.peaks_mb(runs)
        figures.sample_llm = self._llm_after()


def stack_env(root: Path, analyst: str, server: LLMock | None, data: Path | None) -> dict:
    env = {
        "AGENT_REPORTS_REPORTS_DIR": str(root / "reports"),
        "AGENT_REPORTS_STATE_DIR": str(root / "state"),
        "AGENT_REPORTS_SOURCE": "files" if data else "demo",
        "AGENT_REPORTS_DATA_DIR": str(data or root / "data"),
        "AGENT_REPORTS_ANALYST": "offline" if analyst == "offline" else "openai",
    }
    if server:
        env["OPENAI_API_KEY"] = FAKE_KEY
        env["OPENAI_BASE_URL"] = server.base_url
    else:
        env["OPENAI_API_KEY"] = ""
        env["OPENAI_BASE_URL"] = ""
    return env


MODULE = "agent_reports.definitions"
POOLS = ("market", "anomalies", "churn", "compliance", "briefing")


def run_configuration(
    analyst: str,
    analyses: list[Analysis],
    data: Path | None,
    repeats: int,
    instance: str,
    module: str,
    every: bool,
) -> dict[str, list[Figures]]:
    """Every repeat of every analysis with one analyst; one stack per data source."""
    results: dict[str, list[Figures]] = {a.name: [] for a in analyses}
    groups: list[list[Analysis]] = []
    for analysis in analyses:
        if groups and groups[-1][0].files == analysis.files:
            groups[-1].append(analysis)
        else:
            groups.append([analysis])
    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as folder, ExitStack() as stack:
        root = Path(folder)
        server = stack.enter_context(llmock(root, LATENCY_MS)) if analyst == "llm" else None
        benches = []
        for index, group in enumerate(groups):
            env = stack_env(root, analyst, server, data if group[0].files else None)
            home = root / f"home{index}"
            began = time.perf_counter()
            dagster = stack.enter_context(dagster_stack(home, instance, module, env))
            for pool in POOLS:
                dagster.set_pool_limit(pool, 1)
            watch = stack.enter_context(WorkerWatch(dagster.process.pid))
            print(f"[{analyst}] dagster dev up in {time.perf_counter() - began:.0f} s", flush=True)
            benches.append((group, Bench(dagster, watch, server)))
        for repeat in range(repeats):
            for name in ("reports", "state"):
                shutil.rmtree(root / name, ignore_errors=True)
            for group, bench in benches:
                for analysis in group:
                    figures = bench.measure(analysis, root / "reports", repeat == 0, every)
                    results[analysis.name].append(figures)
                    print_repeat(analyst, repeat, analysis, figures)
    return results


def _llm(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_repeat(analyst: str, repeat: int, analysis: Analysis, f: Figures) -> None:
    n, s = len(analysis.range_keys), len(analysis.sample_keys)
    parts = [f"[{analyst}] repeat {repeat + 1} {analysis.name}:"]
    if f.sample_rss is not None:
        parts.append(
            f"{s} runs {f.sample_wall:.1f} s (median execution {f.sample_exec:.1f} s, "
            f"RSS worker/step {f.sample_rss[0]:.0f}/{f.sample_rss[1]:.0f} MB, "
            f"LLM requests {_llm(f.sample_llm)});"
        )
    parts.append(
        f"range of {n} {f.range_wall:.1f} s (pick-up {f.pickup:.1f}, queue {f.queue:.1f}, "
        f"execution {f.execution:.1f}; RSS worker/step {f.range_rss[0]:.0f}/"
        f"{f.range_rss[1]:.0f} MB; LLM requests {_llm(f.range_llm)}; "
        f"degraded {f.degraded}; by {f.by})"
    )
    if f.again_wall is not None:
        parts.append(
            f"; again {f.again_wall:.1f} s (execution {f.again_execution:.1f}, "
            f"LLM requests {_llm(f.again_llm)})"
        )
    print(" ".join(parts), flush=True)


TARGETS = {  # (analysis, analyst): seconds for the full range
    ("market", "offline"): 60,
    ("market", "llm"): 90,
    ("anomalies", "offline"): 180,
    ("anomalies", "llm"): 180,
}


def print_summary(
    analyses: list[Analysis], results: dict[str, dict[str, list[Figures]]], full: bool
) -> None:
    print("\nmedians over the repeats (wall times from submission; s/p = seconds per partition)")
    header = (
        f"{'analysis':10} {'analyst':8} {'parts':>5} {'per-run s/p':>11} {'range s/p':>9} "
        f"{'ratio':>6} {'range s':>8} {'pickup':>6} {'queue':>5} {'exec':>6} {'again s':>7} "
        f"{'LLM 1st':>7} {'LLM 2nd':>7} {'degr':>4} {'RSS MB':>6} {'step':>6} target"
    )
    print(header)
    for analyst, by_analysis in results.items():
        for analysis in analyses:
            rows = by_analysis[analysis.name]

            def med(name: str, rows: list[Figures] = rows) -> float:
                values = [getattr(r, name) for r in rows if getattr(r, name) is not None]
                return statistics.median(values) if values else float("nan")

            n, s = len(analysis.range_keys), len(analysis.sample_keys)
            per_run = med("sample_wall") / s
            per_range = med("range_wall") / n
            target = TARGETS.get((analysis.name, analyst)) if full else None
            verdict = ""
            if target:
                verdict = f"< {target} s: {'met' if med('range_wall') < target else 'MISSED'}"
            llm = [r.range_llm for r in rows]
            again = [r.again_llm for r in rows if r.sample_wall is not None]
            print(
                f"{analysis.name:10} {analyst:8} {n:5d} {per_run:11.3f} {per_range:9.3f} "
                f"{per_run / per_range:6.1f} {med('range_wall'):8.1f} {med('pickup'):6.1f} "
                f"{med('queue'):5.1f} {med('execution'):6.1f} {med('again_wall'):7.1f} "
                f"{_llm(max(llm) if llm[0] is not None else None):>7} "
                f"{_llm(max(again) if again and again[0] is not None else None):>7} "
                f"{max(r.degraded for r in rows):4d} "
                f"{max(r.range_rss[0] for r in rows):6.0f} "
                f"{max(r.range_rss[1] for r in rows):6.0f} "
                f"{verdict}"
            )
    print(
        "(per-run s/p: the sample's wall time / its runs; LLM 1st/2nd and degr: the most over "
        "the repeats; RSS MB / step: peak of the range's run worker / of its largest step process, "
        "the most over the repeats)"
    )


def snapshot(folder: Path, attempts: int = 10) -> Path:
    """A copy of the code location (agent_reports/, the instance yaml) that every process
    of the benchmark imports, so edits made to the working tree while it runs cannot reach
    a run half-way. Retried until the copy imports."""
    for _ in range(attempts):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copytree(
            REPO / "agent_reports",
            folder / "agent_reports",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for name in ("dagster.yaml", "workspace.yaml"):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, folder / name)
        shutil.copytree(REPO / "deploy", folder / "deploy", dirs_exist_ok=True)
        check = subprocess.run(
            [sys.executable, "-c", "import agent_reports.definitions"],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(folder)},
            stderr=subprocess.PIPE,
            text=True,
        )
        if check.returncode == 0:
            return folder
        print(f"the working tree does not import yet, retrying: {check.stderr[-300:]}")
        time.sleep(30)
    raise SystemExit("agent_reports.definitions does not import")


def import_time(times: int = 5) -> float:
    took = []
    for _ in range(times):
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import agent_reports.definitions"],
            check=True,
            cwd=dagster_stack_module.REPO,
            env={**os.environ, "PYTHONPATH": str(dagster_stack_module.REPO)},
            stderr=subprocess.DEVNULL,
        )
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyses", nargs="+", choices=ORDER, default=ORDER)
    parser.add_argument("--analysts", nargs="+", choices=["offline", "llm"])
    parser.add_argument("--quick", action="store_true", help="small ranges, demo logs")
    parser.add_argument("--repeats", type=int, help="default 1 with --quick, else 2")
    parser.add_argument("--sample", type=int, help="runs of one partition (default 3)")
    parser.add_argument("--log-scale", type=int, default=15, help="× the demo's log volume")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "agent-reports-bench-logs",
        help="where the generated log files are kept between invocations",
    )
    parser.add_argument(
        "--every-repeat",
        action="store_true",
        help="run the sample and the second range run in every repeat, not only the first",
    )
    parser.add_argument("--instance", default="dagster.yaml", help="instance yaml (repo path)")
    parser.add_argument(
        "--investigation",
        type=int,
        metavar="N",
        help="only the cost of investigation with tools, over N partitions per analysis",
    )
    parser.add_argument("--tool-steps", type=int, default=4, help="with --investigation")
    parser.add_argument("--tool-calls", type=int, default=2, help="with --investigation")
    args = parser.parse_args()
    if args.investigation:
        order = [name for name in ORDER if name in args.analyses]
        analyses = load_analyses(order, True, 1)
        investigation_cost(analyses, args.investigation, args.tool_steps, args.tool_calls)
        return
    # SIGTERM unwinds like Ctrl-C, so the dagster dev stacks and llmock are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.analysts = args.analysts or ["offline", "llm"]
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.sample = args.sample or (2 if args.quick else 3)

    code = snapshot(Path(tempfile.gettempdir()) / f"agent-reports-bench-code-{os.getpid()}")
    # dagster dev gets the snapshot on its PYTHONPATH and its instance yaml from there.
    dagster_stack_module.REPO = code
    sys.path.insert(0, str(code))
    print(f"code location: {MODULE}, from a snapshot of the tree in {code}")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"import agent_reports.definitions: {import_time():.2f} s (median of 5; target < 2 s)")
    order = [name for name in ORDER if name in args.analyses]
    analyses = load_analyses(order, args.quick, args.sample)
    data = None
    if any(a.files for a in analyses):
        from agent_reports.anomalies.analysis import LOOKBACK_HOURS

        plan = PLANS["anomalies"]
        start = plan.start - timedelta(hours=LOOKBACK_HOURS)
        hours = LOOKBACK_HOURS + 720 + 36  # the baseline, the month, the sample's day
        data = args.data_dir / f"{start:%Y%m%d%H}-{hours}h-x{args.log_scale}"
        lines, month_lines = write_log_files(data, start, hours, args.log_scale)
        print(
            f"anomaly logs: {month_lines:,} lines in the 720 hours, {lines:,} in the files "
            f"(with the {LOOKBACK_HOURS} h baseline before and the sample's day after)"
        )
    results = {}
    try:
        for analyst in args.analysts:
            results[analyst] = run_configuration(
                analyst,
                analyses,
                data,
                args.repeats,
                args.instance,
                MODULE,
                args.every_repeat,
            )
    finally:
        shutil.rmtree(code, ignore_errors=True)
    print_summary(analyses, results, not args.quick)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores; shared machine)")


if __name__ == "__main__":
    main()
