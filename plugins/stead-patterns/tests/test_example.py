"""examples/api_gateway runs as its README says, and its limits survive a second run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "api_gateway" / "gateway.py"


def run(data_dir: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.splitlines()


def test_gateway_demo_limits_each_user_and_remembers(tmp_path: Path) -> None:
    data_dir = tmp_path / "gateway-data"
    first = run(data_dir)
    assert len(first) == 12
    for user, lines in (("alice", first[0:4]), ("bob", first[4:8]), ("carol", first[8:12])):
        assert all(line.startswith(f"{user}: ") for line in lines)
        assert [line.split()[1] for line in lines] == ["200", "200", "200", "429"]
        assert lines[3].endswith("(Retry-After: 60)")
    assert '"message":"Hey there, alice!"' in first[0]
    assert '"remaining":2' in first[0] and '"remaining":0' in first[2]

    second = run(data_dir)
    assert [line.split()[1] for line in second] == ["429"] * 12
