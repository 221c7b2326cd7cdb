"""Loading the ``conveyor`` CLI starts no process of its own: ``conveyor demo --api-url``
promises to start nothing, and a command that forks at import pays for it every time."""

from __future__ import annotations

import subprocess
import sys

# records every process creation Python's audit hooks see, then loads the CLI
LOAD_THE_CLI = """
import sys
started = []
def note(event, args):
    if event in ("subprocess.Popen", "os.posix_spawn", "os.fork", "os.forkpty", "os.system"):
        started.append(f"{event} {args[:2]!r}")
sys.addaudithook(note)
import conveyor.cli.main
print("\\n".join(started))
"""


def test_loading_the_cli_starts_no_process() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_THE_CLI],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == ""
