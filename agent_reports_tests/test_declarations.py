"""Definitions built from the declarations equal the hand-wired ones they replaced: the same
asset keys, partitions, pools, checks, jobs, crons, schedules and sensors (a snapshot
written from main's code before the refactor), and every declared analysis gets its
catch-up sensor, freshness policy, audit coverage and stale-window alert.

Regenerate the snapshot only for an intended change:
`PYTHONPATH=. .venv/bin/python agent_reports_tests/test_declarations.py --write`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, Definitions, MaterializeResult, asset

from agent_reports.core.declaration import (
    DeclarationError,
    analysis_definitions,
    declared_reports,
    read_declaration,
    with_declared,
)
from agent_reports.core.run_lock import with_run_locks

SNAPSHOT = Path(__file__).parent / "data" / "definitions_snapshot.json"


def _partitions(partitions_def: Any) -> str | None:
    return None if partitions_def is None else repr(partitions_def)


def snapshot(defs: Definitions) -> dict[str, Any]:
    """What must not change when the wiring does, as plain JSON."""
    graph = defs.resolve_asset_graph()
    repository = defs.get_repository_def()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        spec = node.to_asset_spec()
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "pools": sorted({op.pool or "" for op in node.assets_def.node_def.iterate_op_defs()}),
            "backfill_policy": repr(node.assets_def.backfill_policy),
            "deps": sorted(dep.to_user_string() for dep in node.parent_keys),
            "owners": list(spec.owners),
            "tags": dict(sorted(spec.tags.items())),
            "kinds": sorted(spec.kinds),
            "freshness": repr(spec.freshness_policy) if spec.freshness_policy else None,
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: k.to_user_string()):
        checks[check_key.to_user_string()] = _partitions(
            graph.get(check_key).partitions_def if hasattr(graph, "get") else None
        )
    jobs = {
        job.name: {
            "partitions": _partitions(job.partitions_def),
            "assets": sorted(k.to_user_string() for k in job.asset_layer.executable_asset_keys),
            "description": job.description,
        }
        for job in repository.get_all_jobs()
        if not job.name.startswith("__")
    }
    schedules = {
        schedule.name: {
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "job": schedule.job_name,
            "status": schedule.default_status.value,
            "description": schedule.description,
        }
        for schedule in repository.schedule_defs
    }
    sensors = {
        sensor.name: {
            "status": sensor.default_status.value,
            "jobs": sorted(target.job_name for target in sensor.targets),
            "interval": sensor.minimum_interval_seconds,
            "description": sensor.description,
        }
        for sensor in repository.sensor_defs
    }
    return {
        "assets": assets,
        "checks": checks,
        "jobs": dict(sorted(jobs.items())),
        "schedules": dict(sorted(schedules.items())),
        "sensors": dict(sorted(sensors.items())),
        "resources": sorted(defs.resources or {}),
    }


def test_definitions_equal_the_snapshot_of_the_hand_wired_ones() -> None:
    from agent_reports.definitions import defs

    expected = json.loads(SNAPSHOT.read_text())
    got = snapshot(defs)
    for part in expected:  # part by part, so a failure names what changed
        assert got[part] == expected[part], part
    assert got == expected


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    from agent_reports.definitions import defs

    SNAPSHOT.write_text(json.dumps(snapshot(defs), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")


def _extra_analysis(tmp_path: Path):
    """A sixth analysis declared the way a YAML component would: its own YAML file and
    assets built with its asset arguments, nothing else edited."""
    path = tmp_path / "analysis.yaml"
    path.write_text(
        "name: signups\n"
        "description: Sign-ups → report, per UTC day.\n"
        "owner: 'team:growth'\n"
        "cadence: daily\n"
        "pool: signups\n"
        "partitions: {grain: daily, start: '2024-01-01', timezone: UTC}\n"
        "schedule: {hour: 7, lag: 7h, description: Every day at 07:00 UTC.}\n"
        "deadline: {after_end: 26h}\n"
    )
    declared = read_declaration(path)

    @asset(**declared.asset_args())
    def signups_report() -> MaterializeResult:
        return MaterializeResult()

    return read_declaration(path, assets=(signups_report,))


def test_a_declared_analysis_gets_every_promise_with_no_further_edit(tmp_path) -> None:
    from agent_reports import definitions

    extra = _extra_analysis(tmp_path)
    defs = with_run_locks(
        with_declared(
            Definitions.merge(
                *(analysis_definitions(a) for a in [*definitions.ANALYSES, extra]),
                Definitions(sensors=definitions.OPS_SENSORS, resources=definitions.RESOURCES),
            )
        )
    )
    repository = defs.get_repository_def()
    assert repository.has_schedule_def("signups_job_schedule")
    assert repository.get_schedule_def("signups_job_schedule").cron_schedule == "0 7 * * *"
    assert repository.has_sensor_def("signups_catchup_sensor")
    spec = defs.resolve_assets_def(AssetKey("signups_report")).specs_by_key
    (report,) = spec.values()
    assert report.freshness_policy.fail_window.to_timedelta().total_seconds() == 26 * 3600
    assert report.owners == ["team:growth"] and report.tags["cadence"] == "daily"
    # What the stale-window alert watches and the audit counts (compliance_history):
    audited = [d.analysis for d in declared_reports(repository) if d.audited]
    assert audited == ["market", "anomalies", "churn", "briefing", "signups"]
    resource = defs.resources["declared"]
    assert [d.analysis for d in resource if d.audited] == audited
    assert "run_lock_signups" in defs.resources  # the run lock of its pool


def test_a_malformed_declaration_names_the_file_line_and_field(tmp_path) -> None:
    path = tmp_path / "analysis.yaml"
    base = (SNAPSHOT.parents[2] / "agent_reports" / "market" / "analysis.yaml").read_text()
    for broken, field, line in [
        (base.replace("grain: daily", "grain: fortnightly"), "partitions.grain", 8),
        (base.replace("lag: 6h", "lag: six hours"), "schedule.lag", 13),
        (base.replace("pool: market", "pool: market\nowners: x"), "owners", 7),
        (base.replace("cadence: daily\n", ""), "cadence", None),  # missing: no line
    ]:
        path.write_text(broken)
        with pytest.raises(DeclarationError) as raised:
            read_declaration(path)
        where = f"{path}:{line}" if line else f"{path}"
        assert str(raised.value).startswith(f"{where}: {field}: "), str(raised.value)
