"""What a report holds, independent of its format: tables, figures, skipped folders, a note."""

from __future__ import annotations

from dataclasses import dataclass, field

from retain.report.runs import Skipped
from retain.report.summary import Table


@dataclass
class Figure:
    """A PNG with a file name (used by the Markdown report) and a caption."""

    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    """One benchmark: its table and its figures."""

    table: Table
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Report:
    sections: list[Section]
    skipped: list[Skipped] = field(default_factory=list)
    #: free text shown above the tables (e.g. "reduced setting: ...")
    note: str = ""
    title: str = "retain report"
