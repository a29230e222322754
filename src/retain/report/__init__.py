"""Reports from run folders."""

from retain.report.tables import collect_runs, format_result, format_runs_table

__all__ = ["collect_runs", "format_result", "format_runs_table"]
