"""Helpers for tests that kill real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_child(module: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -m module args`` with stdout piped, from the repository root."""
    # The repository (for tests._children) ahead of whatever the caller had.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def wait_for_line(child: subprocess.Popen[str], expected: str, timeout: float = 30) -> None:
    """Read lines until ``expected``; fail if the child dies or the timeout passes."""
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            raise AssertionError(f"child exited with {child.wait()} before printing {expected!r}")
        if line.strip() == expected:
            return
    raise AssertionError(f"child did not print {expected!r} within {timeout}s")


def kill_after(child: subprocess.Popen[str], delay: float) -> list[str]:
    """SIGKILL ``child`` after ``delay`` seconds; return every complete line it printed."""
    assert child.stdout is not None
    timer = threading.Timer(delay, lambda: os.kill(child.pid, signal.SIGKILL))
    timer.start()
    with child.stdout:
        lines = [line for line in child.stdout if line.endswith("\n")]
    child.wait()
    timer.cancel()
    return lines
