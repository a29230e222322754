"""A PNG screenshot of a report page in headless Chromium (Debian package ``chromium``), to see
what a reader sees; used by the tests and by hand::

    python -m retain.report.screenshot runs/quickstart/report/report.html shot.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(
    page: Path, out: Path, width: int = 1400, height: int = 2400, timeout: float = 120.0
) -> Path:
    """Render ``page`` (an HTML file) at ``width`` x ``height`` CSS pixels and write the PNG
    to ``out``. Raises RuntimeError when no browser is installed or it fails."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError("no Chromium found: install the Debian package `chromium`")
    with tempfile.TemporaryDirectory(prefix="retain-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # root in containers; the page is our own file
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={Path(out).resolve()}",
            Path(page).resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not Path(out).is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"chromium failed ({proc.returncode}): {last}")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("page", help="the HTML file")
    p.add_argument("out", help="the PNG to write")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=2400)
    args = p.parse_args(argv)
    try:
        screenshot(Path(args.page), Path(args.out), args.width, args.height)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"screenshot: error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
