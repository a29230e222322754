"""The report as Markdown: a table per benchmark, figures linked as PNG files beside it."""

from __future__ import annotations

import html
import re

from retain.report.document import Report
from retain.report.layout import heads_line, layout, seeds_line, settings_line
from retain.report.summary import Table

FIGURES_DIR = "figures"


def _escape(text: str) -> str:
    """``text`` shown as it is: HTML (``<``, ``>``, ``&``) as entities, as the HTML report
    escapes it, and ``|`` escaped so that it stays inside its table cell."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def _code(text: str) -> str:
    """``text`` as an inline code span (nothing in it is rendered), fenced by more backticks
    than it holds in a row."""
    text = str(text).replace("\n", " ")
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(table: Table, with_time: bool = True) -> str:
    """A Markdown table of the groups of ``table``; the best ACC means in bold."""
    lay = layout(table, with_time=with_time)
    headers = []
    i = 0
    for title, width in lay.spans:  # prefix the metric names with their setting
        for h in lay.headers[i : i + width]:
            prefix = {"task-aware": "TAw ", "task-agnostic": "TAg "}.get(title, "")
            headers.append(prefix + h)
        i += width
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in lay.rows:
        cells = [f"**{_escape(c.text)}**" if c.best else _escape(c.text) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    """The whole report; figures are referenced as ``figures/<name>``."""
    out = [f"# {_escape(report.title)}", ""]
    if report.note:
        out += [f"> {_escape(report.note)}", ""]
    out += [
        "Accuracies in %, mean ± standard deviation over seeds. ACC: final average accuracy; "
        "BWT: backward transfer; FWT: forward transfer; Forg.: forgetting; TAw: task-aware "
        "(the task id is given); TAg: task-agnostic (argmax over all classes seen); CAP: memory "
        "of the used weights and task masks as % of the dense model (masked methods); time: "
        "training wall time in seconds; heads: what the training loss saw (task: the current "
        "task's outputs; seen: every class seen so far). Bold: best mean ACC of its setting "
        "(task-agnostic: only where the rows share their heads); BWT, FWT and forgetting are "
        "shown unranked.",
        "",
    ]
    for section in report.sections:
        t = section.table
        out += [f"## {_escape(t.title)}", "", markdown_table(t), "", _escape(heads_line(t)), ""]
        if t.common:
            out += [f"Settings shared by every row: {_escape(settings_line(t))}.", ""]
        out += [f"Seeds: {_escape(seeds_line(t))}.", ""]
        for fig in section.figures:
            cap = _escape(fig.caption)
            out += [f"![{cap}]({FIGURES_DIR}/{fig.name})", "", f"*{cap}*", ""]
    if report.skipped:
        out += ["## Skipped run folders", ""]
        out += [f"- {_code(s.path)}: {_escape(s.reason)}" for s in report.skipped]
        out.append("")
    return "\n".join(out)
