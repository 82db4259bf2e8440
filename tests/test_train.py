"""petclf.train: the run folder, the bundle it exports, resume after an interrupt, the probe recipe, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import PRESIZE, SIZE, tiny_config
from helpers import HANG_GUARD_S, wait_for
from stop import StopAfter

from petclf.config import TrainConfig
from petclf.device import default_workers
from petclf.errors import PetclfError
from petclf.finetune import plan_schedule
from petclf.lrfind import lr_find_steps
from petclf.recipe import choose_recipe
from petclf.run import Phase, resume_config
from petclf.train import train, train_summary

RUN_FILES = ("model.safetensors", "model.json", "config.yaml", "metrics.json", "lr_find.png", "export.pkl",
             "data_report.json")  # a probe run writes oof.json instead of lr_find.png


def tiny_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    """The shared tiny setup with 1 frozen + 2 unfrozen epochs on one thread."""
    return tiny_config(data, out, **{"epochs": 2, "freeze_epochs": 1, "threads": 1, **kw})


def valid_probs(learn) -> tuple[np.ndarray, list]:
    """The Learner's own validation probabilities, and the validation items in order."""
    probs, _ = learn.get_preds(ds_idx=1)
    return probs.numpy(), list(learn.dls.valid.items)


def bundle_probs(run_dir: Path, learn) -> np.ndarray:
    """The same validation batches through the network rebuilt from the bundle (no pickle)."""
    from petclf.bundle import load_network

    net, _ = load_network(run_dir)
    with torch.no_grad():
        return torch.cat([net(xb).softmax(-1) for xb, _ in learn.dls.valid]).numpy()


# ---------------------------------------------------------------------------------------------------- pure logic


def test_lr_find_steps_shrink_on_small_data():
    assert lr_find_steps(3) == 50  # small data: batches repeat, enough steps to place a valley
    assert lr_find_steps(30) == 60
    assert lr_find_steps(185) == 100


def test_recipe_choice():
    small, large = {"a": 8, "b": 9}, {"a": 150, "b": 160}
    assert choose_recipe(TrainConfig(), small, pretrained=True) == "probe"
    assert choose_recipe(TrainConfig(), large, pretrained=True) == "fastbook"
    assert choose_recipe(TrainConfig(), small, pretrained=False) == "fastbook"
    assert choose_recipe(TrainConfig(recipe="probe"), large, pretrained=True) == "probe"


def test_every_recipe_answers_the_whole_seam():
    import petclf.train  # noqa: F401 - the recipes register on import
    from petclf.config import CHOICES
    from petclf.recipe import RECIPES, Recipe

    assert set(RECIPES) == {c.value for c in CHOICES["recipe"]} - {"auto"}  # --recipe names what is registered
    for cls in RECIPES.values():
        for method in ("head_spec", "start", "measure", "fitted_detector", "fitted_open_set"):
            assert getattr(cls, method) is not getattr(Recipe, method), (cls.name, method)


def test_default_workers():
    assert default_workers("cpu", cores=2) == 0 and default_workers("cuda", cores=4) == 4
    assert default_workers("cuda", cores=16) == 8


def test_schedule_mirrors_fine_tune():
    cfg = TrainConfig(epochs=4, freeze_epochs=1)
    frozen, unfrozen = plan_schedule(cfg, 1e-3)
    assert frozen == Phase("frozen", 1, (1e-3, 1e-3), 0.99, 25.0)
    assert unfrozen.epochs == 4 and unfrozen.lr == pytest.approx((5e-6, 5e-4)) and unfrozen.div == 5.0
    (scratch,) = plan_schedule(cfg, 1e-3, pretrained=False)
    assert scratch.epochs == 5 and scratch.lr == (1e-3, 1e-3)


# ---------------------------------------------------------------------------------------------------- runs


def test_fixture_run_matches_its_bundle(tiny_run):
    """The shared fixture trains through `train`; the bundle reproduces the Learner's validation predictions."""
    run_dir, learn = tiny_run
    stem = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.is_contiguous(memory_format=torch.channels_last) and not stem.weight.is_contiguous()
    probs, _ = valid_probs(learn)
    rebuilt = bundle_probs(run_dir, learn)
    assert (probs.argmax(1) == rebuilt.argmax(1)).all()
    assert np.abs(probs - rebuilt).max() < 1e-4


@pytest.mark.slow
def test_train_writes_the_whole_run_folder(synth_dir, tmp_path, capsys):
    from petclf.bundle import BundleError, load_network

    out = tmp_path / "runs" / "r1"
    res = train(tiny_cfg(synth_dir, out, lr=None, lr_find_steps=20))
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "best.safetensors").is_file()
    assert not (tmp_path / "runs" / "latest").exists()  # a folder the user chose: nothing written beside the run

    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(res.metrics))
    assert {"error_rate", "accuracy", "valid_loss", "history", "lr", "lr_find", "train_seconds",
            "images_per_second"} <= set(m)
    assert m["lr"] == m["lr_find"]["suggestion"] and m["lr_find"]["seconds"] > 0
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]  # 1-based, as the log and the report say
    assert {h["phase"] for h in m["history"]} == {"unfrozen"}  # random init: nothing to freeze
    assert set(m["history"][0]) == {"epoch", "phase", "train_loss", "valid_loss", "error_rate", "accuracy",
                                    "seconds"}
    assert m["error_rate"] == pytest.approx(1 - m["accuracy"])

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["arch"] == "resnet18" and saved["out"] == str(out) and saved["lr_find_steps"] == 20
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["metrics"]["error_rate"] == m["error_rate"]
    cal = m["calibration"]  # chosen on the validation outputs, cross-validated there; the bundle carries it
    assert manifest["temperature"] == cal["temperature"] and manifest["calibration"] == cal
    assert cal["kept"] == (cal["cv_nll_after"] < cal["cv_nll_before"]) and cal["n"] == 12
    assert manifest["data"]["sizes"] == {"train": 52, "valid": 12} and manifest["trained_at"]
    assert json.loads((out / "data_report.json").read_text())["n_images"] == 64

    probs, _ = valid_probs(res.learn)
    rebuilt = bundle_probs(out, res.learn)
    assert (probs.argmax(1) == rebuilt.argmax(1)).all() and np.abs(probs - rebuilt).max() < 1e-4

    err = capsys.readouterr().err
    epoch_lines = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    assert len(epoch_lines) == 3 and "\r" not in err  # piped: one plain line per epoch
    assert "estimated" in err and "device cpu (fp32, channels_last, 1 threads)" in err

    with pytest.raises(PetclfError, match="already holds a trained model"):
        train(tiny_cfg(synth_dir, out))
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleError, match="checksum"):
        load_network(out)


@pytest.mark.slow
def test_interrupted_run_resumes_on_schedule(synth_dir, tmp_path):
    from fastai.callback.schedule import combined_cos

    out = tmp_path / "run"
    # 4 batches/epoch: stop in the middle of epoch 1; the plain layout here (the fixture covers channels_last)
    cfg = tiny_cfg(synth_dir, out, epochs=3, freeze_epochs=0, channels_last="off")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cbs=[StopAfter(6)])
    assert (out / "checkpoints" / "last.pt").is_file()
    assert not (out / "model.json").exists() and not (tmp_path / "latest").exists()
    with pytest.raises(PetclfError, match="--resume"):
        train(cfg)  # a fresh run into an unfinished folder is refused
    with pytest.raises(PetclfError, match=r"cannot take --epochs 9 \(the run has 3\), --out .*--device"):
        train(TrainConfig(resume=str(out), epochs=9, out=str(tmp_path / "elsewhere")))  # not silently dropped
    assert replace(cfg, workers=0, threads=1, resume=str(out)) == resume_config(out, {"workers": 0, "threads": 1})

    lrs_seen: list[float] = []

    class FirstLR(StopAfter):
        def before_step(self):  # after ParamScheduler has set this batch's LR
            if self.learn.training and not lrs_seen:
                lrs_seen.append(self.learn.opt.hypers[-1]["lr"])

    res = train(TrainConfig(resume=str(out), workers=0, threads=1), cbs=[FirstLR(10**9)])
    hist = res.metrics["history"]
    stem = next(m for m in res.learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.weight.is_contiguous()  # the resumed run keeps the saved layout setting
    assert [h["epoch"] for h in hist] == [1, 2, 3]  # epoch 1 not repeated, 1 and 2 run after the resume
    (phase,) = plan_schedule(cfg, cfg.lr, pretrained=False)
    expected = combined_cos(phase.pct_start, cfg.lr / phase.div, cfg.lr, cfg.lr / 1e5)(1 / 3)
    assert lrs_seen[0] == pytest.approx(expected, rel=1e-6)  # the one-cycle schedule continues at epoch 1 of 3
    assert (out / "model.json").is_file() and not (tmp_path / "latest").exists()
    with pytest.raises(PetclfError, match="already complete"):
        train(TrainConfig(resume=str(out)))


@pytest.mark.slow
def test_probe_recipe_on_small_data(synth_dir, tmp_path):
    from scipy.special import softmax

    from petclf.bundle import load_network
    from petclf.model import efficientnet_lite0_weights, norm_stats
    from petclf.predict import load_model
    from petclf.preprocess import Preprocess
    from petclf.probefit import HEAD_ON_CROPS, logits_of, network_features

    weights = efficientnet_lite0_weights(tmp_path / "lite0.safetensors")
    out = tmp_path / "probe"
    res = train(tiny_cfg(synth_dir, out, arch="tf_efficientnet_lite0", weights=str(weights), pretrained=True,
                         probe_size=64))
    m = res.metrics
    assert m["recipe"]["name"] == "probe" and m["recipe"]["size"] == 64 and m["recipe"]["head"] == HEAD_ON_CROPS
    assert m["estimate"] == "5-fold cross-validation" and len(m["fold_errors"]) == 5  # of the head on crops
    assert m["error_rate"] <= 0.25  # ImageNet features separate the synthetic breeds linearly
    assert m["history"] == [] and m["lr_find"] is None and not (out / "lr_find.png").exists()

    oof = json.loads((out / "oof.json").read_text())  # every labelled photo, predicted by a model without it
    logits, labels = np.array(oof["logits"]), np.array(oof["labels"])
    assert logits.shape == np.array(oof["probs"]).shape == (64, 4) and len(oof["files"]) == 64
    assert m["error_rate"] == pytest.approx(float((logits.argmax(1) != labels).mean()))
    assert m["calibration"]["n"] == 64  # the temperature is chosen on the out-of-fold logits
    cal, said = m["calibration"], train_summary(res).splitlines()[0]  # the loss the shipped predictions have, too
    assert said.startswith(f"cross-validation error {m['error_rate']:.4f}")
    assert "(5-fold cross-validation)" in said
    assert (f"{cal['cv_nll_after']:.4f} at the shipped temperature {cal['temperature']:.2f}" in said) == cal["kept"]

    net, manifest = load_network(out)
    manifest = manifest.to_json()  # the record as model.json holds it
    assert manifest["head"] == {"kind": "linear", "l2norm": True, "gem_p": 2.0} and manifest["recipe"] == m["recipe"]
    assert m["recipe"]["features"] == "GeM-pooled (p = 2), L2-normalised, centre view"
    assert manifest["input"]["size"] == manifest["input"]["presize"] == 64
    assert manifest["data"]["sizes"] == {"train": 64, "valid": 0}  # no validation split: all photos train
    files = oof["files"][:6]
    torch_p, onnx_p = load_model(out, backend="torch"), load_model(out, backend="onnx")
    x = torch_p.preprocess(files)
    with torch.no_grad():
        expected = softmax(res.learn.model.eval()(torch.from_numpy(x)).numpy() / manifest["temperature"], axis=1)
    assert np.abs(torch_p.probs(x) - expected).max() < 1e-4 and np.abs(onnx_p.probs(x) - expected).max() < 1e-4
    # the probe's own features of these photos (its preprocessing, its pooling) through the bundle's Linear are
    # what both predictors compute from the files: predict, the demo and the report see what the probe was fitted on
    fitted_on = network_features(res.learn.model, files, Preprocess(64, 64, *map(tuple, norm_stats(manifest["arch"]))))
    head = (net[1][-1].weight.detach().numpy(), net[1][-1].bias.detach().numpy())
    for p in (torch_p, onnx_p):
        assert np.abs(p.logits(p.preprocess(files)) - logits_of(fitted_on, head)).max() < 1e-3, p.backend


@pytest.mark.slow
def test_without_maps_to_keep_the_probe_alone_is_the_head(synth_dir, tmp_path, monkeypatch):
    from petclf import probe
    from petclf.model import efficientnet_lite0_weights
    from petclf.probefit import C_GRID

    monkeypatch.setattr(probe, "MAX_MAPS_BYTES", 0)  # as for a ViT, or more photos than memory holds maps for
    weights = efficientnet_lite0_weights(tmp_path / "lite0.safetensors")
    res = train(tiny_cfg(synth_dir, tmp_path / "run", arch="tf_efficientnet_lite0", weights=str(weights),
                         pretrained=True, probe_size=64))
    m = res.metrics
    assert m["estimate"] == "nested 5-fold cross-validation" and m["probe"]["c"] in C_GRID
    assert m["recipe"]["head"] == f"logistic regression (C = {m['probe']['c']:g}, chosen by 4-fold cross-validation)"
    assert len(m["probe"]["c_per_fold"]) == 5 and m["error_rate"] <= 0.25


def _epochs_saved(ckpt: Path) -> int:
    try:
        return len(torch.load(ckpt, weights_only=True)["state"]["history"])
    except (OSError, RuntimeError, KeyError, EOFError):
        return 0


@pytest.mark.slow
def test_cli_sigint_keeps_checkpoint_then_resumes(cli, synth_dir, tmp_path):
    out = tmp_path / "cli_run"
    cmd = [sys.executable, "-m", "petclf", "train", "--data", str(synth_dir), "--arch", "resnet18",
           "--no-pretrained", "--epochs", "4", "--freeze-epochs", "0", "--lr", "3e-3", "--bs", "16", "--size", "64",
           "--presize", "80", "--workers", "0", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoints" / "last.pt"
    wait_for("a first saved epoch", lambda: _epochs_saved(ckpt) >= 1, proc)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends, during epoch 1
    _, err = proc.communicate(timeout=HANG_GUARD_S)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    done = _epochs_saved(ckpt)
    assert 1 <= done < 4 and not (out / "model.json").exists()

    res = cli("train", "--resume", out, "--workers", "0", "--threads", "1")
    assert res.exit_code == 0, res.output
    hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]


@pytest.mark.slow
def test_cli_train_offline_message(cli, synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    res = cli("train", "--data", synth_dir, "--arch", "resnet18", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "--weights" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists() and not any((tmp_path / "empty_hub").rglob("*.safetensors"))


@pytest.mark.slow
def test_demo_runs_offline_and_leaves_its_model_where_predict_finds_it(tmp_path, monkeypatch, cli, capsys):
    from petclf.demo import OUT, run_demo

    monkeypatch.chdir(tmp_path)  # the default out, exports/demo, as `make demo` runs it
    paths = run_demo(OUT, epochs=1, threads=1)
    run = paths["run"]
    probe_files = [n for n in RUN_FILES if n != "lr_find.png"] + ["oof.json"]  # lite0 weights: the probe recipe
    assert all((run / name).is_file() for name in probe_files)
    assert (tmp_path / "exports" / "latest").resolve() == (run.parent / "latest").resolve() == run.resolve()
    assert json.loads((run / "metrics.json").read_text())["error_rate"] <= 0.25
    printed = capsys.readouterr().out
    photo = next(ln.split()[-1] for ln in printed.splitlines() if ln.strip().startswith("petclf predict"))
    res = cli("predict", photo)  # no --model: exports/latest
    assert res.exit_code == 0 and "Abyssinian" in res.output, res.output
    assert "  petclf report\n" in printed and "  petclf serve\n" in printed


class PoisonWeights(StopAfter):
    """Turns the head's weights into NaN after the first training batch, as a runaway learning rate would."""

    def after_batch(self):
        if self.learn.training:
            with torch.no_grad():
                [m for m in self.learn.model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.fill_(float("nan"))


@pytest.mark.slow
def test_a_run_that_diverges_exports_nothing_and_never_becomes_latest(synth_dir, tmp_path):
    from petclf.export import TrainingDiverged

    out = tmp_path / "runs" / "nan"
    with pytest.raises(TrainingDiverged, match="not finite"):
        train(tiny_cfg(synth_dir, out, epochs=1, freeze_epochs=0), cbs=[PoisonWeights(10**9)])
    assert not (out / "model.json").exists() and not (out / "model.safetensors").exists()
    assert not (tmp_path / "runs" / "latest").exists()


@pytest.mark.slow
def test_cli_records_absolute_paths_and_lists_only_files_it_made(cli, synth_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(synth_dir.parent)
    out = tmp_path / "r"
    res = cli("train", "--data", synth_dir.name, "--arch", "resnet18", "--no-pretrained", "--epochs", "1",
              "--freeze-epochs", "0", "--lr", "3e-3", "--bs", "16", "--size", "64", "--presize", "80", "--workers",
              "0", "--threads", "1", "--out", out)
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"] == str(synth_dir.resolve())  # absolute: `report` works from any folder
    assert json.loads((out / "model.json").read_text())["data"]["root"] == str(synth_dir.resolve())
    line = next(ln for ln in res.output.splitlines() if ln.startswith("run folder:"))
    assert "lr_find.png" not in line and "model.json" in line  # --lr given: no lr_find plot was made
    monkeypatch.chdir(tmp_path)  # elsewhere, the report still finds the run's data
    res = cli("report", "--model", out)
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_a_start_that_fails_leaves_no_run_folder(cli, synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    res = cli("train", "--data", synth_dir, "--arch", "resnet18", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "--weights" in res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_disk_full_is_one_line_naming_the_file(cli, synth_dir, tmp_path):
    """A real full disk: a 3 MB tmpfs (the test machines run as root, which may mount one)."""
    import subprocess

    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.fail("could not mount a tmpfs to fill (needs root)")
    try:
        res = cli("train", "--data", synth_dir, "--arch", "resnet18", "--no-pretrained", "--epochs", "1",
                  "--freeze-epochs", "0", "--lr", "3e-3", "--bs", "16", "--size", "64", "--presize", "80",
                  "--workers", "0", "--threads", "1", "--out", full / "r")
        assert res.exit_code == 1, res.output
        assert "disk full writing" in res.output and "Traceback" not in res.output
        assert "inline_container" not in res.output and "Errno" not in res.output
    finally:
        subprocess.run(["umount", str(full)], check=True)


# ---------------------------------------------------------------------------------------------------- lr_find


def test_flatness_tells_a_curve_from_flat_noise():
    from petclf.lrfind import flatness

    rng = np.random.default_rng(0)
    n = 60
    falling = 2.0 - 1.2 / (1 + np.exp(-(np.arange(n) - 30) / 4))  # a pretrained net's curve: falls by 1.2
    raw = list(falling + rng.normal(0, 0.1, n))
    assert not flatness(raw, list(falling), n)["flat"]
    noise = list(1.39 + rng.normal(0, 0.1, n))  # nothing learnt: batch noise around ln(4)
    smooth = list(np.convolve(noise, np.ones(10) / 10, mode="same"))
    f = flatness(noise, smooth, n)
    assert f["flat"] and f["noise"] == pytest.approx(0.1, rel=0.3)


class Untrainable(torch.nn.Module):
    """Fixed random features and a bias scaled to nothing: its loss moves with the batches, never with the LR."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.AdaptiveAvgPool2d(1),
                                            torch.nn.Flatten(), torch.nn.Linear(8, n_classes)).requires_grad_(False)
        self.bias = torch.nn.Parameter(torch.zeros(n_classes))

    def forward(self, x):
        return self.features(x) + 1e-9 * self.bias


@pytest.mark.slow
def test_lr_find_on_flat_noise_says_so_and_falls_back(synth_dir, tmp_path):
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from petclf.data import load_data
    from petclf.lrfind import FALLBACK_LR, lr_find, plot_lr_find
    from petclf.recipe import build_dataloaders

    cfg = tiny_cfg(synth_dir, tmp_path / "r")
    dls = build_dataloaders(cfg, load_data(cfg.data, seed=cfg.seed), "cpu")
    learn = Learner(dls, Untrainable(dls.c), loss_func=CrossEntropyLossFlat(), path=tmp_path)
    found = lr_find(learn, max_steps=50)
    assert found.flat["flat"] and found.fallback and found.used == "fallback" and found.suggestion == FALLBACK_LR
    assert "flat noise" in found.why() and "default" in found.why()
    assert len(found.raw) == len(found.lrs) == 50  # a flat curve never diverges: every step ran
    assert plot_lr_find(found, tmp_path / "lr.png").stat().st_size > 0


@pytest.mark.slow
def test_lr_find_records_every_suggestion_and_uses_valley(synth_dir, tmp_path):
    from petclf.lrfind import lr_find, plot_lr_find
    from petclf.model import FASTAI_HEAD, efficientnet_lite0_weights
    from petclf.recipe import build_dataloaders, build_learner
    from petclf.train import resolve_device

    weights = efficientnet_lite0_weights(tmp_path / "lite0.safetensors")
    cfg = tiny_cfg(synth_dir, tmp_path / "r", arch="tf_efficientnet_lite0", weights=str(weights), pretrained=True,
                   lr=None)
    from petclf.data import load_data

    compute = resolve_device(cfg)
    learn = build_learner(cfg, build_dataloaders(cfg, load_data(cfg.data, seed=cfg.seed), "cpu"), FASTAI_HEAD,
                          compute, pretrained=True, path=tmp_path)
    found = lr_find(learn, max_steps=50)
    rec = found.record()
    assert set(rec["suggestions"]) == {"valley", "steep", "slide", "minimum"}, rec
    assert not rec["flat"]["flat"] and rec["used"] == "valley" and rec["suggestion"] == rec["suggestions"]["valley"]
    assert rec["why"].startswith("valley") and "steep" in rec["why"] and rec["steps"] >= 20
    assert plot_lr_find(found, tmp_path / "lr.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------------- --log


# `petclf train ...` in a Python where tensorboard cannot be imported (a None in sys.modules is how Python itself
# marks a module as missing), whether or not this venv has it
WITHOUT_TENSORBOARD = ("import runpy, sys; sys.modules['tensorboard'] = None; sys.argv[0] = 'petclf'; "
                       "runpy.run_module('petclf', run_name='__main__')")


def test_log_tensorboard_without_the_package_is_one_line_before_any_work(synth_dir, tmp_path):
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TENSORBOARD, "train", "-d", str(synth_dir), "--log",
                           "tensorboard", "-o", str(out)], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "pip install tensorboard" in line and not out.exists()


@pytest.mark.slow
def test_log_tensorboard_writes_event_files_in_the_run_folder(synth_dir, tmp_path):
    out = tmp_path / "r"
    train(tiny_cfg(synth_dir, out, epochs=1, freeze_epochs=0, log="tensorboard"))
    events = list((out / "tb").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 100 for e in events)


# ---------------------------------------------------------------------------------------------------- batch size


@pytest.fixture(scope="module")
def thirty_photos(tmp_path_factory) -> Path:
    """Issue 27's folder: 3 classes x 10 photos, so the random split trains on 24, fewer than the default batch."""
    from petclf.synth import synth_data

    data = tmp_path_factory.mktemp("thirty")
    synth_data(data, "folders", n_classes=3, per_class=10, size=SIZE)
    return data


def fine_tune_args(data: Path, out: Path) -> list:
    """Issue 27's command: the fine-tune recipe from random weights, lr_find included (fewer steps, via --config)."""
    settings = out.parent / "settings.yaml"
    settings.write_text("lr_find_steps: 10\n")
    return ["train", "--data", data, "--layout", "folders", "--arch", "resnet18", "--no-pretrained", "--size", SIZE,
            "--presize", PRESIZE, "--epochs", "1", "--freeze-epochs", "0", "--threads", "1", "--out", out,
            "--config", settings]


@pytest.mark.slow
def test_fewer_training_photos_than_the_batch_size_train_with_a_batch_that_fits(cli, thirty_photos, tmp_path):
    run = tmp_path / "run"
    res = cli(*fine_tune_args(thirty_photos, run))
    assert res.exit_code == 0, res.output
    assert "batch size 6 instead of 32: the 24 training images give 4 steps an epoch" in res.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["processes"]["bs_per_process"] == 6 and m["lr_find"]["steps"] > 0 and len(m["history"]) == 1
    assert json.loads((run / "model.json").read_text())["data"]["sizes"] == {"train": 24, "valid": 6}
    assert yaml.safe_load((run / "config.yaml").read_text())["bs"] is None  # not set: refitted on --resume


@pytest.mark.slow
def test_a_batch_size_set_larger_than_the_training_part_is_one_line(cli, thirty_photos, tmp_path):
    run = tmp_path / "run"
    for extra in (["--bs", "64"], ["--config", tmp_path / "bs.yaml"]):
        (tmp_path / "bs.yaml").write_text("bs: 64\n")  # a config file's bs is set by the user, as a flag's is
        args = fine_tune_args(thirty_photos, run)
        res = cli(*(args[:-2] if extra[0] == "--config" else args), *extra)
        errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        assert errors == ["error: --bs 64 does not fit the 24 training images: the last partial batch is dropped, "
                          "so an epoch would have no step; pass --bs 6 or leave --bs out"], res.output
        assert not run.exists()  # refused before anything was written
    res = cli("lr-find", "--data", thirty_photos, "--arch", "resnet18", "--no-pretrained", "--bs", "64",
              "--out", tmp_path)
    assert res.exit_code == 2 and "error: --bs 64 does not fit" in res.output, res.output


def test_resume_checks_the_saved_batch_size_against_the_data(thirty_photos, tmp_path):
    from dataclasses import asdict

    from petclf.config import save_config
    from petclf.run import CKPT_DIR, RunState

    run = tmp_path / "run"
    (run / CKPT_DIR).mkdir(parents=True)
    save_config(TrainConfig(data=str(thirty_photos), arch="resnet18", pretrained=False, bs=64, out=str(run)),
                run / "config.yaml")
    torch.save({"model": {}, "opt": None, "state": asdict(RunState())}, run / CKPT_DIR / "last.pt")
    with pytest.raises(PetclfError, match=r"^--bs 64 does not fit the 24 training images"):
        train(TrainConfig(resume=str(run)))
    assert (run / CKPT_DIR / "last.pt").is_file()  # the run is kept as it was
def test_the_summary_line_says_which_error_it_gives(tiny_run):
    """A fine-tuned run's error is a validation error, a probe's a cross-validation error; a temperature that
    could not be fitted is said once, as a warning."""
    from petclf.train import TrainResult

    m = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    said = train_summary(TrainResult(tiny_run.learn, tiny_run.run_dir, m)).splitlines()
    assert said[0].startswith(f"validation error {m['error_rate']:.4f}  accuracy")
    assert "(validation split)" in said[0]
    why = "calibration was not possible: the fit ran to its bound"
    cal = {**m["calibration"], "not_possible": why}
    probe = {**m, "estimate": "5-fold cross-validation", "calibration": cal}
    said = train_summary(TrainResult(tiny_run.learn, tiny_run.run_dir, probe)).splitlines()
    assert said[0].startswith("cross-validation error") and said[1] == f"warning: {why}"


def test_no_keep_checkpoints_removes_them_once_the_model_is_exported(synth_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(synth_dir, out, epochs=1, freeze_epochs=0, lr=1e-3, keep_checkpoints=False))
    assert (out / "model.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "checkpoints").exists()  # the bundle is whole; last.pt and best.safetensors are gone
    assert yaml.safe_load((out / "config.yaml").read_text())["keep_checkpoints"] is False
