"""The anomalies analysis as declared in analysis.yaml (core/declaration.py reads it)."""

from agent_reports.core.declaration import declare

ANOMALIES = declare(__package__)
# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, anomalies_partitions = ANOMALIES.name, ANOMALIES.pool, ANOMALIES.partitions
