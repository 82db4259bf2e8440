"""Fine-tune a pretrained timm backbone on Pets with fastai: lr_find, fit_one_cycle, a linear probe, export.

    petclf train --data data/oxford-iiit-pet                  # or `make train`; resnet34, lr_find, fine-tune
    petclf train --data data/synth --arch resnet18 --size 64 --no-pretrained --epochs 3
    petclf train --resume exports/20250101-120000-resnet34    # continue an interrupted run
    petclf lr-find --data data/oxford-iiit-pet                # plot + suggestion only

    from petclf.config import TrainConfig
    from petclf.train import train
    result = train(TrainConfig(data="data/synth", arch="resnet18", size=64, presize=80, pretrained=False))
    result.learn, result.run_dir, result.metrics

Recipes. `fastbook`: fastai's head, lr_find's valley, `fine_tune` semantics (head alone with fit_one_cycle, then
unfreeze and fit_one_cycle with discriminative LRs). `probe` (small data): the frozen backbone's GeM-pooled,
L2-normalised features at `probe_size` px; a Linear started from a logistic regression on them and trained on crops
of the feature maps (where there are no maps to keep, the logistic regression alone, C by cross-validation), fitted
on every labelled photo (no validation split) and written into a linear head (`petclf.probe`); its error is a
cross-validation estimate, and the out-of-fold predictions are saved in `oof.json`. No lr_find, no fine-tune of the
backbone (measured to add nothing).
`auto` picks `probe` when there are fewer than `small_data` training images per class.

Every file lands in the run directory; `exports/latest` is switched to the run once it is complete, and only when the
run is in petclf's own `exports/` (a folder the user chose gets nothing written beside it). Every stage shows its
progress (`petclf.progress`), and the whole run's time is estimated from its first batches.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

from petclf import distributed
from petclf.callbacks import EpochEnd, EpochProgress, FreezeBN, check_logging, log_callbacks
from petclf.config import EXPORTS, UNSURE_BELOW, TrainConfig, save_config
from petclf.device import Compute, default_workers, resolve_compute
from petclf.errors import as_typed
from petclf.io import atomic_path, write_atomic
from petclf.labels import error_kind
from petclf.lrfind import LRFind, lr_find, lr_find_steps, plot_lr_find
from petclf.oof import read_oof
from petclf.probe import not_a_pet_detector, open_set_entry, pooled_features, run_probe
from petclf.progress import RunClock, bar_unless, current_clock, run_clock, stage
from petclf.run import (
    CKPT_DIR,
    Phase,
    RunState,
    batch_size,
    discarded_on_failure,
    has_checkpoint,
    load_checkpoint,
    log,
    on_main,
    prepare_run_dir,
    resume_config,
    save_checkpoint,
    settings_given,
    sigterm_as_interrupt,
    update_latest,
)


def resolve_device(cfg: TrainConfig) -> Compute:
    """Device, precision and layout of this run on this machine (one GPU per process when distributed)."""
    return resolve_compute(cfg.device, cfg.precision, cfg.channels_last, cfg.threads,
                           local_rank=distributed.local_rank(), local_processes=distributed.local_world_size())


# ---------------------------------------------------------------------------------------------------- the plan


def plan_schedule(cfg: TrainConfig, lr: float, recipe: str, pretrained: bool = True) -> list[Phase]:
    """fastai's fine_tune as data: head alone, then unfrozen with discriminative LRs.

    From random weights there is nothing to protect: one plain fit_one_cycle of `freeze_epochs + epochs` at `lr`.
    The probe recipe trains no epochs: its head is solved, not fitted by gradient steps.
    """
    if recipe == "probe":
        return []
    if not pretrained:
        n = cfg.freeze_epochs + cfg.epochs
        return [Phase("unfrozen", n, (lr, lr), pct_start=0.25, div=25.0)] if n > 0 else []
    phases = []
    if cfg.freeze_epochs > 0:
        phases.append(Phase("frozen", cfg.freeze_epochs, (lr, lr), pct_start=0.99, div=25.0))
    if cfg.epochs > 0:
        top = lr / 2
        phases.append(Phase("unfrozen", cfg.epochs, (top / cfg.lr_mult, top), pct_start=0.3, div=5.0))
    return phases


def choose_recipe(cfg: TrainConfig, class_counts: dict[str, int], pretrained: bool) -> str:
    """`fastbook` or `probe`: `auto` probes below `small_data` training images per class (pretrained only)."""
    if cfg.recipe != "auto":
        return cfg.recipe
    small = bool(class_counts) and median(class_counts.values()) < cfg.small_data
    return "probe" if small and pretrained else "fastbook"


def train_class_counts(labels: list[str], train_idx: list[int]) -> dict[str, int]:
    """Training images per class."""
    from collections import Counter

    return dict(Counter(labels[i] for i in train_idx))


# ---------------------------------------------------------------------------------------------------- learner


def build_dataloaders(cfg: TrainConfig, pets, device: str):
    """fastbook's presizing DataLoaders with the backbone's normalisation stats put in explicitly."""
    from petclf.data import make_dataloaders
    from petclf.model import norm_stats

    mean, std = norm_stats(cfg.arch)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    return make_dataloaders(pets, bs=cfg.bs, size=cfg.size, presize=cfg.presize, min_scale=cfg.min_scale,
                            mean=mean, std=std, device=torch.device(device), workers=workers, seed=cfg.seed)


def head_spec(recipe: str, arch: str) -> dict[str, Any]:
    """The head recorded in the manifest: the probe's linear head for the probe recipe, fastai's otherwise."""
    from petclf.model import FASTAI_HEAD, probe_head

    return probe_head(arch) if recipe == "probe" else dict(FASTAI_HEAD)


def build_learner(cfg: TrainConfig, dls, recipe: str, compute: Compute, path: Path | None = None):
    """A fastai Learner over `make_network` (as vision_learner builds it), with petclf's progress instead of
    fastprogress; `path` is where fastai may put temporary files (lr_find's weights), never the current folder."""
    import fastai.callback.all  # noqa: F401 - patches Learner with fit_one_cycle, lr_find, to_fp16, ...
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy, error_rate
    from fastai.vision.learner import default_split
    from fastcore.basics import noop

    from petclf.model import make_network

    pretrained = cfg.pretrained or cfg.weights is not None
    net = make_network(cfg.arch, dls.c, head=head_spec(recipe, cfg.arch), pretrained=cfg.pretrained,
                       weights=cfg.weights)
    learn = Learner(dls, net, loss_func=CrossEntropyLossFlat(), splitter=default_split,
                    metrics=[error_rate, accuracy], path=path, model_dir=".")
    learn.remove_cb(ProgressCallback)
    learn.logger = noop
    if pretrained:
        learn.freeze()
    if compute.channels_last:
        learn.add_cb(ChannelsLast())
    if compute.precision in ("fp16", "bf16"):
        learn.to_bf16() if compute.precision == "bf16" else learn.to_fp16()
    return learn


# ---------------------------------------------------------------------------------------------------- the schedule


def fit_phase(learn, phase: Phase, state: RunState, run_dir: Path, total_epochs: int, cbs: list | None = None):
    """One fit_one_cycle, from `state.epoch` on (resume), with checkpoints and progress per epoch."""
    start = state.epoch
    global_start = sum(1 for h in state.history if h["phase"] != phase.name)
    progress = EpochProgress(phase, total_epochs, start, global_start)
    extra = [EpochEnd(state, phase, run_dir, start, global_start), progress, *(cbs or [])]
    try:
        with distributed.distrib_ctx(learn):
            learn.fit_one_cycle(phase.epochs, slice(*phase.lr) if phase.lr[0] != phase.lr[1] else phase.lr[1],
                                pct_start=phase.pct_start, div=phase.div, cbs=extra, start_epoch=start)
    finally:
        progress.close()  # an interrupted epoch's bar leaves the screen


def set_phase_trainable(learn, phase: Phase) -> None:
    """Freeze the body for the frozen phase, unfreeze everything otherwise (fastai clears optimizer state here)."""
    learn.freeze() if phase.name == "frozen" else learn.unfreeze()


def run_schedule(learn, phases: list[Phase], state: RunState, run_dir: Path, bn_freeze: bool,
                 opt_state: dict | None = None, cbs: list | None = None) -> None:
    """Run the phases from `state.phase`/`state.epoch` on; `opt_state` restores the optimizer mid-phase."""
    extra = [FreezeBN(), *(cbs or [])] if bn_freeze else list(cbs or [])
    while state.phase < len(phases):
        phase = phases[state.phase]
        set_phase_trainable(learn, phase)
        if opt_state is not None:
            learn.opt.load_state_dict(opt_state)
            opt_state = None
        fit_phase(learn, phase, state, run_dir, sum(p.epochs for p in phases), extra)


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What `train` returns: the trained Learner, where its files are, and its metrics.json content."""

    learn: Any
    run_dir: Path
    metrics: dict


def final_metrics(learn, state: RunState, cbs: list | None = None) -> dict:
    """metrics.json: final validation numbers, per-epoch history, LR, lr_find and timing."""
    valid_loss, err, acc = (float(v) for v in learn.validate(cbs=cbs))
    return {"error_rate": err, "accuracy": acc, "valid_loss": valid_loss, "history": state.history,
            "lr": state.lr, "lr_find": state.lr_find, "recipe": state.recipe, "probe": state.probe,
            "train_seconds": round(state.train_seconds, 2),
            "images_per_second": round(state.train_images / state.train_seconds, 2) if state.train_seconds else None}


class TrainingDiverged(RuntimeError):
    """The run ended with weights or a loss that are not finite numbers: nothing is exported (exit code 1)."""


def check_finite(learn) -> None:
    """Refuse to export a network with NaN or infinite weights (a learning rate too high, fp16 overflow)."""
    bad = [k for k, v in distributed.unwrap(learn.model).state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingDiverged(f"training diverged: {len(bad)} weight tensors are not finite (e.g. {bad[0]}); "
                               "nothing was exported and `latest` is unchanged; try a lower --lr")


def choose_run_temperature(learn, cbs: list | None = None) -> dict:
    """The bundle's temperature, chosen on the validation outputs by `calibrate.choose_temperature` (cross-validated
    within them, kept only when it lowers the held-out NLL)."""
    from fastcore.basics import noop

    from petclf.calibrate import choose_temperature

    logits, targs = learn.get_preds(act=noop, cbs=cbs)
    return choose_temperature(logits.float().cpu().numpy(), targs.cpu().numpy())


def recipe_record(cfg: TrainConfig, state: RunState) -> dict:
    """metrics.json's and the bundle's `recipe`: its name, and for the probe how its head was made."""
    if state.recipe != "probe":
        return {"name": state.recipe}
    gem_p = head_spec("probe", cfg.arch).get("gem_p")
    pooled = f"GeM-pooled (p = {gem_p:g})" if gem_p else "average-pooled"
    return {"name": "probe", "size": cfg.probe_size, "features": f"{pooled}, L2-normalised, centre view",
            "head": state.probe["head"], "estimate": state.probe["estimate"], "trained_on": "every labelled photo"}


def oof_temperature(run_dir: Path) -> dict:
    """The probe's temperature, chosen on the out-of-fold logits: the honest held-out outputs of this recipe."""
    from petclf.calibrate import choose_temperature

    oof = read_oof(run_dir)
    return choose_temperature(np.asarray(oof["logits"], np.float32), np.asarray(oof["labels"]))


def run_detector(learn, cfg: TrainConfig, pets, run_dir: Path, state: RunState) -> dict:
    """The not-a-pet detector's manifest entry: the probe fitted it on every photo (leave-one-out); a fine-tuned
    network gets one from its validation photos, which it never trained on. Off for a random-weight backbone, whose
    features were never taught what a photo of anything looks like."""
    from petclf.model import norm_stats
    from petclf.notapet import off
    from petclf.preprocess import Preprocess

    if not (cfg.pretrained or cfg.weights):
        return off("the backbone started from random weights: its features do not tell a pet from anything else")
    if state.recipe == "probe":
        return state.probe.get("not_a_pet") or off("the probe was fitted before petclf had a not-a-pet detector")
    vocab = list(learn.dls.vocab)
    items = [pets.items[i] for i in pets.valid_idx]
    y = np.array([vocab.index(pets.labels[i]) for i in pets.valid_idx], dtype=int)
    mean, std = norm_stats(cfg.arch)
    with stage("not-a-pet detector (features of the validation photos)", total=1, kind="detector") as s:
        x = pooled_features(distributed.unwrap(learn.model), items, Preprocess(cfg.size, cfg.presize, tuple(mean),
                                                                                tuple(std)))
        s.advance()
    return not_a_pet_detector(x, y, len(vocab), run_dir, f"the {len(y)} validation photos, each scored against "
                              "class means made without it")


def export_run(learn, cfg: TrainConfig, pets, run_dir: Path, metrics: dict) -> None:
    """Bundle (weights + manifest), export.pkl and metrics.json; then the run is complete."""
    from petclf.bundle import make_manifest, write_bundle
    from petclf.data import EXAMPLES_DIR, save_examples
    from petclf.model import norm_stats

    mean, std = norm_stats(cfg.arch)
    group_name, groups = run_groups(cfg, list(learn.dls.vocab))
    probe = metrics["recipe"]["name"] == "probe"
    sizes = ({"train": len(pets.fit_idx), "valid": 0} if probe
             else {"train": len(pets.train_idx), "valid": len(pets.valid_idx)})
    sure = (metrics.get("probe") or {}).get("sure_below")  # a probe's, from its out-of-fold predictions
    extra = {"metrics": {k: metrics[k] for k in ("error_rate", "accuracy", "valid_loss")},
             "trained_at": datetime.now().astimezone().isoformat(timespec="seconds"),
             "data": {"root": str(pets.root), "layout": pets.report.layout,
                      "split": "none: every photo trains the probe" if probe else pets.report.split, "sizes": sizes},
             "temperature": metrics["calibration"]["temperature"], "calibration": metrics["calibration"],
             "recipe": metrics["recipe"], "not_a_pet": metrics["not_a_pet"], "open_set": metrics["open_set"],
             "unsure_below": UNSURE_BELOW if sure is None else sure}
    size, presize = (cfg.probe_size, cfg.probe_size) if probe else (cfg.size, cfg.presize)
    manifest = make_manifest(cfg.arch, head_spec(metrics["recipe"]["name"], cfg.arch), list(learn.dls.vocab),
                             size, presize, mean, std, groups=groups, group_name=group_name, **extra)
    with stage("export (model.safetensors, model.json, examples)", total=1, kind="export") as s:
        write_bundle(learn.model, run_dir, manifest)
        save_examples(pets, run_dir / EXAMPLES_DIR, every=probe)
        s.advance()
    with stage("ONNX export and check against torch", total=1, kind="onnx") as s:
        s.info = export_onnx_quietly(run_dir)
        s.advance()
    with atomic_path(run_dir / "export.pkl") as tmp:  # absolute: fastai joins a relative name onto learn.path
        learn.export(tmp)
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1))


def run_groups(cfg: TrainConfig, vocab: list[str]) -> tuple[str | None, dict[str, str] | None]:
    """(group name, {class: group}) from `cfg.groups`, or (None, None): Pets' built-in groups, or none."""
    from petclf.layouts import read_groups

    return read_groups(cfg.groups, vocab) if cfg.groups else (None, None)


def load_run_data(cfg: TrainConfig, progress=None):
    """The run's verified, split data, with its groups file checked against the classes before anything is built."""
    from petclf.data import load_pets

    pets = load_pets(cfg.data, split=cfg.split, valid_pct=cfg.valid_pct, seed=cfg.seed, progress=progress,
                     layout=cfg.layout, labels=cfg.labels, use_cache=cfg.cache)
    run_groups(cfg, pets.vocab)
    return pets


def export_onnx_quietly(run_dir: Path) -> str:
    """model.onnx + its checksum file beside the bundle (`load_model` prefers it on CPU); a failure only logs.
    Returns what happened, in words."""
    from petclf.onnx import export_onnx, match_summary

    try:
        info = export_onnx(run_dir)
    except Exception as e:  # noqa: BLE001 - the run is good without ONNX; torch serves it
        return (f"skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "predict/serve will use torch")
    return f"wrote {info['file']} ({match_summary(info)})"


# ---------------------------------------------------------------------------------------------------- train


def probe_metrics(state: RunState) -> dict:
    """metrics.json of a probe run: the cross-validation estimate (never an error on the photos the model trained
    on)."""
    p = state.probe
    return {"error_rate": p["error_rate"], "accuracy": 1.0 - p["error_rate"], "valid_loss": p["log_loss"],
            "estimate": p["estimate"], "fold_errors": p["fold_errors"], "fold_error_std": p["fold_error_std"],
            "log_loss": p["log_loss"], "history": [], "lr": None,
            "lr_find": None, "recipe": state.recipe, "probe": p, "train_seconds": p["seconds"],
            "images_per_second": round(p["n_images"] / p["seconds"], 2) if p["seconds"] else None}


def start_state(learn, cfg: TrainConfig, recipe: str, run_dir: Path, pets) -> RunState:
    """A fresh run: the probe recipe whole (then its one checkpoint), or lr_find unless --lr, plot saved, and a
    first checkpoint. A probe interrupted before its checkpoint leaves nothing to resume: rerun it (it is short)."""
    state = RunState(recipe=recipe)
    if recipe == "probe":
        state.probe = run_probe(learn, cfg, pets, run_dir)  # its stages print C and the estimate
        on_main(save_checkpoint, learn, state, run_dir)
        return state
    if cfg.lr is None:
        found = lr_find(learn, cfg.lr_find_steps)
        state.lr = found.suggestion
        state.lr_find = found.record()
        on_main(plot_lr_find, found, run_dir / "lr_find.png")
    else:
        state.lr = cfg.lr
    on_main(save_checkpoint, learn, state, run_dir)
    return state


def restore(learn, ckpt: dict) -> tuple[RunState, dict | None]:
    """Model weights and RunState from a checkpoint; the optimizer state is returned for `run_schedule`."""
    learn.model.load_state_dict(ckpt["model"])
    return RunState(**ckpt["state"]), ckpt.get("opt")


def describe(cfg: TrainConfig, compute: Compute, recipe: str, pets) -> str:
    """The one line printed before training starts."""
    device, precision = compute.device, compute.precision
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    layout = ", channels_last" if compute.channels_last else ""
    weights = cfg.weights or ("ImageNet (timm hub)" if cfg.pretrained else "random init")
    n = distributed.world_size()
    procs = (f"; {n} processes, batch {cfg.bs} per process = {n * cfg.bs} global, LR not scaled"
             if n > 1 and recipe != "probe" else "")
    images = (f"{len(pets.fit_idx)} images, all training the probe at {cfg.probe_size} px" if recipe == "probe"
              else f"{len(pets.train_idx)} train / {len(pets.valid_idx)} valid images")
    return (f"device {device} ({precision}{layout}{threads}); {cfg.arch} from {weights}; recipe {recipe}; "
            f"{images}, {len(pets.vocab)} classes{procs}")


EXPORT_GUESS_S, ONNX_GUESS_S = 3.0, 5.0  # the estimate's guesses for export and the ONNX check until they are timed


def plan_run(clock: RunClock, learn, cfg: TrainConfig, recipe: str, epochs_done: int, n_items: int) -> None:
    """The work left in this run, by kind, with guesses for the kinds that are timed only later (validation batches
    from training ones; export), so the whole-run estimate comes after the first few batches."""
    from petclf.probe import FEATURE_BS, OUTER_FOLDS, fit_units, map_pool

    if recipe == "probe":
        clock.plan("features", math.ceil(n_items / FEATURE_BS))
        if map_pool(distributed.unwrap(learn.model).eval(), cfg.probe_size, n_items) is not None:
            clock.plan("heads", OUTER_FOLDS + 1)  # the head on crops, then its 5-fold estimate
            clock.prior["heads"] = lambda r: 0.006 * n_items  # a guess till the first is timed (185 photos: 1 s)
        else:
            clock.plan("fit", fit_units(n_items))
            clock.prior["fit"] = lambda r: 0.1  # a guess till the first folds are timed (180 photos: 0.07 s a fold)
    else:
        epochs = sum(p.epochs for p in plan_schedule(cfg, 1.0, recipe, cfg.pretrained or cfg.weights is not None))
        left = max(0, epochs - epochs_done)
        n_train, n_valid = len(learn.dls.train), len(learn.dls.valid)
        if cfg.lr is None and not epochs_done and not cfg.resume:
            clock.plan("train", lr_find_steps(n_train, cfg.lr_find_steps))
        clock.plan("train", left * n_train)
        clock.plan("valid", (left + 2) * n_valid)  # every epoch's, then the final metrics and the temperature
        clock.prior["valid"] = lambda r: r["train"] / 3 if "train" in r else None  # no backward pass
    clock.plan("export", 1)
    clock.plan("onnx", 1)
    clock.prior["export"], clock.prior["onnx"] = (lambda r: EXPORT_GUESS_S), (lambda r: ONNX_GUESS_S)


def start(cfg: TrainConfig, compute: Compute, pets, run_dir: Path) -> tuple[Any, RunState, dict | None, str]:
    """Learner, RunState, optimizer state to restore and recipe: from the checkpoint when resuming, else a fresh
    start (probe, lr_find and the first checkpoint, on rank 0)."""
    pretrained = cfg.pretrained or cfg.weights is not None
    ckpt = load_checkpoint(run_dir) if cfg.resume else None
    recipe = ckpt["state"]["recipe"] if ckpt else choose_recipe(
        cfg, train_class_counts(pets.labels, pets.train_idx), pretrained)
    cfg = replace(cfg, bs=batch_size(cfg, pets, recipe))  # before any model is built: a bad --bs is one line
    log(describe(cfg, compute, recipe, pets))
    # the probe's export.pkl carries its own input size (it sees no batch: features come through `Preprocess`)
    dls = build_dataloaders(replace(cfg, size=cfg.probe_size, presize=cfg.probe_size) if recipe == "probe" else cfg,
                            pets, compute.device)
    with stage("building the model", quiet=not distributed.is_main()):
        learn = distributed.main_first(  # rank 0 fills the hub cache before the others read it
            lambda: build_learner(cfg, dls, recipe, compute, path=run_dir / CKPT_DIR))
    clock = current_clock()
    if clock is not None:
        done = len(ckpt["state"]["history"]) if ckpt else 0
        plan_run(clock, learn, cfg, recipe, done, len(pets.fit_idx))
    if ckpt:
        state, opt_state = restore(learn, ckpt)
        log(f"resuming {run_dir} at epoch {len(state.history) + 1} ({len(state.history)} epochs done)")
        return learn, state, opt_state, recipe
    # probe and lr_find run once, on rank 0; its weights reach the others when DDP wraps the model
    state = None
    if distributed.is_main():
        with distributed.this_process_only():
            state = start_state(learn, cfg, recipe, run_dir, pets)
    return learn, distributed.broadcast(state), None, recipe


def train(cfg: TrainConfig, cbs: list | None = None, latest: bool | None = None) -> TrainResult:
    """Run (or, with `cfg.resume`, continue) a training run and write the whole run directory; every stage shows
    its progress, and the whole run's time is estimated from its first batches. `latest` beside the run is switched
    to it when `latest`, or (None) when the run is in petclf's own `exports/`."""
    with run_clock(), sigterm_as_interrupt():
        return train_run(cfg, cbs, latest)


def train_run(cfg: TrainConfig, cbs: list | None = None, latest: bool | None = None) -> TrainResult:
    """`train` itself, inside its run clock."""
    check_logging(cfg)  # before any work: a missing package is one line, not a failure after lr_find
    distributed.init_process_group()  # only when launched as several processes (accelerate launch, torchrun)
    fresh = not cfg.resume
    if not fresh:
        run_dir = Path(cfg.resume)
        cfg = resume_config(run_dir, settings_given(cfg))
        if not has_checkpoint(run_dir):  # stopped before its first checkpoint (kill -9): nothing to continue from
            log(f"{run_dir} stopped before its first checkpoint; starting it again from the beginning")
            cfg = replace(cfg, resume=None)
    # recorded absolute, so `petclf report` finds the data (and its labels and groups files) from any folder
    cfg = replace(cfg, **{k: str(Path(v).expanduser().resolve()) for k in ("data", "labels", "groups")
                          if (v := getattr(cfg, k))})
    compute = resolve_device(cfg)
    # rank 0 downloads and verifies first; the others then find the data and the verification cache ready
    with bar_unless(not distributed.is_main(), "verifying images") as progress:
        pets = distributed.main_first(lambda: load_run_data(cfg, progress))
    existed = False
    if fresh:
        # rank 0 names (and checks) the run directory; every rank then uses that name
        name, existed = prepare_run_dir(cfg) if distributed.is_main() else (None, False)
        run_dir = Path(distributed.broadcast(str(name) if name else None))
        cfg = replace(cfg, out=str(run_dir))
    try:  # a restarted --resume (not `fresh`) keeps its folder whatever happens: the same command works again
        with discarded_on_failure(run_dir, fresh, existed):
            if fresh:
                on_main(save_config, cfg, run_dir / "config.yaml")  # first: it marks the folder as this run's
            on_main(pets.report.save, run_dir)
            learn, state, opt_state, recipe = start(cfg, compute, pets, run_dir)
    except KeyboardInterrupt:
        if not has_checkpoint(run_dir):
            log("interrupted before the first checkpoint; nothing to keep: run the same command again")
        raise
    pretrained = cfg.pretrained or cfg.weights is not None
    phases = plan_schedule(cfg, state.lr, recipe, pretrained)
    bn_freeze = cfg.bn_freeze == "on" or (cfg.bn_freeze == "auto" and recipe == "probe")
    try:
        run_schedule(learn, phases, state, run_dir, bn_freeze, opt_state, [*(cbs or []), *log_callbacks(cfg, run_dir)])
        return finish(learn, cfg, pets, run_dir, state, owns_parent(run_dir) if latest is None else latest)
    except KeyboardInterrupt:
        log(as_typed(f"interrupted; the last checkpoint is kept: continue with petclf train --resume {run_dir}"))
        raise


def finish(learn, cfg: TrainConfig, pets, run_dir: Path, state: RunState, latest: bool = True) -> TrainResult:
    """Metrics and temperature, export, and point `latest` at the run (rank 0; others get metrics)."""
    state.done = True
    if not distributed.is_main():
        return TrainResult(learn, run_dir, distributed.broadcast(None))
    n = distributed.world_size()
    with distributed.this_process_only():
        check_finite(learn)
        metrics = probe_metrics(state) if state.recipe == "probe" else validated_metrics(learn, state)
        if not math.isfinite(metrics["valid_loss"]):
            raise TrainingDiverged("training diverged: the validation loss is not finite; nothing was exported and "
                                   "`latest` is unchanged; try a lower --lr")
        metrics["recipe"] = recipe_record(cfg, state)
        metrics["processes"] = {"count": n, "bs_per_process": learn.dls.bs, "global_bs": n * learn.dls.bs}
        if state.recipe == "probe":
            metrics["calibration"] = oof_temperature(run_dir)
        metrics["not_a_pet"] = run_detector(learn, cfg, pets, run_dir, state)
        metrics["open_set"] = open_set_entry(cfg, state.recipe, state.probe)
        export_run(learn, cfg, pets, run_dir, metrics)
        if latest:
            update_latest(run_dir)
    return TrainResult(learn, run_dir, distributed.broadcast(metrics))


def validated_metrics(learn, state: RunState) -> dict:
    """The final validation metrics and the temperature, two passes over the validation set under one stage."""
    from petclf.callbacks import BatchProgress

    with stage("final validation and temperature", total=2 * len(learn.dls.valid), kind="valid") as s:
        metrics = final_metrics(learn, state, cbs=[BatchProgress(s)])
        metrics["calibration"] = choose_run_temperature(learn, cbs=[BatchProgress(s)])
        s.info = f"temperature {metrics['calibration']['temperature']:.3g}"  # the result is said once, at the end
    return metrics


def owns_parent(run_dir: Path) -> bool:
    """True when the run folder sits in petclf's own `exports/` (where `latest` belongs); a folder the user chose
    elsewhere gets nothing written beside it."""
    return run_dir.resolve().parent == EXPORTS.resolve()


def next_commands(run_dir: Path, cmd: str = "petclf") -> list[str]:
    """What to run next on a finished run (`cmd`: how the user runs petclf); `--model` is always named, so the
    commands stay true after another run moves `latest`."""
    return [f"{cmd} predict --model {run_dir} photo.jpg", f"{cmd} report --model {run_dir}",
            f"{cmd} serve --model {run_dir}"]


def train_summary(result: TrainResult, cmd: str = "petclf") -> str:
    """The end of a run, said once: the result, the run folder and what it holds, and the next commands."""
    m, run_dir = result.metrics, result.run_dir
    how = m.get("estimate") or "validation split"
    made = [n for n in ("model.safetensors", "model.json", "model.onnx", "metrics.json", "lr_find.png", "export.pkl",
                        "oof.json") if (run_dir / n).is_file()]
    latest = run_dir.parent / "latest"
    points = f"; {latest} points to it" if latest.exists() and latest.resolve() == run_dir.resolve() else ""
    cal = m.get("calibration") or {}
    scaled = (f", {cal['cv_nll_after']:.4f} at the shipped temperature {cal['temperature']:.2f}" if cal.get("kept")
              else "")  # the loss the predictions have: a probe head's raw logits are small (T ~ 0.25)
    lines = [f"{error_kind(m)} {m['error_rate']:.4f}  accuracy {m['accuracy']:.4f}  "
             f"loss {m['valid_loss']:.4f}{scaled} ({how})",
             *([f"warning: {cal['not_possible']}"] if cal.get("not_possible") else []),
             f"run folder: {run_dir} ({', '.join(made)}){points}",
             "next:", *(f"  {c}" for c in next_commands(run_dir, cmd))]
    return "\n".join(lines)


def run_lr_find(cfg: TrainConfig, out: Path | None = None) -> tuple[LRFind, Path]:
    """`petclf lr-find`: build data and learner as `train` would, run lr_find, save the plot."""
    compute = resolve_device(cfg)
    pets = load_run_data(cfg)
    recipe = choose_recipe(cfg, train_class_counts(pets.labels, pets.train_idx),
                           cfg.pretrained or cfg.weights is not None)
    cfg = replace(cfg, bs=batch_size(cfg, pets))  # lr_find trains by batches, whatever the recipe
    log(describe(cfg, compute, recipe, pets))
    with tempfile.TemporaryDirectory() as tmp:
        dls = build_dataloaders(cfg, pets, compute.device)
        learn = build_learner(cfg, dls, recipe, compute, path=Path(tmp))
        found = lr_find(learn, cfg.lr_find_steps)
    out = Path(out or cfg.out or EXPORTS)
    return found, plot_lr_find(found, out / "lr_find.png")
