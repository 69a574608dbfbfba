"""agent_reports: LLM-driven analyses on cron schedules, as partitioned Dagster assets.

The Dagster features below are used knowingly, each for a reason docs/architecture.md
gives: single-run backfills, partitioned asset checks, the definitions rewritten once for
freshness and catalog policies, and code references linking assets to their source.
Dagster flags them as beta/preview on every load of the code location; only these exact
messages are silenced (matched by text, so the package does not import Dagster here), and
any other warning still shows.
"""

import warnings

KNOWN_DAGSTER_WARNINGS = (
    "Parameter `backfill_policy` of function `asset` is currently in beta",
    "Specifying a partitions_def on an AssetCheckSpec is currently in preview",
    "Function `Definitions.map_asset_specs` is currently in preview",
    "Function `Definitions.map_resolved_asset_specs` is currently in preview",
    "Function `with_source_code_references` is currently in beta",
    "Function `link_code_references_to_git` is currently in beta",
    "Class `(CodeReferencesMetadataValue|LocalFileCodeReference|UrlCodeReference"
    "|AnchorBasedFilePathMapping)` is currently in beta",
    # Dagster's own: the repository turns a declared analysis' SQL checks (an asset check
    # definition built with check specs) into AssetChecksDefinition with this parameter.
    "Parameter `execution_type` of function `AssetsDefinition.__init__` is currently in beta",
)
for _message in KNOWN_DAGSTER_WARNINGS:
    warnings.filterwarnings("ignore", message=_message)


def __getattr__(name: str):
    """`agent_reports.ScheduledReport`, the component type of declared analyses, imported only
    when asked for (by dg or a defs.yaml), so importing the package stays Dagster-free."""
    if name == "ScheduledReport":
        from agent_reports.components import ScheduledReport

        return ScheduledReport
    raise AttributeError(f"module 'agent_reports' has no attribute {name!r}")


def __dir__() -> list[str]:  # dg lists a registry module's components by dir()
    return sorted([*globals(), "ScheduledReport"])
