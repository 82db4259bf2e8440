"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def start_serve(model: Path, tmp: Path, *args: str, limit: float = 300) -> tuple[subprocess.Popen, int, Path]:
    """`petclf serve --model model` in its own process as a user starts it, its cache under `tmp/cache`, once it
    listens; (process, port, log file). Fails, with the log's end, if it exits or `limit` seconds pass first."""
    import pytest

    port, log = free_port(), tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("GRADIO_ANALYTICS_ENABLED", "PETCLF_AUTH")}
    env.update(GRADIO_TEMP_DIR=str(tmp / "cache"), PYTHONWARNINGS="ignore")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "petclf", "serve", "--model", str(model), "--port", str(port),
                                 *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return proc, port, log
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"server did not start within {limit:.0f} s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
