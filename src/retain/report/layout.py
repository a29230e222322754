"""The cells of a paper-style results table, shared by the Markdown, HTML and terminal output.

Columns: method (label), seeds, then ACC, BWT, FWT and forgetting for each setting some group
reports (task-aware, task-agnostic), CAP when some group reports it, and training time; after
the seeds, ``heads``: the training protocol of the row (:mod:`retain.report.protocol`).
Accuracies are percent, mean ± sample std over seeds (a single seed shows the mean only);
``n/a`` where a metric is undefined (a method without task-agnostic predictions, CAP of an
unmasked method). The best mean of each ACC column is marked (task-agnostic ACC only when the
rows with task-agnostic numbers share their heads); BWT, FWT and forgetting are not ranked (a
method that learns little forgets little: its BWT is no merit). A group whose runs
diverged shows ``diverged`` in its accuracy cells and is never marked.
"""

from __future__ import annotations

from dataclasses import dataclass

from retain.report.summary import SETTINGS, Stat, Table, format_value

NAMES = {"acc": "ACC", "bwt": "BWT", "fwt": "FWT", "forgetting": "Forg."}
#: the metrics whose best mean is marked (+1: higher is better)
RANKED = {"acc": 1}
SETTING_NAMES = {"task_aware": "task-aware", "task_agnostic": "task-agnostic"}
NA = "n/a"
HEADS = "heads"
DIVERGED = "diverged"


@dataclass
class Cell:
    text: str
    best: bool = False


@dataclass
class Layout:
    """Column spans (title, width) over the headers, the headers, and one row per group."""

    spans: list[tuple[str, int]]
    headers: list[str]
    rows: list[list[Cell]]


def _best(stats: list[Stat | None], sign: int) -> set[int]:
    vals = [(sign * s.mean, i) for i, s in enumerate(stats) if s is not None]
    if len(vals) < 2:
        return set()
    top = max(v for v, _ in vals)
    return {i for v, i in vals if v == top}


def layout(table: Table, with_time: bool = True) -> Layout:
    """The table's cells (see the module docstring)."""
    groups = table.groups
    settings = [s for s in SETTINGS if any(g.has_setting(s) for g in groups)] or [SETTINGS[0]]
    spans: list[tuple[str, int]] = [("", 3)]
    headers = ["method", "seeds", HEADS]
    columns: list[list[Cell]] = [
        [Cell(g.label) for g in groups],
        [Cell(str(len(g.runs))) for g in groups],
        [Cell(g.protocol or NA) for g in groups],
    ]
    for setting in settings:
        spans.append((SETTING_NAMES[setting], len(NAMES)))
        for name, title in NAMES.items():
            headers.append(title)
            stats = [g.metric(setting, name) for g in groups]
            ranked = name in RANKED and not (setting == "task_agnostic" and mixed_heads(table))
            best = _best(stats, RANKED[name]) if ranked else set()
            columns.append(
                [
                    Cell(DIVERGED if g.diverged else NA if s is None else s.format(), i in best)
                    for i, (g, s) in enumerate(zip(groups, stats))
                ]
            )
    extra = []
    if table.has_capacity:
        extra.append("CAP (%)")
        columns.append(
            [Cell(NA if (s := g.capacity()) is None else s.format(digits=1)) for g in groups]
        )
    if with_time and table.has_time:
        extra.append("time (s)")
        columns.append(
            [
                Cell(NA if (s := g.seconds()) is None else s.format(scale=1.0, digits=1))
                for g in groups
            ]
        )
    if extra:
        spans.append(("", len(extra)))
        headers += extra
    rows = [[col[i] for col in columns] for i in range(len(groups))]
    return Layout(spans, headers, rows)


def settings_line(table: Table) -> str:
    """The settings every group of the table shares, as ``key=value`` pairs."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in table.common.items())


def seeds_line(table: Table) -> str:
    """Which seeds each group holds (``finetune: 0, 1, 2``)."""
    return "; ".join(f"{g.label}: {', '.join(str(s) for s in g.seeds)}" for g in table.groups)


def mixed_heads(table: Table) -> bool:
    """Whether the groups with task-agnostic numbers trained on different heads: then their
    task-agnostic ACC is not ranked (it does not compare)."""
    return len({g.protocol for g in table.groups if g.has_setting("task_agnostic")}) > 1


def heads_line(table: Table) -> str:
    """What the ``heads`` column means, and which rows differ in it (their task-agnostic
    numbers do not compare)."""
    by: dict[str, list[str]] = {}
    for g in table.groups:
        by.setdefault(g.protocol or NA, []).append(g.label)
    meaning = (
        "heads: the outputs the training loss saw (task: the current task's; seen: every "
        "class seen so far)"
    )
    if len(by) == 1:
        return f"{meaning}; {next(iter(by))} in every row."
    rows = "; ".join(f"{p}: {', '.join(labels)}" for p, labels in by.items())
    unranked = " (their ACC is not ranked)" if mixed_heads(table) else ""
    return (
        f"{meaning}. Rows differ in heads ({rows}): task-agnostic numbers compare only between "
        f"rows with the same heads{unranked}."
    )
