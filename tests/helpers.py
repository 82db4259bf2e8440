"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")

# Debian's Chromium, driven by Playwright; never `playwright install` (it downloads a browser)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str | None:
    """Debian's Chromium binary, if installed."""
    for cand in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and Path(cand).is_file():
            return cand
    return None


# A hang guard: far beyond any wait seen on an idle machine (a server start, a tiny run: 10-60 s), so a machine
# loaded by other work is only slower, never red; a real hang still ends, saying what it waited for.
HANG_GUARD_S = 900


def start_serve(model: Path, tmp: Path, *args: str) -> tuple[subprocess.Popen, int, Path]:
    """`petclf serve --model model` in its own process as a user starts it, its cache under `tmp/cache`, once it
    listens (`wait_for_port`); (process, port, log file)."""
    port, log = free_port(), tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "PETCLF_AUTH")}
    env.update(GRADIO_TEMP_DIR=str(tmp / "cache"), PYTHONWARNINGS="ignore")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "petclf", "serve", "--model", str(model), "--port", str(port),
                                 *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, log.read_text)
    return proc, port, log


def wait_for(what: str, ready: Callable[[], T], proc: subprocess.Popen | None = None, log: Callable[[], str] = str,
             timeout: float = HANG_GUARD_S, every: float = 0.3) -> T:
    """Poll `ready()` until it returns something truthy (returned); `pytest.fail` naming `what` with the end of
    `log()` if `proc` exits first or `timeout` seconds pass. `ready` may raise OSError or ValueError (not up yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if got := ready():
                return got
        except (OSError, ValueError):
            pass
        exited = proc is not None and proc.poll() is not None
        if exited or time.monotonic() > deadline:
            if proc is not None and not exited:
                proc.kill()
            why = f"exited with {proc.returncode}" if exited else f"nothing after {timeout:.0f} s (hang guard)"
            pytest.fail(f"waiting for {what}: {why}\n{log()[-3000:]}", pytrace=False)
        time.sleep(every)


def wait_for_port(port: int, proc: subprocess.Popen, log: Callable[[], str] = str) -> None:
    """Wait (`wait_for`) until the server `proc` started listens on 127.0.0.1:`port`."""
    def listening() -> bool:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True

    wait_for(f"a server on port {port}", listening, proc, log)


class Output:
    """A process's output (one pipe), read by a thread as it comes, so a test can wait for a line without
    blocking on a pipe that may never close."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def closed(self) -> str:
        """Everything, once the process closed the pipe (it exited)."""
        wait_for("the end of the output", lambda: not self.reader.is_alive(), log=self.text)
        return self.text()

    def text(self) -> str:
        """Everything read so far."""
        return "".join(self.lines)

    def has(self, part: str) -> bool:
        """True once a line holding `part` was read."""
        return any(part in line for line in self.lines)

