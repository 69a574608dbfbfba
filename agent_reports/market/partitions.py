"""The market analysis as declared in analysis.yaml (core/declaration.py reads it)."""

from agent_reports.core.declaration import declare

MARKET = declare(__package__)
# The names the folder's assets, checks and tests use.
ANALYSIS, POOL, market_partitions = MARKET.name, MARKET.pool, MARKET.partitions
market_job = MARKET.job
