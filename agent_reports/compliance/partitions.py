"""The compliance analysis as declared in analysis.yaml (core/declaration.py reads it)."""

from agent_reports.core.declaration import declare

COMPLIANCE = declare(__package__)
# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, compliance_partitions = COMPLIANCE.name, COMPLIANCE.pool, COMPLIANCE.partitions
