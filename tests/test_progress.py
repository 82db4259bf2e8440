"""What a user sees while `petclf train` runs: a bar at once in a terminal, a whole-run estimate within seconds, one
line per stage when piped, the result once and the next commands; and the run clock behind the estimate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S

from petclf.progress import RunClock, stage

TINY = ["--arch", "resnet18", "--no-pretrained", "--freeze-epochs", "0", "--bs", "16", "--size", "32", "--presize",
        "40", "--workers", "0"]  # 32 px: every stage runs, each in a fraction of a second
TOOK = r"[\d.]+ (s|min|h)"  # a stage's time as fmt_secs says it: a busy machine turns 42 s into 1.6 min
STAGES = ("loading torch and fastai", "verifying images", "building the model", "lr_find", "epoch 1/2 unfrozen",
          "epoch 2/2 unfrozen", "final validation and temperature", "export", "ONNX export and check")


@pytest.fixture
def settings(tmp_path) -> Path:
    """A settings file with lr_find at its fewest steps: the stage and its bar still run, not 50 batches of it."""
    path = tmp_path / "settings.yaml"
    path.write_text("lr_find_steps: 5\n")
    return path


def env(**kw: str) -> dict[str, str]:
    """The test's environment, warnings off (they are not petclf's lines)."""
    return {**os.environ, "PYTHONWARNINGS": "ignore", **kw}


# ---------------------------------------------------------------------------------------------------- the clock


def test_run_clock_estimates_from_measured_speeds_and_priors():
    clock = RunClock()
    clock.plan("train", 10)
    clock.plan("valid", 6)
    assert clock.left() is None  # nothing timed yet: no estimate rather than a wrong one
    clock.prior["valid"] = lambda r: r["train"] / 3 if "train" in r else None
    clock.measured("train", 0.3)
    assert clock.left() == pytest.approx(10 * 0.3 + 6 * 0.1)
    clock.done("train", 10)
    assert clock.left() == pytest.approx(0.6) and "left of the run" in clock.summary()


def test_piped_stage_is_one_line_with_its_time(capsys):
    with stage("probe features", total=3, terminal=False) as s:
        for _ in range(3):
            s.advance(info="loss 0.5000")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\r" not in err
    assert re.match(r"probe features: 3/3 in \d+ s; loss 0\.5000$", err.strip())


def test_an_interrupted_stage_leaves_no_line(capsys):
    with pytest.raises(KeyboardInterrupt), stage("epoch 1/3 unfrozen", total=4, terminal=False):
        raise KeyboardInterrupt
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------- a real run


@pytest.mark.slow
def test_terminal_run_shows_a_bar_from_the_start_and_an_estimate_before_the_first_epoch(synth_dir, tmp_path,
                                                                                       settings):
    pexpect = pytest.importorskip("pexpect")
    cmd = [sys.executable, "-m", "petclf", "train", "-d", str(synth_dir), *TINY, "-e", "1", "--threads", "1",
           "--config", str(settings), "-o", str(tmp_path / "run")]
    child = pexpect.spawn(cmd[0], cmd[1:], env=env(TERM="xterm-256color", COLUMNS="160"), dimensions=(40, 160),
                          encoding="utf-8", timeout=HANG_GUARD_S)  # order is checked below, not seconds
    try:
        child.expect("━")  # rich's bar
        before_bar = child.before
        child.expect("estimated time for the whole run: ")
        before_estimate = child.before
        child.expect(r"(?<!_)loss \d\.\d{4}")  # the bar's running loss (lr_find's batches)
        child.expect("epoch 1/1 unfrozen")
        child.expect(pexpect.EOF)
        out = child.before
    finally:
        child.close(force=True)
    assert "loading torch and fastai" in before_bar, before_bar  # the first bar: while torch and fastai load
    assert "epoch 1/1" not in before_estimate  # estimated from lr_find's first batches, not after an epoch
    assert child.exitstatus == 0, out[-2000:]
    assert "petclf report --model" in out and "Traceback" not in out


@pytest.mark.slow
def test_piped_run_one_line_per_stage_result_once_next_commands(synth_dir, tmp_path, settings):
    out = tmp_path / "runs" / "run1"
    proc = subprocess.run([sys.executable, "-m", "petclf", "train", "-d", str(synth_dir), *TINY, "-e", "2",
                           "--threads", "1", "--config", str(settings), "-o", str(out)], capture_output=True,
                          text=True, env=env(),
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr  # no bar, no colour codes in a log file
    ends = [ln for ln in err if not re.match(rf"[^;]* after {TOOK}", ln)]  # a slow stage also logs as it goes
    for name in STAGES:
        assert sum(ln.startswith(name) for ln in ends) == 1, (name, proc.stderr)
    epoch = next(ln for ln in err if ln.startswith("epoch 2/2"))
    assert re.search(rf"in {TOOK}; train_loss [\d.]+ valid_loss [\d.]+ error_rate [\d.]+ accuracy [\d.]+", epoch)
    assert "left of the run" in epoch  # the estimate, revised at every stage
    assert sum("estimated time for the whole run" in ln for ln in err) == 1

    stdout = proc.stdout
    assert stdout.count("validation error") == 1 and "error" not in proc.stderr.split("final validation")[-1]
    for cmd in (f"petclf predict --model {out} photo.jpg", f"petclf report --model {out}",
                f"petclf serve --model {out}"):
        assert cmd in stdout
    assert not (tmp_path / "runs" / "latest").exists()  # the user's folder: nothing beside the run
    m = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert set(m["lr_find"]["suggestions"]) <= {"valley", "steep", "slide", "minimum"} and m["lr_find"]["why"]
    assert m["lr_find"]["used"] in ("valley", "fallback")


@pytest.mark.slow
def test_via_make_the_hint_quotes_make(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "petclf", "train"], capture_output=True, text=True, cwd=tmp_path,
                          env=env(PETCLF_VIA_MAKE="train"), timeout=HANG_GUARD_S)
    assert proc.returncode == 2 and 'run make train ARGS="--data DIR"' in proc.stderr, proc.stderr
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert re.search(r"^train:.*\n\t\$\(RUN_VIA\)=train ", makefile, re.M)  # make train sets it
