"""The log store's ingest as declared in analysis.yaml (core/declaration.py reads it)."""

from agent_reports.core.declaration import declare

INGEST = declare(__package__)
GROUP = INGEST.name
