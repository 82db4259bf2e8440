"""The `petclf` command as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S

PETCLF = [sys.executable, "-m", "petclf"]


def run(*args: str, cwd: Path | None = None, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*PETCLF, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def test_help_lists_commands_and_version():
    out = run("--help")
    assert out.returncode == 0 and "data" in out.stdout
    assert run("--version").stdout.startswith("petclf ")
    sub = run("data", "--help")
    assert "check" in sub.stdout and "synth" in sub.stdout


def test_data_check_names_every_planted_file_and_counts_classes(bad_synth, tmp_path):
    root, planted = bad_synth
    out = run("data", "check", "--data", str(root), "--report", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for name in planted:
        assert name in out.stdout, name
    table = out.stdout[out.stdout.index("class "):]
    for breed in ("Abyssinian", "Bengal", "American Bulldog", "American Pit Bull Terrier"):  # names for people
        assert breed in table, table
    assert (tmp_path / "data_report.json").is_file()


def test_missing_data_folder_exits_2_with_one_line():
    out = run("data", "check", "--data", "/nonexistent")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_network_no_local_data_fails_naming_data_flag_without_a_download(tmp_path):
    out = run("data", "check", cwd=tmp_path)  # the network check is bounded (io.NETWORK_TIMEOUT), not timed here
    if out.returncode == 0:
        pytest.fail("expected no Pets data and no network on this machine")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot be downloaded (no network)" in out.stderr and "--data" in out.stderr
    assert not (tmp_path / "data").exists()  # no download was started


def test_one_class_is_refused_with_exit_2(tmp_path):
    assert run("data", "synth", str(tmp_path), "--classes", "2", "--per-class", "3", "--size", "16").returncode == 0
    for p in tmp_path.glob("Abyssinian_*"):
        p.unlink()
    out = run("data", "check", "--data", str(tmp_path))
    assert out.returncode == 2 and "one class" in out.stderr


def test_bad_usage_exits_2():
    assert run("data", "check", "--no-such-flag").returncode == 2
    assert run("data", "synth", "/tmp/x", "--classes", "99").returncode == 2


def test_help_lists_commands_in_workflow_order():
    out = run("--help").stdout
    where = [out.index(f"│ {name} ") for name in ("data", "train", "lr-find", "predict", "report", "serve", "export",
                                                    "demo")]
    assert where == sorted(where), out


@pytest.mark.slow
def test_model_takes_the_folder_its_model_json_or_latest(tiny_run, tmp_path):
    photo = next(Path(json.loads((tiny_run.run_dir / "model.json").read_text())["data"]["root"]).glob("*.jpg"))
    for model in (tiny_run.run_dir, tiny_run.run_dir / "model.json"):
        out = run("predict", "--model", str(model), str(photo), "-f", "csv")
        assert out.returncode == 0 and photo.name in out.stdout, out.stderr
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "latest").symlink_to(tiny_run.run_dir, target_is_directory=True)
    out = run("predict", "--model", "latest", str(photo), "-f", "csv", cwd=tmp_path)  # exports/latest
    assert out.returncode == 0 and photo.name in out.stdout, out.stderr
