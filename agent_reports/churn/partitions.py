"""The churn analysis as declared in analysis.yaml (core/declaration.py reads it)."""

from agent_reports.core.declaration import declare

CHURN = declare(__package__)
# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, churn_partitions = CHURN.name, CHURN.pool, CHURN.partitions
