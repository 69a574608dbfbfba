"""Analyses declared in YAML, one folder each: `<name>/defs.yaml` (type
agent_reports.ScheduledReport) and its prompt file. `dg scaffold defs
agent_reports.ScheduledReport <name>` adds one; docs/declared-analyses.md says how."""
