"""`dg scaffold defs agent_reports.ScheduledReport <name>`: a commented defs.yaml that
passes `dg check` as it is (after pointing its URL variable at a database) and a prompt."""

from __future__ import annotations

from dagster import Scaffolder, ScaffoldRequest

DEFS_YAML = """\
# A declared analysis: every field is described in docs/declared-analyses.md.
type: {type_name}

attributes:
  name: {name}
  description: What this report is about, in one line
  # owner: team:my-team
  partitions:
    grain: daily          # hourly | daily | weekly (Monday start) | monthly
    timezone: UTC
    start: "2024-01-01"
  schedule:
    lag: 1h               # run each window this long after it ends (or cron: "30 6 * * *")
  # pool: {name}          # default: the name; one run of the analysis at a time
  deadline: 25h           # the report is late this long after its window ends
  input:
    sql:
      url_env: AGENT_REPORTS_{upper}_URL   # the SQLAlchemy URL, from the environment
      query: |
        SELECT *
        FROM my_table
        WHERE created_at >= :window_start AND created_at < :window_end
  metrics:                # DuckDB SQL over `input`, the window's rows
    - name: totals
      sql: SELECT count(*) AS row_count FROM input
  prompt:
    file: prompt.md
    version: {name}-v1    # bump it when the prompt or the metrics change
  findings:
    max: 5
    fields: []            # extra fields per finding, e.g. - {{name: metric, type: string}}
  checks: []              # - {{name: no_nulls, sql: "SELECT * FROM input WHERE id IS NULL"}}
  # budget: {{monthly_tokens: 200000}}
"""

PROMPT = """\
You are an analyst writing the report for one window of {name}.
The data gives the window's metrics. Write a summary of at most three sentences, then up to
five findings; each names what it is about in `subjects`, using only names from the data.
Cite the figures. Do not guess at causes the data cannot show.
"""


class ScheduledReportScaffolder(Scaffolder):
    """Writes defs.yaml and prompt.md into the new folder."""

    def scaffold(self, request: ScaffoldRequest) -> None:
        name = request.target_path.name.replace("-", "_").lower()
        folder = request.target_path
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "defs.yaml").write_text(
            DEFS_YAML.format(type_name=request.type_name, name=name, upper=name.upper())
        )
        (folder / "prompt.md").write_text(PROMPT.format(name=name))
