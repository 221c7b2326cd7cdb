"""Headless Chromium for tests: a page's DOM after its scripts ran, and its screenshot.

Chromium resolves no host name but reaches 127.0.0.1, so a page that needs anything from the
internet (a CDN, web fonts) misses it here as it would on a machine without internet access.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1280, 1600)
# scripts run in virtual time, which stands still while the page loads over the network: a
# busy machine makes a run slower, not shorter
VIRTUAL_TIME_MS = 20_000
RUN_TIMEOUT_SECONDS = 120


def rendered_dom(url: str, profile: Path) -> str:
    """The DOM of ``url`` once its scripts have run, as HTML ("" if Chromium hung)."""
    return _run_chromium(url, profile, "--dump-dom")


def screenshot(url: str, profile: Path, path: Path) -> Path:
    """A PNG of ``url``'s first ``WINDOW`` once its scripts have run, written to ``path``."""
    width, height = WINDOW
    _run_chromium(
        url, profile, "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={path}"
    )
    return path


def _run_chromium(url: str, profile: Path, *options: str) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--disable-gpu",
        "--no-sandbox",  # tests run as root
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        *options,
        url,
    ]
    # its own session, so that a run past its deadline ends with every process it started
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        output = ""  # nothing rendered: the caller polls again until its own deadline
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    return output
