"""The report as one self-contained HTML file: figures embedded as base64 PNG data URIs, the
style inline, no script and no external resource (it opens from a mail attachment)."""

from __future__ import annotations

import base64
from html import escape

from retain.report.document import Report
from retain.report.layout import heads_line, layout, seeds_line, settings_line
from retain.report.summary import Table

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 78em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .6em 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child { text-align: left; }
td.best { font-weight: bold; background: #eef7ee; }
.legend, .meta { color: #555; font-size: .85em; }
figure { display: inline-block; margin: .5em 1em .5em 0; vertical-align: top; }
figcaption { color: #555; font-size: .85em; max-width: 40em; }
img { max-width: 100%; }
"""


def html_table(table: Table) -> str:
    lay = layout(table)
    spans = "".join(
        f'<th colspan="{w}">{escape(title)}</th>' if title else f'<th colspan="{w}"></th>'
        for title, w in lay.spans
    )
    heads = "".join(f"<th>{escape(h)}</th>" for h in lay.headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="best">{escape(c.text)}</td>' if c.best else f"<td>{escape(c.text)}</td>"
            for c in row
        )
        + "</tr>"
        for row in lay.rows
    )
    return f"<table><thead><tr>{spans}</tr><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(report: Report) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(report.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(report.title)}</h1>",
    ]
    if report.note:
        parts.append(f'<p class="note">{escape(report.note)}</p>')
    parts.append(
        '<p class="legend">Accuracies in %, mean ± standard deviation over seeds. ACC: final '
        "average accuracy; BWT: backward transfer; FWT: forward transfer; Forg.: forgetting; "
        "task-aware: the task id is given; task-agnostic: argmax over all classes seen; CAP: "
        "memory of the used weights and task masks as % of the dense model (masked methods); "
        "time: training wall time in seconds; heads: what the training loss saw (task: the "
        "current task's outputs; seen: every class seen so far). Highlighted: best mean ACC "
        "of its setting (task-agnostic: only where the rows share their heads); BWT, FWT and "
        "forgetting are shown unranked.</p>"
    )
    for section in report.sections:
        t = section.table
        parts += [
            f"<h2>{escape(t.title)}</h2>",
            html_table(t),
            f'<p class="meta">{escape(heads_line(t))}</p>',
        ]
        if t.common:
            parts.append(
                f'<p class="meta">Settings shared by every row: {escape(settings_line(t))}.</p>'
            )
        parts.append(f'<p class="meta">Seeds: {escape(seeds_line(t))}.</p>')
        for fig in section.figures:
            parts.append(
                f'<figure><img src="{data_uri(fig.png)}" alt="{escape(fig.caption)}">'
                f"<figcaption>{escape(fig.caption)}</figcaption></figure>"
            )
    if report.skipped:
        parts.append("<h2>Skipped run folders</h2><ul>")
        parts += [
            f"<li><code>{escape(str(s.path))}</code>: {escape(s.reason)}</li>"
            for s in report.skipped
        ]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
