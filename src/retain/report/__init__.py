"""Reports from run folders: tables of mean ± std over seeds, plots, Markdown and HTML.

``retain report RUN_DIR...`` is :func:`report_runs`; the steps are :func:`collect` (read the
finished run folders, skip the rest with a reason), :func:`build_tables` (group by benchmark,
method and config), :func:`make_report` (tables and figures) and :func:`write_report`.
"""

from retain.report.build import make_report, report_runs, write_report
from retain.report.markdown import markdown_table
from retain.report.runs import Collection, RunRecord, Skipped, collect
from retain.report.summary import Group, Stat, Table, build_tables
from retain.report.tables import format_result

__all__ = [
    "Collection",
    "Group",
    "RunRecord",
    "Skipped",
    "Stat",
    "Table",
    "build_tables",
    "collect",
    "format_result",
    "make_report",
    "markdown_table",
    "report_runs",
    "write_report",
]
