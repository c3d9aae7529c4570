"""Debian's Chromium, driven by Playwright in tests (never `playwright install`: no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
MISSING = (f"{CHROMIUM} is absent (apt-get install chromium; ./dev.sh test installs it)"
           if not Path(CHROMIUM).exists() else "")
# headless, and quiet: no network of its own beyond the pages a test opens
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync")


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a started ``sync_playwright()`` (close it after)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=list(ARGS))
