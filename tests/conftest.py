"""Shared fixtures: small synthetic Pets folders and one tiny trained run, made once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import pytest

SIZE, PRESIZE = 64, 80  # tests train at 64 px so a CPU finishes in seconds


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep verification caches out of the user's home directory."""
    os.environ["PETCLF_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright, shared by the browser tests; skipped, saying why, if missing."""
    from helpers import CHROMIUM_ARGS, chromium_path

    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium not found at /usr/bin/chromium (run `make browser` as root to install it with apt)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True, timeout=300_000)
        yield b
        b.close()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """4 breeds (2 cats, 2 dogs) x 16 clean 64 px images."""
    from petclf.synth import synth_pets

    out = tmp_path_factory.mktemp("synth")
    synth_pets(out, n_classes=4, per_class=16, size=SIZE, seed=0)
    return out


@pytest.fixture(scope="session")
def bad_synth(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A synthetic folder with every known bad file planted; returns (folder, {name: expected verdict})."""
    from petclf.synth import synth_pets

    out = tmp_path_factory.mktemp("synth_bad")
    planted = synth_pets(out, n_classes=4, per_class=12, size=SIZE, seed=1, bad=True)
    return out, planted


def tiny_config(data: Path, out: Path, **kw):
    """The one tiny training setup: resnet18 from random weights at 64 px, seconds per epoch on a CPU."""
    from petclf.config import TrainConfig

    base = dict(data=str(data), arch="resnet18", pretrained=False, epochs=3, freeze_epochs=0, lr=3e-3, bs=16,
                size=SIZE, presize=PRESIZE, workers=0, seed=42, out=str(out))
    return TrainConfig(**{**base, **kw})


class TinyRun(NamedTuple):
    """A trained run: its folder (bundle, model.onnx, metrics) and the fastai Learner that trained it."""

    run_dir: Path
    learn: Any


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synth_dir) -> TinyRun:
    """One tiny run, trained once through `petclf.train.train` and shared by predict, serve and report tests."""
    from petclf.train import train

    out = tmp_path_factory.mktemp("run")
    return TinyRun(out, train(tiny_config(synth_dir, out)).learn)


@pytest.fixture(scope="session")
def cli():
    """`cli(*args)`: the `petclf` command run in-process (typer's CliRunner); returns click's Result."""
    from typer.testing import CliRunner

    from petclf.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])
