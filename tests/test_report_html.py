"""The HTML report as a reader sees it: headless Chromium (Debian package `chromium`) renders
its tables and its embedded images."""

from __future__ import annotations

import os
import re

import pytest
from matplotlib.image import imread

from retain.cli import main
from retain.report.screenshot import find_browser, screenshot
from tests.test_report import FT_ROWS, write_run

# CI installs Chromium (Makefile `data`) and sets RETAIN_REQUIRE_BROWSER=1 (.ci/run): there a
# missing browser is a failure, not a skip; elsewhere the test skips without one.
REQUIRED = os.environ.get("RETAIN_REQUIRE_BROWSER") == "1"
needs_browser = pytest.mark.skipif(
    find_browser() is None and not REQUIRED,
    reason="no Chromium: `apt-get install chromium` (Debian package)",
)


def _colourful(png) -> float:
    """Fraction of strongly coloured pixels (the plots; the tables are black, grey, white)."""
    rgb = imread(png)[..., :3]
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 0.3).mean())


def _dark(png) -> float:
    rgb = imread(png)[..., :3]
    return float((rgb.max(axis=2) < 0.35).mean())


@needs_browser
def test_chromium_renders_the_tables_and_the_embedded_images(tmp_path):
    runs = tmp_path / "runs"
    for seed, rows in FT_ROWS.items():
        write_run(runs / f"ft-{seed}", "finetune", seed, rows, rows)
        write_run(runs / f"ewc-{seed}", "ewc", seed, rows[::-1], rows[::-1])
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    page = out / "report.html"
    shot = screenshot(page, tmp_path / "report.png", width=1200, height=1600)
    assert imread(shot).shape[:2] == (1600, 1200)

    # the same page without its images: the colour in the screenshot is the plots'
    html = page.read_text()
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", html))
    bare_shot = screenshot(bare, tmp_path / "bare.png", width=1200, height=1600)
    assert _colourful(shot) > 0.01, _colourful(shot)
    assert _colourful(bare_shot) < 0.002, _colourful(bare_shot)
    # the tables: text and borders in both; nothing at all on a blank page
    assert _dark(bare_shot) > 0.002
    empty = tmp_path / "empty.html"
    empty.write_text("<!DOCTYPE html><html><body></body></html>")
    assert _dark(screenshot(empty, tmp_path / "empty.png", width=1200, height=1600)) == 0.0
