"""A soak: the real stack (deploy/stack.sh: code server, webserver, daemon) on PostgreSQL,
through a compressed clock of scheduled windows, backfills and manual runs, while faults
are injected at seeded random times. It prints what the four promises come to.

The daemon's scheduler ticks on the wall clock, so the soak plays its part on a compressed
clock: for every window of every analysis whose schedule tick falls in the simulated span
(the tick is the window's end plus the analysis' delay, as each declaration's `lag` states
and test_ops_catchup checks against each schedule), it submits at the tick's compressed
time the run that schedule requests (same job and partition), over GraphQL as the UI
does. Everything after that is real: the run queue and pools, the daemon (run retries and
run monitoring), run workers with the run lock, an OpenAI-compatible server (llmock)
answering with schema-shaped JSON, an SMTP server, the delivery ledger on PostgreSQL.

Faults, at seeded random times within the launch phase: daemon SIGKILL (then
`deploy/stack.sh start`), PostgreSQL restart (a throwaway cluster, never the machine's),
SIGKILL of a running run's worker, LLM 429 / 500 / a hang longer than the client's
timeout, SMTP 451 and a dropped connection after the message was accepted (the delivery
ledger's documented at-least-once case: the sender cannot know it went through).

After the launch phase the queue drains; windows still without a successful run are
re-executed once (what an operator does after the failed-run alert), and the figures are
printed: windows due, windows with exactly one whole report, overlapping step executions
within an analysis (must be 0), runs that failed and their windows that recovered,
e-mails and alerts per (window, recipient) (must be 1; copies after a dropped reply are
counted apart), degraded reports and their reasons, and the seed.

    .venv/bin/python benchmarks/soak.py                          # a week: ~190 windows
    .venv/bin/python benchmarks/soak.py --hours 10 --seed 3      # a few minutes
    .venv/bin/python benchmarks/soak.py --seed 11 --json out.json
"""

from __future__ import annotations

import argparse
import json
import mailbox
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent_reports_tests.conftest import (  # noqa: E402
    BIN,
    LLMServer,
    free_port,
    start_process,
    stop_process,
    wait_for_port,
)
from agent_reports_tests.dagster_stack import Run  # noqa: E402
from agent_reports_tests.stack_harness import (  # noqa: E402
    DeployedStack,
    ThrowawayPostgres,
    deployed_stack,
    running_cluster,
)

FAULTS = ("daemon", "postgres", "worker", "llm_429", "llm_500", "llm_hang", "smtp_451", "smtp_drop")
PENDING = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}
# One reply that fits every analysis' schema (extra fields are ignored) and every check:
# no findings, so no subject the data does not name. llmock would otherwise answer with
# schema-shaped filler that the analyses rightly reject (and degrade).
REPLY = {
    "summary": "Soak: nothing beyond the figures stood out.",
    "findings": [],
    "actions": [],
    "probable_cause": "Unknown from the figures alone.",
    "look_first": "The detector's evidence tables.",
}
FAILURE_EVENTS = """query($id: ID!) { logsForRun(runId: $id, limit: 5000) { __typename
  ... on EventConnection { events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message } }
    ... on MessageEvent { message } } } } }"""
RECIPIENTS = {
    "AGENT_REPORTS_CHURN_RECIPIENTS": "churn-team@example.com,cs-lead@example.com",
    "AGENT_REPORTS_BRIEFING_RECIPIENTS": "ny-team@example.com",
    "AGENT_REPORTS_ALERT_EMAIL_TO": "oncall@example.com",
}


@dataclass
class Config:
    seed: int = 1
    start: str = "2024-02-27T00:00:00+00:00"  # crosses a month end and a Monday
    hours: int = 168
    sim_hour_seconds: float = 6.0  # real seconds per simulated hour
    faults_per_kind: int = 2
    backfill_days: int = 10  # a market backfill of this many January days
    manual_runs: int = 4  # re-runs of windows already due
    drain_timeout: float = 3600.0


@dataclass(frozen=True)
class Window:
    analysis: str
    key: str
    tick: datetime

    @property
    def job(self) -> str:
        return f"{self.analysis}_job"


# ------------------------------------------------------------------ the compressed clock


def due_windows(start: datetime, hours: int) -> list[Window]:
    """Every window whose schedule tick falls in [start, start + hours), by tick."""
    from dagster import TimeWindow

    from agent_reports.definitions import ANALYSES

    end = start + timedelta(hours=hours)
    windows = []
    for spec in (analysis.catchup_spec() for analysis in ANALYSES if analysis.catchup):
        partitions = spec.partitions_def
        span = TimeWindow(start - timedelta(days=40), end)
        for key in partitions.get_partition_keys_in_time_window(span):
            tick = partitions.time_window_for_partition_key(key).end + spec.due_after_end
            if start <= tick < end:
                windows.append(Window(spec.analysis, key, tick))
    return sorted(windows, key=lambda w: (w.tick, w.analysis))


# --------------------------------------------------------------------------- the SMTP end


class FaultySMTP:
    """aiosmtpd handler storing messages in a Maildir; on request it answers the next
    messages 451 (not stored) or stores one and drops the connection before replying."""

    def __init__(self, maildir: Path):
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.reject_next = 0
        self.drop_next = 0
        self.dropped: list[str] = []  # Message-IDs accepted, then the reply was lost
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.lock:
            if self.reject_next:
                self.reject_next -= 1
                return "451 4.3.0 Soak: try again later"
            message = mailbox.MaildirMessage(envelope.original_content or envelope.content)
            self.maildir.add(message)
            if self.drop_next:
                self.drop_next -= 1
                self.dropped.append(message["Message-ID"])
                server.transport.close()
        return "250 OK"


def start_smtp(handler: FaultySMTP) -> tuple[Any, int]:
    from aiosmtpd.controller import Controller

    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, port


# ------------------------------------------------------------------------------- faults


@dataclass
class Parts:
    stack: DeployedStack
    postgres: ThrowawayPostgres
    llm: LLMServer
    smtp: FaultySMTP
    log: list[str] = field(default_factory=list)


def kill_daemon(parts: Parts) -> str:
    pid = parts.stack.kill_daemon()
    time.sleep(2)
    parts.stack.start()
    return f"daemon (pid {pid}) SIGKILLed and started again"


def restart_postgres(parts: Parts) -> str:
    parts.postgres.stop("fast")
    time.sleep(5)
    parts.postgres.start()
    return "PostgreSQL stopped (fast) and started 5 s later"


def kill_worker(parts: Parts) -> str:
    import os
    import signal

    running = _tolerant(lambda: parts.stack.runs(statuses=["STARTED"]), []) or []
    for run in running:
        pid = parts.stack.worker_pid(run.run_id)
        if pid:
            os.kill(pid, signal.SIGKILL)
            return f"run worker of {run.job_name} {run.partitions} (pid {pid}) SIGKILLed"
    return "no run worker was running: nothing killed"


def llm_fault(behavior: dict) -> Callable[[Parts], str]:
    def inject(parts: Parts) -> str:
        parts.llm.script(behavior)
        return f"LLM: {behavior}"

    return inject


def smtp_fault(attr: str, label: str) -> Callable[[Parts], str]:
    def inject(parts: Parts) -> str:
        with parts.smtp.lock:
            setattr(parts.smtp, attr, getattr(parts.smtp, attr) + 2)
        return f"SMTP: the next 2 messages {label}"

    return inject


INJECT: dict[str, Callable[[Parts], str]] = {
    "daemon": kill_daemon,
    "postgres": restart_postgres,
    "worker": kill_worker,
    "llm_429": llm_fault({"type": "fail", "status": 429, "retry_after": 1, "times": 3}),
    "llm_500": llm_fault({"type": "fail", "status": 500, "times": 3}),
    "llm_hang": llm_fault({"type": "delay", "seconds": 30, "times": 2}),
    "smtp_451": smtp_fault("reject_next", "answered 451"),
    "smtp_drop": smtp_fault("drop_next", "accepted, then the connection dropped"),
}


def _tolerant(call: Callable[[], Any], errors: list[str], attempts: int = 60) -> Any:
    """`call()`, retried for a minute while the webserver fails requests (its stale
    connections after a PostgreSQL restart)."""
    for _ in range(attempts):
        try:
            return call()
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}"[:200])
            time.sleep(1)
    return None


# ------------------------------------------------------------------------------ the soak


def plan(config: Config, windows: list[Window]) -> list[tuple[float, str, Any]]:
    """(real second, what, argument) for every launch, backfill, manual run and fault."""
    rng = random.Random(config.seed)
    start = datetime.fromisoformat(config.start)
    at = [
        ((w.tick - start).total_seconds() / 3600 * config.sim_hour_seconds, "run", w)
        for w in windows
    ]
    length = config.hours * config.sim_hour_seconds
    days = [f"2024-01-{day:02d}" for day in range(2, 2 + config.backfill_days)]
    if days:
        at.append((rng.uniform(0.1, 0.5) * length, "backfill", ("market", days)))
    for window in rng.sample(windows, min(config.manual_runs, len(windows))):
        at.append((max(0.0, rng.uniform(at_time(at, window), length)), "manual", window))
    for kind in FAULTS:
        for _ in range(config.faults_per_kind):
            at.append((rng.uniform(0.05, 0.95) * length, "fault", kind))
    return sorted(at, key=lambda item: item[0])


def at_time(events: list[tuple[float, str, Any]], window: Window) -> float:
    return next(t for t, what, arg in events if what == "run" and arg == window)


def soak(config: Config) -> dict[str, Any]:
    windows = due_windows(datetime.fromisoformat(config.start), config.hours)
    events = plan(config, windows)
    with (
        tempfile.TemporaryDirectory(prefix="soak_") as folder,
        running_parts(Path(folder)) as parts,
    ):
        tmp = Path(folder)
        began = time.monotonic()
        backfills: dict[str, str] = {}
        manual: list[str] = []
        errors: list[str] = []
        for when, what, arg in events:
            time.sleep(max(0.0, began + when - time.monotonic()))
            if what == "fault":
                parts.log.append(f"{time.monotonic() - began:7.1f}s {INJECT[arg](parts)}")
            elif what == "backfill":
                analysis, keys = arg
                assets = [f"{analysis}_prices", f"{analysis}_analysis", f"{analysis}_report"]
                launch = partial(parts.stack.launch_backfill, assets, keys)
                backfills[_tolerant(launch, errors)] = analysis
            else:
                run_id = _tolerant(partial(parts.stack.launch_run, arg.job, arg.key), errors)
                if what == "manual":
                    manual.append(run_id)
        runs = drain(parts.stack, config.drain_timeout, errors)
        unfinished = [w for w in windows if not _succeeded(runs, w)]
        for window in unfinished:  # what an operator does after the failed-run alert
            _tolerant(partial(parts.stack.launch_run, window.job, window.key), errors)
        runs = drain(parts.stack, config.drain_timeout, errors)
        days = next((arg[1] for _, what, arg in events if what == "backfill"), [])
        figures = measure(parts, tmp, windows, runs, backfills, days, unfinished)
        figures.update(
            seed=config.seed,
            config=asdict(config),
            faults=parts.log,
            manual_runs=len(manual),
            launch_errors=len(errors),
            wall_seconds=round(time.monotonic() - began),
        )
        return figures


@contextmanager
def running_parts(tmp: Path) -> Iterator[Parts]:
    """PostgreSQL (a throwaway cluster), llmock, SMTP and the stack; stopped in reverse."""
    with ExitStack() as cleanup:
        postgres = cleanup.enter_context(running_cluster())
        llm_port = free_port()
        llm_process = start_process(
            [str(BIN / "llmock"), "serve", "--host", "127.0.0.1", "--port", str(llm_port)],
            tmp / "llmock.log",
        )
        cleanup.callback(stop_process, llm_process)
        wait_for_port(llm_port, llm_process)
        smtp = FaultySMTP(tmp / "maildir")
        controller, smtp_port = start_smtp(smtp)
        cleanup.callback(controller.stop)
        pg = postgres.settings("agent_reports")
        ledger = f"postgresql+psycopg2://postgres@127.0.0.1:{pg['DAGSTER_PG_PORT']}/agent_reports"
        env = {
            "AGENT_REPORTS_ANALYST": "openai",
            "OPENAI_API_KEY": "sk-soak-not-a-real-key",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{llm_port}/v1",
            "AGENT_REPORTS_LLM_TIMEOUT_SECONDS": "5",
            "AGENT_REPORTS_LLM_MAX_RETRIES": "2",
            "AGENT_REPORTS_SMTP_HOST": "127.0.0.1",
            "AGENT_REPORTS_SMTP_PORT": str(smtp_port),
            "AGENT_REPORTS_SMTP_SECURITY": "none",
            "AGENT_REPORTS_REPORTS_DIR": str(tmp / "reports"),
            "AGENT_REPORTS_STATE_DIR": str(tmp / "state"),
            "AGENT_REPORTS_LEDGER_URL": ledger,
            **RECIPIENTS,
        }
        stack = cleanup.enter_context(deployed_stack(tmp / "stack", pg, env))
        llm = LLMServer(llm_port)
        llm.reply_json(REPLY)
        yield Parts(stack, postgres, llm, smtp)


def drain(stack: DeployedStack, timeout: float, errors: list[str]) -> list[Run]:
    """All runs once none is queued or in progress (run retries included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _tolerant(stack.runs, errors) or []
        if runs and not any(_pending(r) for r in runs):
            time.sleep(5)  # a retry the daemon is about to launch
            again = _tolerant(stack.runs, errors) or []
            if len(again) == len(runs) and not any(_pending(r) for r in again):
                return again
        time.sleep(2)
    raise TimeoutError(f"the queue did not drain within {timeout:.0f}s")


def _pending(run: Run) -> bool:
    """Queued or in progress. A run NOT_STARTED for over a minute is the record a launch
    request left when the webserver failed it mid-way (a PostgreSQL restart): it never
    reaches the queue, and run monitoring fails it after start_timeout_seconds."""
    if run.status == "NOT_STARTED":
        return time.time() - run.creation_time < 60
    return run.status in PENDING


def failure_reasons(stack: DeployedStack, runs: list[Run]) -> dict[str, int]:
    """Why runs failed: the failed step's error, or the run's own failure message."""
    reasons: Counter = Counter()
    for run in runs:
        result = stack.graphql(FAILURE_EVENTS, {"id": run.run_id})["logsForRun"]
        events = result.get("events", [])
        steps = [e for e in events if e["__typename"] == "ExecutionStepFailureEvent"]
        if steps:
            first = steps[0]
            reason = f"{first['stepKey']}: {first['error']['message'].splitlines()[0][:120]}"
        else:
            failed = [e for e in events if e["__typename"] in {"RunFailureEvent", "EngineEvent"}]
            reason = failed[-1]["message"].splitlines()[0][:160] if failed else run.status
        reasons[f"{run.status} {reason}"] += 1
    return dict(reasons)


def _covers(run: Run, key: str) -> bool:
    keys = run.partitions
    return bool(keys) and keys[0] <= key <= keys[-1]


def _succeeded(runs: list[Run], window: Window) -> bool:
    return any(
        r.status == "SUCCESS" and r.job_name == window.job and _covers(r, window.key) for r in runs
    )


# ---------------------------------------------------------------------------- figures


def measure(
    parts: Parts,
    tmp: Path,
    windows: list[Window],
    runs: list[Run],
    backfills: dict[str, str],
    backfill_days: list[str],
    reexecuted: list[Window],
) -> dict[str, Any]:
    analysis_of = {r.run_id: _analysis(r, backfills) for r in runs}
    by_analysis: dict[str, list[Run]] = {}
    for run in runs:
        by_analysis.setdefault(analysis_of[run.run_id], []).append(run)
    overlaps = {a: len(parts.stack.step_clashes(rs)) for a, rs in by_analysis.items()}
    reports = [_report(tmp / "reports", w.analysis, w.key) for w in windows]
    failed = [r for r in runs if r.status in {"FAILURE", "CANCELED"}]
    failed_windows = {
        w for w in windows for r in failed if r.job_name == w.job and _covers(r, w.key)
    }
    recovered = {w for w in failed_windows if _succeeded(runs, w)}
    deliveries = _deliveries(parts.smtp, tmp / "maildir")
    degraded = Counter(reason for report in reports if report and (reason := _degraded(report)))
    return {
        "windows_due": len(windows),
        "windows_due_by_analysis": dict(Counter(w.analysis for w in windows)),
        "windows_with_one_whole_report": sum(1 for r in reports if r),
        "windows_without_whole_report": [
            f"{w.analysis} {w.key}" for w, r in zip(windows, reports, strict=True) if not r
        ],
        "backfill_windows": len(backfill_days),
        "backfill_windows_with_one_whole_report": sum(
            1 for day in backfill_days if _report(tmp / "reports", "market", day)
        ),
        "runs": len(runs),
        "runs_by_status": dict(Counter(r.status for r in runs)),
        "overlaps_by_analysis": overlaps,
        "overlaps": sum(overlaps.values()),
        "runs_failed_or_cancelled": len(failed),
        "failure_reasons": failure_reasons(parts.stack, failed),
        "windows_failed_then_recovered": len(recovered),
        "windows_failed_not_recovered": len(failed_windows - recovered),
        "windows_reexecuted_after_drain": len(reexecuted),
        "retries_by_daemon": sum(1 for r in runs if "dagster/parent_run_id" in r.tags),
        **deliveries,
        "degraded_reports": sum(degraded.values()),
        "degraded_reasons": dict(degraded),
        "llm_requests": len(parts.llm.chat_requests()),
    }


def _analysis(run: Run, backfills: dict[str, str]) -> str:
    backfill = run.tags.get("dagster/backfill")
    if backfill in backfills:
        return backfills[backfill]
    return run.job_name.removesuffix("_job")


def _report(root: Path, analysis: str, key: str) -> dict | None:
    """The window's report if it is whole: the JSON (written last) parses and names the
    window, the Markdown and HTML beside it exist, no temp file is left."""
    folder = root / analysis
    try:
        record = json.loads((folder / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    views = all((folder / f"{key}.{ext}").stat().st_size > 0 for ext in ("md", "html"))
    leftovers = list(folder.glob(f".{key}.*.tmp"))  # write_atomic's temporary files
    return record if record.get("partition") == key and views and not leftovers else None


def _degraded(report: dict) -> str | None:
    if not report.get("degraded"):
        return None
    notes = [n for n in report.get("notes", []) if n.startswith("Degraded:")]
    reason = notes[0].rsplit("(", 1)[-1].rstrip(").") if notes else "no reason given"
    return f"{report['analysis']}: {reason}"


def _deliveries(smtp: FaultySMTP, maildir: Path) -> dict[str, Any]:
    """Messages per (report, window, recipient): e-mailed reports and alerts apart; copies
    whose first delivery's reply was dropped are the at-least-once exception."""
    per_key: Counter = Counter()
    dropped: Counter = Counter()
    for message in mailbox.Maildir(maildir, create=False):
        report, window, _fingerprint = message["X-Agent-Reports-Key"].split("/", 2)
        key = (report, window, message["To"])
        per_key[key] += 1
        if message["Message-ID"] in smtp.dropped:
            dropped[key] += 1
    alerts = {k: n for k, n in per_key.items() if "alert" in k[0] or k[0].startswith("anomal")}
    emails = {k: n for k, n in per_key.items() if k not in alerts}

    def summary(counts: dict) -> dict[str, int]:
        excess = {k: n for k, n in counts.items() if n != 1}
        # every copy but the last followed a reply the SMTP server dropped
        at_least_once = {k for k in excess if counts[k] - 1 <= dropped[k]}
        return {
            "window_recipients": len(counts),
            "messages": sum(counts.values()),
            "exactly_once": sum(1 for n in counts.values() if n == 1),
            "duplicates_after_dropped_reply": len(at_least_once),
            "extra_copies_after_dropped_reply": sum(counts[k] - 1 for k in at_least_once),
            "duplicates_otherwise": len(set(excess) - at_least_once),
        }

    return {"emails": summary(emails), "alerts": summary(alerts), "smtp_dropped": len(smtp.dropped)}


def print_figures(figures: dict[str, Any]) -> None:
    print(f"soak seed {figures['seed']}: {json.dumps(figures['config'])}")
    for line in figures["faults"]:
        print(f"  fault {line}")
    skip = {"seed", "config", "faults"}
    for name, value in figures.items():
        if name not in skip:
            print(f"{name:34} {json.dumps(value)}")


def main(argv: list[str] | None = None) -> int:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--start", default=defaults.start)
    parser.add_argument("--hours", type=int, default=defaults.hours)
    parser.add_argument("--sim-hour-seconds", type=float, default=defaults.sim_hour_seconds)
    parser.add_argument("--faults-per-kind", type=int, default=defaults.faults_per_kind)
    parser.add_argument("--backfill-days", type=int, default=defaults.backfill_days)
    parser.add_argument("--manual-runs", type=int, default=defaults.manual_runs)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    config = Config(
        seed=args.seed,
        start=args.start,
        hours=args.hours,
        sim_hour_seconds=args.sim_hour_seconds,
        faults_per_kind=args.faults_per_kind,
        backfill_days=args.backfill_days,
        manual_runs=args.manual_runs,
    )
    figures = soak(config)
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    broken = figures["overlaps"] or figures["emails"]["duplicates_otherwise"]
    broken = broken or figures["alerts"]["duplicates_otherwise"]
    return 1 if broken or figures["windows_with_one_whole_report"] != figures["windows_due"] else 0


if __name__ == "__main__":
    sys.exit(main())
