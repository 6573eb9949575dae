"""Run ``stead`` in a subprocess: the CLI and ``stead serve`` as a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"Uvicorn running on (http://\S+)")


def stead_command() -> list[str]:
    """The installed ``stead`` console script (next to this interpreter)."""
    script = Path(sys.executable).parent / "stead"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from stead.cli import main; main()"]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: this one, the repo on PYTHONPATH (for tests._apps)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class Server:
    """``stead serve ... --port 0`` in a subprocess; ``url`` once it listens.

    Leaving the ``with`` block stops it and checks its exit status is ``exit_status``.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        exit_status: int = 0,
        wait_listening: bool = True,
    ) -> None:
        self.args = [*stead_command(), *args, "--port", "0"]
        self.env = child_env(env)
        self.exit_status = exit_status
        self.wait_listening = wait_listening  # False: return from ``with`` at once
        self.url = ""
        self.returncode: int | None = None
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def __enter__(self) -> Server:
        self._process = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.wait_listening:
            return self
        try:
            match = _LISTENING.search(self.wait_for_output("Uvicorn running on"))
        except BaseException:
            self.stop(signal.SIGKILL)  # never leave a server behind
            raise
        assert match is not None
        self.url = match.group(1)
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.returncode = self._process.wait()
            self._changed.notify_all()

    def wait_for_output(self, text: str, timeout: float = 60) -> str:
        """Wait until ``text`` was printed (``AssertionError`` if the process ends first)."""
        with self._changed:
            done = self._changed.wait_for(
                lambda: text in "".join(self._lines) or self.returncode is not None, timeout
            )
            output = "".join(self._lines)
        if text not in output:
            raise AssertionError(f"{text!r} not printed (done={done}); output:\n{output}")
        return output

    def send_line(self, line: str) -> None:
        """Write ``line`` and a newline to the process's stdin."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (without waiting for the process to end)."""
        assert self._process is not None
        self._process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        """The exit status, once the process ended by itself (``AssertionError`` after
        ``timeout`` seconds, with the output so far)."""
        assert self._process is not None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s:\n{self.output}") from None

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self._process is not None and self._reader is not None
        if self._process.poll() is None:
            self._process.send_signal(sig)
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            code = self._process.wait()
        self._reader.join(timeout)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        return code

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        code = self.stop()
        if exc_type is None:
            assert code == self.exit_status, f"stead serve exited with {code}:\n{self.output}"
