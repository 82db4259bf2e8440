"""An interrupted run of either recipe, by SIGINT, SIGTERM or kill -9 at any stage, is never locked out: the same
command starts it again or `--resume` continues it (BAD_INPUTS rows 22, 24, 39). Real `petclf train` processes on
tiny data, stopped once their output shows the stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Output, wait_for

from petclf.run import has_checkpoint, unstarted_run

PROBE = ["--recipe", "probe"]  # the probe's features at 64 px (config file below)
FASTBOOK = ["--recipe", "fastbook", "--epochs", "2", "--freeze-epochs", "0", "--bs", "16", "--size", "64",
            "--presize", "80"]


def train_args(data: Path, out: Path, recipe: list[str], settings: Path) -> list[str]:
    """The `petclf train` arguments of one tiny run: resnet18 from random weights on one thread."""
    return ["train", "--data", str(data), "--arch", "resnet18", "--no-pretrained", *recipe, "--workers", "0",
            "--threads", "1", "--config", str(settings), "--out", str(out)]


def stop_at(args: list[str], after: str, sig: int) -> tuple[int, str]:
    """Start `petclf` with `args`, send `sig` once a line holding `after` is printed (the next stage is then
    running); (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "petclf", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    err = Output(proc.stderr)
    wait_for(f"'{after}' from petclf train", lambda: err.has(after), proc, err.text)
    proc.send_signal(sig)
    wait_for("petclf train to stop", lambda: proc.poll() is not None, log=err.text)
    return proc.returncode, err.closed()


@pytest.fixture
def settings(tmp_path) -> Path:
    """A settings file: the probe at 64 px, lr_find at its fewest steps."""
    path = tmp_path / "settings.yaml"
    path.write_text("probe_size: 64\nlr_find_steps: 5\n")
    return path


def finished(cli, args: list[str]) -> None:
    """Run `petclf` with `args` in-process and check it completed a run."""
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert "run folder:" in res.output


@pytest.mark.slow
def test_sigterm_in_the_probe_stage_is_started_again_by_the_same_command(cli, synth_dir, tmp_path, settings):
    out = tmp_path / "run"
    args = train_args(synth_dir, out, PROBE, settings)
    code, err = stop_at(args, "probe features", signal.SIGTERM)  # handled as Ctrl-C is
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted before the first checkpoint" in err and "same command" in err
    assert not has_checkpoint(out)
    finished(cli, args)
    assert (out / "metrics.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("recipe, after", [(PROBE, "probe features"), (FASTBOOK, "building the model")],
                         ids=["probe-stage", "lr_find-stage"])
def test_killed_before_the_first_checkpoint_runs_again_by_either_command(cli, synth_dir, tmp_path, settings,
                                                                         recipe, after):
    out = tmp_path / "run"
    args = train_args(synth_dir, out, recipe, settings)
    code, _ = stop_at(args, after, signal.SIGKILL)
    assert code == -signal.SIGKILL and not has_checkpoint(out)
    assert unstarted_run(out)  # its config.yaml marks it as petclf's: not "files it did not make"
    if recipe is PROBE:
        finished(cli, ["train", "--resume", out, "--workers", "0", "--threads", "1"])
    else:
        finished(cli, args)  # the same command
    assert (out / "metrics.json").is_file() and (out / "model.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("recipe, after, sig", [(FASTBOOK, "epoch 1/2", signal.SIGKILL),
                                                (PROBE, "export (model", signal.SIGTERM)],
                         ids=["epoch-stage-kill", "export-stage-sigterm"])
def test_stopped_after_a_checkpoint_resumes(cli, synth_dir, tmp_path, settings, recipe, after, sig):
    out = tmp_path / "run"
    args = train_args(synth_dir, out, recipe, settings)
    code, err = stop_at(args, after, sig)
    assert code == (130 if sig == signal.SIGTERM else -sig) and "Traceback" not in err, err
    if sig == signal.SIGTERM:
        assert f"--resume {out}" in err
    assert has_checkpoint(out) and not (out / "metrics.json").exists()
    res = cli(*args)  # the same command points at --resume, and changes nothing
    assert res.exit_code == 2 and f"--resume {out}" in res.output, res.output
    finished(cli, ["train", "--resume", out, "--workers", "0", "--threads", "1"])
    assert (out / "metrics.json").is_file() and (out / "model.json").is_file()
