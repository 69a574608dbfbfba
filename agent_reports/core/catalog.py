"""What the catalog shows of every asset beyond its declaration's owner and cadence tags:
its kinds (from its role when it declares none) and, for the input tables, their columns.
Applied once, to the whole code location (definitions.py)."""

from dagster import AssetSpec, TableColumn, TableSchema

from agent_reports.core.customers import CANONICAL_COLUMNS
from agent_reports.core.sources import MARKET_COLUMNS, ORIGIN_COLUMNS

# Kinds for assets that declare none, by the last word of their name.
KINDS_BY_ROLE = {
    "report": {"openai", "html"},
    "email": {"email"},
    "alert": {"email", "webhook"},
    "analysis": {"pandas"},
    "detection": {"pandas"},
    "history": {"dagster"},
}
MARKET_TYPES = {"date": "datetime64", "ticker": "string", "file": "string", "line": "int64"}
CUSTOMER_TYPES = {
    "signup_date": "datetime64",
    "churn_date": "datetime64",
    "tenure": "float64",
    "monthly_charges": "float64",
    "total_charges": "float64",
    "churned": "bool",
}
COLUMN_SCHEMAS = {
    "market_prices": TableSchema(
        columns=[
            TableColumn(name, MARKET_TYPES.get(name, "float64"))
            for name in (*MARKET_COLUMNS, *ORIGIN_COLUMNS)
        ]
    ),
    "churn_customers": TableSchema(
        columns=[
            TableColumn(name, CUSTOMER_TYPES.get(name, "string")) for name in CANONICAL_COLUMNS
        ]
    ),
}


def catalog_spec(spec: AssetSpec) -> AssetSpec:
    """Kinds (from the asset's role when it declares none) and, for tables, the column schema."""
    kinds = spec.kinds or KINDS_BY_ROLE.get(spec.key.path[-1].rpartition("_")[2], {"python"})
    schema = COLUMN_SCHEMAS.get(spec.key.to_user_string())
    return spec.replace_attributes(kinds=kinds).merge_attributes(
        metadata={"dagster/column_schema": schema} if schema else {},
    )
