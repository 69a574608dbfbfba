"""Analyses declared in YAML: the `agent_reports.ScheduledReport` component and the loader
of the defs folder (`agent_reports/defs/<name>/defs.yaml`, docs/declared-analyses.md)."""

from __future__ import annotations

import importlib
from pathlib import Path

from dagster import Definitions, load_defs

from agent_reports.components.scheduled_report import ScheduledReport

__all__ = ["ScheduledReport", "declared_definitions"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def declared_definitions() -> Definitions:
    """Everything the defs folder declares, as one Definitions to merge with the built-in
    analyses (before the run locks, freshness and catalog are applied to the whole)."""
    return load_defs(importlib.import_module("agent_reports.defs"), project_root=PROJECT_ROOT)
