"""Make a report from run folders and write it: ``report.md`` (figures as PNG files under
``figures/``) and a self-contained ``report.html``, every file written atomically."""

from __future__ import annotations

import re
from pathlib import Path

from retain.engine import runio
from retain.report import plots
from retain.report.document import Figure, Report, Section
from retain.report.html import render_html
from retain.report.markdown import FIGURES_DIR, render_markdown
from retain.report.runs import Collection, collect
from retain.report.summary import build_tables

MARKDOWN = "report.md"
HTML = "report.html"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "x"


def make_report(
    collection: Collection, note: str = "", figures: bool = True, title: str = "retain report"
) -> Report:
    """Tables (and, unless ``figures`` is False, plots) of the finished runs of
    ``collection``."""
    sections = []
    used: set[str] = set()

    def name(*parts: str) -> str:
        base = _slug("-".join(parts))
        out, k = base, 1
        while out in used:
            k += 1
            out = f"{base}-{k}"
        used.add(out)
        return out + ".png"

    for table in build_tables(collection.runs):
        section = Section(table)
        trained = [g for g in table.groups if not g.diverged]  # diverged groups: no figures
        if figures and trained:
            section.figures.append(
                Figure(
                    name(table.title, "average-accuracy"),
                    f"{table.title}: average accuracy on the tasks seen so far after each task "
                    "(mean over seeds, band: ± std)",
                    plots.accuracy_curves(table),
                )
            )
            for group in trained:
                section.figures.append(
                    Figure(
                        name(table.title, group.label, "matrix"),
                        f"{table.title}, {group.label}: accuracy (%) on each task (column) after "
                        "training each task (row), mean over seeds",
                        plots.accuracy_heatmaps(group),
                    )
                )
            for group in trained:
                png = plots.layer_plot(group)
                if png is not None:
                    section.figures.append(
                        Figure(
                            name(table.title, group.label, "layers"),
                            f"{table.title}, {group.label}: per layer after each task "
                            "(mean over seeds)",
                            png,
                        )
                    )
        sections.append(section)
    return Report(sections, list(collection.skipped), note, title)


def write_report(report: Report, out: Path) -> list[Path]:
    """Write ``report.md``, its figures and ``report.html`` into ``out``; return the paths of
    the two reports."""
    out = Path(out)
    for section in report.sections:
        for fig in section.figures:
            runio.atomic_write_bytes(out / FIGURES_DIR / fig.name, fig.png)
    runio.atomic_write_text(out / MARKDOWN, render_markdown(report))
    runio.atomic_write_text(out / HTML, render_html(report))
    return [out / MARKDOWN, out / HTML]


def report_runs(
    paths: list[Path], out: Path, note: str = "", title: str = "retain report"
) -> tuple[Report, list[Path]]:
    """Collect, make and write in one call."""
    report = make_report(collect(paths), note=note, title=title)
    return report, write_report(report, out)
