"""The README's pictures come from a committed script that drives a real `petclf serve` and the real report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.browser
def test_make_screenshots_draws_the_demo_and_the_report(tiny_run, tmp_path):
    from helpers import chromium_path

    if chromium_path() != "/usr/bin/chromium":
        pytest.skip("Debian's Chromium not at /usr/bin/chromium (run `make browser` as root)")
    out = tmp_path / "shots"
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "make_screenshots.py"), "--model",
                           str(tiny_run.run_dir), "--out", str(out)], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("demo.png", "report.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, name


def test_make_screenshots_without_a_model_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "make_screenshots.py"), "--model",
                           str(tmp_path / "none")], capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no model at")
    assert "make demo" in proc.stderr and "Traceback" not in proc.stderr
