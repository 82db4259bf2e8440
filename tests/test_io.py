"""petclf.io: outputs never replace what is not a regular file (BAD_INPUTS rows 23, 31, 38); a failed write is one
line and a non-zero exit."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S

from petclf.errors import PetclfError
from petclf.io import write_atomic


def full_device(where: Path) -> Path:
    """A device node like /dev/full (every write: ENOSPC) inside the test's folder, so a petclf that replaced it
    would replace only this copy; skipped, saying why, where device nodes cannot be made (no root)."""
    node = where / "full"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return node


@pytest.fixture
def photo(tiny_run) -> Path:
    """One of the tiny run's validation photos."""
    return Path(tiny_run.learn.dls.valid_ds.items[0])


@pytest.mark.parametrize("kind", ["fifo", "folder", "link to a fifo"])
def test_atomic_writes_never_replace_what_is_not_a_regular_file(tmp_path, kind):
    target = tmp_path / "report.html"
    if kind == "folder":
        target.mkdir()
    else:
        os.mkfifo(tmp_path / "pipe")
        target = tmp_path / "pipe" if kind == "fifo" else target
        if kind == "link to a fifo":
            target.symlink_to(tmp_path / "pipe")
    with pytest.raises(PetclfError, match=r"cannot write .*: it is a (FIFO|folder), not a regular file"):
        write_atomic(target, "<html>")
    assert (tmp_path / "pipe").is_fifo() if kind != "folder" else target.is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_predict_out_writes_a_fifo_as_a_stream(cli, tiny_run, photo, tmp_path):
    fifo = tmp_path / "results.csv"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    res = cli("predict", photo, "--model", tiny_run.run_dir, "--format", "csv", "--out", fifo)
    assert res.exit_code == 0, res.output
    assert fifo.is_fifo(), "the FIFO was replaced by a file"
    reader.join(60)  # written already: the reader has only to finish (milliseconds)
    assert got and got[0].startswith(b"file,") and photo.name.encode() in got[0]


def test_predict_out_through_a_link_keeps_the_link(cli, tiny_run, photo, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text("old")
    (tmp_path / "link.json").symlink_to(mine)
    res = cli("predict", photo, "--model", tiny_run.run_dir, "--format", "json", "--out", tmp_path / "link.json")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "link.json").is_symlink() and photo.name in mine.read_text()


def test_predict_out_to_a_full_device_fails_in_one_line_and_keeps_the_device(cli, tiny_run, photo, tmp_path):
    full = full_device(tmp_path)
    res = cli("predict", photo, "--model", tiny_run.run_dir, "--out", full)
    assert res.exit_code == 1 and res.output.strip() == f"error: disk full writing {full}; free some space and " \
        "run again", res.output
    assert full.is_char_device()


def test_predict_to_a_full_stdout_fails_in_one_line(tiny_run, photo, tmp_path):
    with open(full_device(tmp_path), "wb") as stdout:
        r = subprocess.run([sys.executable, "-m", "petclf", "predict", str(photo), "--model", str(tiny_run.run_dir)],
                           stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=HANG_GUARD_S,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: disk full writing standard output; free some space and run again"], r.stderr
