"""The Dagster side of a report asset: ask the analyst for every partition of the run, write
each report, and attach per-partition metadata so each window reads on its own in the UI.

`report_asset` is the whole report asset of an analysis in one call: what it reads, how
its prompt data and its report are made; the rest (every partition answered, written,
described, the run's totals logged) is the same for every analysis and lives here once.
"""

import inspect
import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    CodeReferencesMetadataValue,
    Failure,
    LocalFileCodeReference,
    MaterializeResult,
    MetadataValue,
    asset,
)

from agent_reports.core import settings
from agent_reports.core.analyst import (
    AnalystAnswer,
    AnalystError,
    AnalystRequest,
    CachedAnalyst,
    Usage,
)
from agent_reports.core.delivery import OutboxEntry
from agent_reports.core.quality import LOW_SCORE
from agent_reports.core.reports import Report, neutral_text
from agent_reports.core.resources import AnalystResource, ReportStoreResource

if TYPE_CHECKING:
    from agent_reports.core.declaration import Analysis

MARKDOWN_PREVIEW_LIMIT = 60_000


def answer_all(
    analyst: CachedAnalyst, requests: Sequence[AnalystRequest], max_concurrency: int
) -> list[AnalystAnswer]:
    """Answers in `requests` order; up to `max_concurrency` requests in flight for a range run."""
    if len(requests) <= 1 or max_concurrency <= 1:
        return [analyst.answer(request) for request in requests]
    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        return list(pool.map(analyst.answer, requests))


def publish_reports(
    context: AssetExecutionContext,
    analyst: AnalystResource,
    reports_root: Path,
    requests: Mapping[str, AnalystRequest],
    build_report: Callable[[str, AnalystAnswer], Report],
) -> list[Report]:
    """Answer, write and describe each partition's report; `requests` maps partition key
    to its question, `build_report(key, answer)` makes the report. Returns them in order."""
    try:
        answers = answer_all(analyst.get(), list(requests.values()), analyst.max_concurrency)
    except AnalystError as error:  # this analysis fails rather than degrades: say why, briefly
        raise Failure(description=str(error)) from None
    total = Usage()
    reports = []
    for key, answer in zip(requests, answers, strict=True):
        report = build_report(key, answer)
        paths = report.write(reports_root)
        total.add(answer.usage)
        context.add_asset_metadata(report_metadata(report, answer, paths), partition_key=key)
        reports.append(report)
    context.log.info(
        f"{len(reports)} report(s) written; {total.requests} LLM request(s), "
        f"{total.prompt_tokens + total.completion_tokens} token(s), "
        f"{sum(a.cache_hit for a in answers)} cache hit(s), "
        f"{sum(a.degraded for a in answers)} degraded"
    )
    return reports


def report_asset(
    analysis: "Analysis",
    prompts: ModuleType,
    build: Callable[[str, Any, AnalystAnswer], Report],
    *,
    reads: Sequence[str] = (),
    gather: Callable[..., Any] | None = None,
    tools: Callable[..., Any] | None = None,
    keep_reports: bool = False,
    **asset_args: Any,
) -> Callable[[Callable[[str, Any], Mapping[str, Any]]], AssetsDefinition]:
    """Decorates `<name>_report(key, input) -> prompt data` into the analysis' report asset
    (in its group, partitions and pool; its docstring is the asset's description).

    Per partition of the run: its input is the value of the one asset it `reads` (each
    read asset's value is `{partition: value}`; the first one by default), or
    `gather(key, reports_root, *values)`; `tools(key, reports_root, *values)` gives the
    analyst its tools (the analysis' tools.py);
    the analyst is asked what the decorated function returns for it, and
    `build(key, input, answer)` makes the report. `keep_reports` stores `{partition:
    Report}` with the range IO manager for a downstream asset (the churn e-mail);
    otherwise the files are the output.
    """

    def decorate(prompt_data: Callable[[str, Any], Mapping[str, Any]]) -> AssetsDefinition:
        name = analysis.report_key.path[-1]
        if prompt_data.__name__ != name:
            raise ValueError(f"{analysis.name}: its report asset is {name}, not {prompt_data}")
        source = LocalFileCodeReference(
            file_path=inspect.getsourcefile(prompt_data) or "",
            line_number=inspect.getsourcelines(prompt_data)[1],
        )

        @asset(
            name=name,
            ins={upstream: AssetIn(upstream) for upstream in reads},
            description=inspect.getdoc(prompt_data),
            metadata={
                "dagster/code_references": CodeReferencesMetadataValue(code_references=[source])
            },
            **({"io_manager_key": "range_io_manager"} if keep_reports else {}),
            **analysis.asset_args(),
            **asset_args,
        )
        def _report(
            context: AssetExecutionContext,
            analyst: AnalystResource,
            reports: ReportStoreResource,
            **upstream: dict[str, Any],
        ) -> Any:
            root = reports.path()
            values = {
                key: [upstream[name][key] for name in reads] for key in context.partition_keys
            }
            inputs = {key: (gather or _first)(key, root, *values[key]) for key in values}
            requests = {
                key: AnalystRequest.from_prompts(
                    analysis.name,
                    prompts,
                    prompt_data(key, value),
                    tools(key, root, *values[key]) if tools else None,
                )
                for key, value in inputs.items()
            }
            written = publish_reports(
                context, analyst, root, requests, lambda key, got: build(key, inputs[key], got)
            )
            if keep_reports:
                return {report.partition: report for report in written}
            return MaterializeResult(metadata={"reports_written": MetadataValue.int(len(written))})

        return _report

    return decorate


def _first(_key: str, _root: Path, value: Any, *_rest: Any) -> Any:
    return value


def report_metadata(report: Report, answer: AnalystAnswer, paths: dict[str, Path]) -> dict:
    """What the UI shows of one report; its text neutralised like the report's views
    (the model name is echoed by the LLM server)."""
    preview = report.to_markdown()
    if len(preview) > MARKDOWN_PREVIEW_LIMIT:
        preview = preview[:MARKDOWN_PREVIEW_LIMIT] + "\n\n…(truncated; see the file)"
    return {
        "preview": MetadataValue.md(preview),
        # `paths` are <root>/<analysis>/<partition>.<ext>: the root is two levels up.
        "report_json": report_link(paths["json"], paths["json"].parents[1]),
        "report_html": report_link(paths["html"], paths["html"].parents[1]),
        "generated_by": neutral_text(report.generated_by),
        "degraded": report.degraded,
        "input_fingerprint": report.input_fingerprint,
        "prompt_version": report.prompt_version,
        "findings": len(report.findings),
        "llm_cache_hit": answer.cache_hit,
        "llm_requests": answer.usage.requests,
        "llm_prompt_tokens": answer.usage.prompt_tokens,
        "llm_completion_tokens": answer.usage.completion_tokens,
        "llm_cost_usd": cost_metadata(answer),
        "llm_tokens_estimated": answer.usage.estimated,
        "llm_seconds": MetadataValue.float(answer.seconds),
        **(
            {"llm_quality_score": MetadataValue.float(answer.quality_score)}
            if answer.quality_score is not None
            else {}
        ),
        **(
            {"llm_tokens_month_to_date": answer.tokens_month_to_date}
            if answer.tokens_month_to_date is not None
            else {}
        ),
    }


def report_link(path: Path, reports_root: Path) -> MetadataValue:
    """A file under the reports folder as the UI links it: a URL when the deployment serves
    that folder (AGENT_REPORTS_REPORTS_URL is its base), else the path on disk."""
    base = settings.env("AGENT_REPORTS_REPORTS_URL")
    if not base:
        return MetadataValue.path(str(path))
    relative = path.resolve().relative_to(reports_root.resolve()).as_posix()
    return MetadataValue.url(f"{base.rstrip('/')}/{urllib.parse.quote(relative)}")


def outbox_metadata(entries: Sequence[OutboxEntry], reports_root: Path) -> dict:
    """Links to the e-mails written to the outbox (first one as a link of its own)."""
    if not entries:
        return {}
    return {
        "outbox_html": report_link(entries[0].html, reports_root),
        "outbox_eml": report_link(entries[0].eml, reports_root),
        "outbox": MetadataValue.json(
            [{"to": e.recipient, "eml": str(e.eml), "html": str(e.html)} for e in entries[:50]]
        ),
    }


def end_outbox_step(
    context: AssetExecutionContext, problem: str | None, entries: Sequence[OutboxEntry]
) -> None:
    """After writing e-mails to the outbox: fail naming the missing variable when e-mail was
    configured half-way (recipients but no host), else say where the e-mails are."""
    where = f"{len(entries)} e-mail(s) written to {entries[0].eml.parents[1]}" if entries else ""
    if problem:
        raise Failure(
            description=f"{problem}: {where or 'nothing written'}, not sent", allow_retries=False
        )
    context.log.info(f"AGENT_REPORTS_SMTP_HOST is not set: {where or 'no e-mail'} instead of sent")


def cost_metadata(answer: AnalystAnswer) -> MetadataValue:
    """This run's cost: 0.0 when no request was made, "unknown" when the price is."""
    if answer.usage.requests == 0:
        return MetadataValue.float(0.0)
    if answer.cost_usd is None:
        return MetadataValue.text("unknown")
    return MetadataValue.float(answer.cost_usd)


def report_notes(answer: AnalystAnswer) -> list[str]:
    """The notes every report carries about how its text was written."""
    if answer.investigation_note and not answer.degraded:
        return [answer.investigation_note]
    if answer.degraded:
        return [
            "Degraded: this text comes from the offline template, not the LLM analyst "
            f"({answer.degraded_reason})."
        ]
    if answer.generated_by == "offline":
        return [
            "Written by the offline analyst (no LLM configured): template text from the metrics."
        ]
    return []


def report_quality_check(
    reports_root: Path,
    analysis: str,
    partition_keys: Sequence[str],
    more_problems: Callable[[dict], list[str]] | None = None,
) -> AssetCheckResult:
    """The warning every report asset carries: each report of the run exists, has a
    summary, was not degraded to the offline template and has no low quality score
    (quality.py; plus the analysis' own rules).
    A warning, not a block: a degraded report is still a report, but it must show."""
    problems = []
    for key in partition_keys:
        path = reports_root / analysis / f"{key}.json"
        if not path.exists():
            problems.append(f"{key}: no report file")
            continue
        record = json.loads(path.read_text())
        if not record["summary"].strip():
            problems.append(f"{key}: empty summary")
        if record["degraded"]:
            problems.append(f"{key}: degraded to the offline template")
        if low := low_quality(record.get("llm")):
            problems.append(f"{key}: {low}")
        problems += [f"{key}: {problem}" for problem in (more_problems or _none)(record)]
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        metadata={"problems": json.dumps(problems[:20])},
    )


def low_quality(llm: dict | None) -> str | None:
    """The problem a report's quality score below LOW_SCORE makes, if any (quality.py)."""
    score = (llm or {}).get("quality_score")
    if score is None or score >= LOW_SCORE:
        return None
    return f"quality score {score:g} (below {LOW_SCORE:g})"


def _none(_record: dict) -> list[str]:
    return []


def report_from_answer(
    analysis: "Analysis", key: str, answer: AnalystAnswer, *, prompt_version: str, **fields
) -> Report:
    """A report's fields that come from its partition and its analyst answer; the analysis
    passes the rest (findings, metrics, tables, notes, ...) and may override `degraded`.
    The window is labelled in the partitions' time zone."""
    window = analysis.partitions.time_window_for_partition_key(key)
    return Report(
        analysis=analysis.name,
        partition=key,
        window_start=window.start.isoformat(),
        window_end=window.end.isoformat(),
        generated_by=answer.generated_by,
        input_fingerprint=answer.input_fingerprint,
        prompt_version=prompt_version,
        summary=answer.narrative["summary"],
        llm=answer.llm,
        investigation=answer.investigation,
        **{"degraded": answer.degraded, "timezone": analysis.partitions.timezone, **fields},
    )
