"""Optional Healthchecks.io-style pings for each analysis: `<url>/start` when one of its runs
starts, `<url>` when it succeeds, `<url>/fail` when it fails or is cancelled, each with
`?rid=<run id>` so the service pairs start and finish (and measures the run time) even when
runs overlap. A monitor outside Dagster then also notices a Dagster that is down altogether,
which no sensor inside it can report.

Configured per analysis by AGENT_REPORTS_PING_URL_<ANALYSIS> (for example
AGENT_REPORTS_PING_URL_MARKET=https://hc-ping.com/<uuid>); unset, the analysis is not pinged.
The URL is a secret (anyone holding it can ping the check), so it is read only through
`EnvVar` and never logged: logs, tick messages and ledger rows name the analysis, the event
and the run.

Why one polling sensor rather than three run status sensors (STARTED, SUCCESS, FAILURE):
- three sensors tick independently, so for a run shorter than a tick the success ping can
  reach Healthchecks before its /start; the check then stays "started" and goes down after
  its grace time although the run succeeded. One sensor sends a run's pings in order.
- a run status sensor moves its cursor past an event even when its function raises, so a
  ping that met a 5xx would be lost; here it stays due and is retried on the next evaluation.

Which analysis a run belongs to: its concurrency pools, which each analysis' assets set to
the analysis name. Unlike the job name, pools also cover runs launched by materialising
assets in the UI and by asset backfills (the job is then `__ASSET_JOB`); a run of assets of
two analyses pings both. The job name `<analysis>_job` is the fallback for runs recorded
without pool information.

Once per (run, event): the ledger key (report `ping:<analysis>`, partition = run id,
recipient = event, fingerprint = hash of the URL) keeps a re-evaluation after a daemon restart
from pinging again. A crash between the send and the ledger commit sends that ping again on
the next evaluation (at least once, as for every delivery); the repeat carries the same rid.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from dagster import (
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    EnvVar,
    RunRecord,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from agent_reports.core import settings
from agent_reports.core.delivery import DeliveryError, DeliveryKey, DeliveryLedger, DeliveryOutcome
from agent_reports.core.resources import DeliveryResource
from agent_reports.ops import ClockResource

URL_VARIABLE = "AGENT_REPORTS_PING_URL_{}"
REPORT = "ping:{}"
TIMEOUT_SECONDS = 5.0
# Runs whose status changed longer ago than this are not looked at any more: it bounds the
# work per evaluation and how late a ping may still arrive (a daemon outage longer than this
# loses the pings of runs that ended during it; runs launched after it are pinged).
LOOKBACK = timedelta(hours=1)
# A ping that failed this often (about 5 minutes at one evaluation per 30 s) is left recorded
# as failed in the ledger: a deleted check (404) must not be retried for the whole look-back.
MAX_ATTEMPTS = 10
MAX_RUNS = 500
SUFFIXES = {"start": "/start", "success": "", "fail": "/fail"}
FINISH_EVENTS = {
    DagsterRunStatus.SUCCESS: "success",
    DagsterRunStatus.FAILURE: "fail",
    # A cancelled run produced no report; without a finish ping its /start would leave the
    # check "started" until the grace time runs out and then alert anyway.
    DagsterRunStatus.CANCELED: "fail",
}
PINGED_STATUSES = [DagsterRunStatus.STARTED, *FINISH_EVENTS]


def ping_urls() -> dict[str, str]:
    """Analysis → ping URL, for the analyses that have one; read at every evaluation."""
    urls = {}
    for analysis in settings.analysis_names():
        url = EnvVar(URL_VARIABLE.format(analysis.upper())).get_value()
        if url and url.strip():
            urls[analysis] = url.strip()
    return urls


def ping_url(base: str, event: str, run_id: str) -> str:
    """`base` + `/start` | `` | `/fail`, keeping its query (e.g. `?create=1`), plus the rid."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + SUFFIXES[event]
    query = urlencode([*parse_qsl(parts.query), ("rid", run_id)])
    return urlunsplit(parts._replace(path=path, query=query))


def send_ping(url: str, body: str) -> None:
    """POST one ping (the body shows in the check's event log); errors never name the URL."""
    try:
        request = urllib.request.Request(
            url,
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "agent-reports"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise DeliveryError(f"ping answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:  # refused, DNS, timeout
        reason = getattr(error, "reason", error)
        raise DeliveryError(f"ping unreachable ({type(reason).__name__})") from None
    except ValueError:  # urllib's message would quote the URL
        raise DeliveryError("ping URL is not a valid http(s) URL") from None


def analyses_of(run: DagsterRun) -> set[str]:
    """The analyses a run executes: its pools, else its job name `<analysis>_job`."""
    concurrency = run.run_op_concurrency
    pools = set(concurrency.all_pools or ()) if concurrency else set()
    if not pools and run.job_name.endswith("_job"):
        pools = {run.job_name.removesuffix("_job")}
    return pools & set(settings.analysis_names())


def due_events(record: RunRecord) -> list[str]:
    """The pings a run has earned so far, in the order they must arrive."""
    events = ["start"] if record.start_time is not None else []
    finish = FINISH_EVENTS.get(record.dagster_run.status)
    return events + ([finish] if finish else [])


def ping_once(
    ledger: DeliveryLedger, analysis: str, url: str, run: DagsterRun, event: str
) -> DeliveryOutcome:
    """Send the run's `event` ping unless the ledger has it as sent or given up."""
    fingerprint = hashlib.sha256(url.encode()).hexdigest()[:16]
    key = DeliveryKey(REPORT.format(analysis), run.run_id, event, fingerprint)
    row = ledger.status(key)
    if row and row["status"] == "sent":
        return DeliveryOutcome(key, "already_sent")
    if row and row["status"] == "failed" and row["attempts"] >= MAX_ATTEMPTS:
        return DeliveryOutcome(key, "gave_up", row["error"])
    body = " ".join(filter(None, (run.job_name, _partition(run), f"run {run.run_id}:", event)))
    target = ping_url(url, event, run.run_id)
    return ledger.deliver_once(key, lambda: send_ping(target, body + "\n"))


def _partition(run: DagsterRun) -> str:
    """The run's partition, or `start...end` for a range (single-run backfills)."""
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = (tags.get(f"dagster/asset_partition_range_{e}") for e in ("start", "end"))
    return f"{start}...{end}" if start and end else ""


def _in_this_code_location(context: SensorEvaluationContext, run: DagsterRun) -> bool:
    """Runs of other code locations are theirs to ping; in-process runs have no origin."""
    here, origin = context.code_location_origin, run.remote_job_origin
    if here is None or origin is None:
        return True
    return origin.repository_origin.code_location_origin.location_name == here.location_name


def recent_runs(context: SensorEvaluationContext, updated_after: datetime) -> list[RunRecord]:
    """Runs of this code location whose status changed since `updated_after`, oldest first."""
    records = context.instance.get_run_records(
        filters=RunsFilter(statuses=PINGED_STATUSES, updated_after=updated_after),
        limit=MAX_RUNS,
    )
    mine = [r for r in records if _in_this_code_location(context, r.dagster_run)]
    return sorted(mine, key=lambda r: r.create_timestamp)


def ping_runs(
    ledger: DeliveryLedger, urls: dict[str, str], records: Sequence[RunRecord]
) -> list[DeliveryOutcome]:
    """Every due ping, in order per run; after a failed one, nothing more to that URL.

    Stopping keeps a run's finish from overtaking its failed /start (Healthchecks would then
    hold the check "started"), and bounds an evaluation against a dead endpoint to one
    timeout per analysis, so the other analyses' pings still go out in time.
    """
    outcomes, broken = [], set()
    for record in records:
        run = record.dagster_run
        for analysis in sorted(analyses_of(run) & urls.keys() - broken):
            for event in due_events(record):
                outcome = ping_once(ledger, analysis, urls[analysis], run, event)
                outcomes.append(outcome)
                if outcome.status == "failed":
                    broken.add(analysis)
                    break
    return outcomes


def _describe(outcome: DeliveryOutcome) -> str:
    key = outcome.key
    analysis = key.report.removeprefix(REPORT.format(""))
    reason = f" ({outcome.reason})" if outcome.reason else ""
    return f"{analysis} {key.recipient} run {key.partition}: {outcome.status}{reason}"


@sensor(
    name="run_ping_sensor",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Pings each analysis' AGENT_REPORTS_PING_URL_<ANALYSIS> (Healthchecks.io "
    "style) when its runs start, succeed or fail; does nothing where none is set.",
)
def run_ping_sensor(
    context: SensorEvaluationContext, clock: ClockResource, delivery: DeliveryResource
) -> SkipReason:
    urls = ping_urls()
    if not urls:
        return SkipReason("no AGENT_REPORTS_PING_URL_<ANALYSIS> is set: nothing to ping")
    records = recent_runs(context, clock.now() - LOOKBACK)
    outcomes = ping_runs(delivery.ledger(), urls, records)
    news = [_describe(o) for o in outcomes if o.status in ("sent", "failed")]
    for outcome in outcomes:
        if outcome.status == "failed":
            context.log.warning(
                f"ping {_describe(outcome)}; retried at later evaluations "
                f"({MAX_ATTEMPTS} attempts in all)"
            )
        elif outcome.status == "sent":
            context.log.info(f"ping {_describe(outcome)}")
    return SkipReason("; ".join(news) if news else f"no new pings ({len(records)} recent runs)")
