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
    for breed in ("Abyssinian", "Bengal", "American Bulldog", "American Pit Bull Terrier"):  # names, not ids
        assert breed in table, table
    assert (tmp_path / "data_report.json").is_file()


def test_missing_data_folder_exits_2_with_one_line():
    out = run("data", "check", "--data", "/nonexistent")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_network_no_local_data_fails_naming_data_flag_without_a_download(tmp_path):
    out = run("data", "check", cwd=tmp_path)  # the network check is bounded (io.NETWORK_TIMEOUT), not timed
    if out.returncode == 0:
        pytest.fail("expected no Pets data and no network on this machine")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot be downloaded (no network)" in out.stderr and "--data" in out.stderr
    assert not (tmp_path / "data").exists()  # no download was started


def test_one_class_is_refused_with_exit_2(tmp_path):
    made = run("data", "synth", str(tmp_path), "--classes", "2", "--per-class", "3", "--size", "16")
    assert made.returncode == 0
    for p in tmp_path.glob("Abyssinian_*"):
        p.unlink()
    out = run("data", "check", "--data", str(tmp_path))
    assert out.returncode == 2 and "one class" in out.stderr


HEAVY = ("torch", "fastai", "timm", "gradio")  # what a plain mistake must not wait for


@pytest.mark.parametrize("args, says", [
    (["train", "--data", "{tmp}/missing"], "data folder not found"),
    (["lr-find", "--data", "{tmp}/missing"], "data folder not found"),
    (["serve", "--model", "{tmp}/missing"], "no model at"),
    (["report", "--model", "{tmp}"], "is not a petclf model folder"),
    (["predict", "{tmp}/photo.jpg", "--model", "{tmp}/missing"], "no such file or folder"),
    (["serve", "--port", "99999", "--model", "{tmp}/missing"], "is not a valid port"),
])
def test_plain_mistakes_are_one_line_exit_2_before_torch_loads(args, says, tmp_path):
    """Checked before torch, fastai or Gradio load (they took ~10 s idle, a minute under load, to say it): the
    child's own import log (-X importtime) shows none of them; timings: benchmarks/bench_cold_errors.py."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-X", "importtime", "-m", "petclf", *(a.format(tmp=tmp_path) for a in args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    log = out.stderr.splitlines()
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in log if ln.startswith("import time:")}
    said = [ln for ln in log if not ln.startswith("import time:")]
    assert out.returncode == 2 and len(said) == 1 and said[0].startswith("error: ") and says in said[0], said
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_a_single_missing_photo_is_one_line_but_a_folder_keeps_its_error_rows(tiny_run, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "bad.jpg").write_bytes(b"not an image")
    one = run("predict", str(tmp_path / "gone.jpg"), "--model", str(tiny_run.run_dir))
    assert one.returncode == 2
    assert one.stderr.strip() == f"error: no such file or folder: {tmp_path / 'gone.jpg'}"
    rows = run("predict", str(tmp_path / "photos"), "--model", str(tiny_run.run_dir), "-f", "csv")
    assert rows.returncode == 1 and "bad.jpg" in rows.stdout and "0 predicted, 1 failed" in rows.stderr


def test_bad_usage_exits_2():
    assert run("data", "check", "--no-such-flag").returncode == 2
    assert run("data", "synth", "/tmp/x", "--classes", "99").returncode == 2


def test_help_lists_commands_in_workflow_order():
    out = run("--help").stdout
    order = ("data", "train", "lr-find", "predict", "report", "serve", "export", "demo")
    where = [out.index(f"│ {name} ") for name in order]
    assert where == sorted(where), out


@pytest.mark.slow
def test_model_takes_the_folder_its_model_json_or_latest(tiny_run, tmp_path):
    manifest = json.loads((tiny_run.run_dir / "model.json").read_text())
    photo = next(Path(manifest["data"]["root"]).glob("*.jpg"))
    for model in (tiny_run.run_dir, tiny_run.run_dir / "model.json"):
        out = run("predict", "--model", str(model), str(photo), "-f", "csv")
        assert out.returncode == 0 and photo.name in out.stdout, out.stderr
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "latest").symlink_to(tiny_run.run_dir, target_is_directory=True)
    out = run("predict", "--model", "latest", str(photo), "-f", "csv", cwd=tmp_path)  # exports/latest
    assert out.returncode == 0 and photo.name in out.stdout, out.stderr


def _help(command: str) -> str:
    """`petclf COMMAND --help` as one line of text: rich's box and wrapping taken out."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "300"}  # wide: no option's help is wrapped
    out = subprocess.run([*PETCLF, command, "--help"], capture_output=True, text=True, env=env,
                         timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr
    return " ".join(ln.strip("│╭╮╰╯─ ") for ln in out.stdout.splitlines())


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_help_shows_every_setting_with_its_flag_choices_and_default(command):
    """The flags are made from TrainConfig's fields: each one's flag, choices and default are in --help."""
    from petclf.cli_shell import option_names, shown_default
    from petclf.config import choices_text, settings

    text = _help(command)
    for f in settings():
        if command == "lr-find" and not f.metadata["lr_find"]:
            assert f"--{f.name.replace('_', '-')} " not in text.replace("--out ", ""), f.name
            continue
        for flag in option_names(f.name)[0].split("/") + option_names(f.name)[1:]:
            assert f"{flag} " in text, (f.name, flag)
        if f.metadata["choices"]:
            assert f"<{choices_text(f.name)}>" in text, f.name
        if shown_default(f.name) is not None:
            assert f"[default: ({shown_default(f.name)})]" in text, f.name


def test_resume_help_names_exactly_the_settings_resume_may_change():
    from petclf.cli_shell import option_names
    from petclf.config import resumable, settings

    resume = _help("train").split("Continue the run in this folder")[1]
    said = resume.split("Only ")[1].split(" may change")[0]
    assert said == ", ".join(option_names(k)[0] for k in resumable())
    assert set(resumable()) == {f.name for f in settings() if f.metadata["resume"]}
    assert "epochs" not in resumable() and "device" in resumable()


def test_train_help_says_what_the_default_recipe_does():
    from petclf.config import TrainConfig

    text = _help("train")
    assert f"From {TrainConfig().small_data} training photos per class" in text and "probe" in text
