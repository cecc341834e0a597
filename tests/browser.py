"""Headless Debian Chromium for UI tests: screenshots and the rendered DOM of a page.

Every call starts a fresh browser with its own profile directory, no network services of
its own (no sync, updates or QUIC), and lets the page's scripts run for a fixed budget of
virtual time before capturing, so a single-page app such as Dagster's UI has rendered.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BUDGET_MS = 20000
WINDOW = "1600,1000"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError(
            "Debian chromium is not installed; run scripts/system-packages.sh "
            "(apt-get install -y --no-install-recommends chromium)"
        )
    return found


def _run(url: str, *mode: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW}",
                f"--virtual-time-budget={BUDGET_MS}",
                *mode,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def screenshot(url: str, target: Path) -> Path:
    """Save a PNG of ``url`` to ``target`` and return it (raises with chromium's output)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    done = _run(url, f"--screenshot={target}")
    if not target.exists() or target.read_bytes()[:8] != PNG_SIGNATURE:
        raise AssertionError(f"chromium wrote no screenshot of {url}:\n{done.stderr[-2000:]}")
    return target


def rendered_dom(url: str) -> str:
    """The page's DOM after its scripts ran, as HTML."""
    done = _run(url, "--dump-dom")
    if done.returncode != 0 or "<html" not in done.stdout:
        raise AssertionError(f"chromium could not render {url}:\n{done.stderr[-2000:]}")
    return done.stdout
