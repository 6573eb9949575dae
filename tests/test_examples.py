"""The examples under examples/ run as their READMEs say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_chat_room_history_survives_a_restart(tmp_path: Path) -> None:
    script = ROOT / "examples" / "chat_room" / "chat_room.py"
    data_dir = str(tmp_path / "chat")
    first = subprocess.run([sys.executable, script, data_dir], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 3
    second = subprocess.run([sys.executable, script, data_dir], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert len(second.stdout.splitlines()) == 6
    texts = {line.split(": ", 1)[1] for line in second.stdout.splitlines()}
    assert {"hello", "hi ada", "o/"} <= texts
