"""Train a classifier on a timm backbone with fastai: one run folder, one recipe, one story.

    petclf train --data data/oxford-iiit-pet                  # or `make train`; resnet34, lr_find, fine-tune
    petclf train --data data/synth --arch resnet18 --size 64 --no-pretrained --epochs 3
    petclf train --resume exports/20250101-120000-resnet34    # continue an interrupted run
    petclf lr-find --data data/oxford-iiit-pet                # plot + suggestion only

    from petclf.config import TrainConfig
    from petclf.train import train
    result = train(TrainConfig(data="data/synth", arch="resnet18", size=64, presize=80, pretrained=False))
    result.learn, result.run_dir, result.metrics

The recipes (`petclf.recipe`): `fastbook` fine-tunes (`petclf.finetune`), `probe` solves a linear head on
the frozen backbone's features (`petclf.probe`); `auto` picks `probe` below `small_data` training images per
class. Every file lands in the run folder (`petclf.export`); `exports/latest` is switched to the run once it
is complete, and only when the run is in petclf's own `exports/`. Every stage shows its progress
(`petclf.progress`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from petclf import distributed
from petclf.callbacks import check_logging
from petclf.config import EXPORTS, TrainConfig, save_config
from petclf.device import Compute, resolve_compute
from petclf.errors import as_typed
from petclf.export import check_finite, export_run, run_groups
from petclf.finetune import FineTune
from petclf.labels import error_kind
from petclf.lrfind import LRFind, lr_find, plot_lr_find
from petclf.probe import Probe  # noqa: F401 - registers the probe recipe (FineTune registers the other)
from petclf.progress import bar_unless, run_clock
from petclf.recipe import build_learner, pick_recipe
from petclf.run import (
    discarded_on_failure,
    has_checkpoint,
    load_checkpoint,
    on_main,
    prepare_run_dir,
    resume_config,
    say,
    settings_given,
    sigterm_as_interrupt,
    update_latest,
)
from petclf.runfiles import RunDir


@dataclass
class TrainResult:
    """What `train` returns: the trained Learner, where its files are, and its metrics.json content."""

    learn: Any
    run_dir: Path
    metrics: dict


def train(cfg: TrainConfig, cbs: list | None = None, latest: bool | None = None) -> TrainResult:
    """Run (or, with `cfg.resume`, continue) a training run and write the whole run directory; `latest`
    beside the run is switched to it when `latest`, or (None) when the run is in petclf's own `exports/`."""
    with run_clock(), sigterm_as_interrupt():
        check_logging(cfg)  # before any work: a missing package is one line, not a failure after lr_find
        distributed.init_process_group()  # only when launched as several processes (accelerate, torchrun)
        fresh = not cfg.resume  # a new folder (a --resume stopped before its checkpoint keeps its own)
        cfg = run_config(cfg)
        compute = resolve_device(cfg)
        with bar_unless(not distributed.is_main(), "verifying images") as progress:  # rank 0 downloads first
            data = distributed.main_first(lambda: load_run_data(cfg, progress))
        run, existed = run_folder(cfg, fresh)
        cfg = replace(cfg, out=str(run.root))
        try:  # a restarted --resume (not `fresh`) keeps its folder whatever happens: the same command works
            with discarded_on_failure(run.root, fresh, existed):
                if fresh:
                    on_main(save_config, cfg, run.config)  # first: it marks the folder as this run's
                on_main(data.report.save, run.root)
                ckpt = load_checkpoint(run.root) if cfg.resume else None
                recipe = pick_recipe(cfg, compute, data, run, ckpt["state"]["recipe"] if ckpt else None)
                learn = recipe.build()
                state, opt_state = recipe.begin(learn, ckpt)
        except KeyboardInterrupt:
            if not has_checkpoint(run.root):
                say("interrupted before the first checkpoint; nothing to keep: run the same command again")
            raise
        try:
            recipe.fit(learn, state, opt_state, list(cbs or []))
            return finish(recipe, learn, state, owns_parent(run.root) if latest is None else latest)
        except KeyboardInterrupt:
            say(as_typed("interrupted; the last checkpoint is kept: continue with "
                         f"petclf train --resume {run.root}"))
            raise


def run_config(cfg: TrainConfig) -> TrainConfig:
    """The run's settings: a resumed run's own config with this machine's settings, and the data paths made
    absolute, so `petclf report` finds them from any folder."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
        cfg = resume_config(run_dir, settings_given(cfg))
        if not has_checkpoint(run_dir):  # stopped before its first checkpoint (kill -9): nothing to continue
            say(f"{run_dir} stopped before its first checkpoint; starting it again from the beginning")
            cfg = replace(cfg, resume=None)
    paths = ("data", "labels", "groups")
    return replace(cfg, **{k: str(Path(v).expanduser().resolve()) for k in paths if (v := getattr(cfg, k))})


def run_folder(cfg: TrainConfig, fresh: bool) -> tuple[RunDir, bool]:
    """The run folder and whether it existed before: a resumed run's own, or a new one that rank 0 names (and
    checks) and every rank then uses."""
    if not fresh:
        return RunDir(Path(cfg.out)), False
    name, existed = prepare_run_dir(cfg) if distributed.is_main() else (None, False)
    return RunDir(Path(distributed.broadcast(str(name) if name else None))), existed


def resolve_device(cfg: TrainConfig) -> Compute:
    """Device, precision and layout of this run on this machine (one GPU per process when distributed)."""
    rank, procs = distributed.local_rank(), distributed.local_world_size()
    return resolve_compute(cfg.device, cfg.precision, cfg.channels_last, cfg.threads, rank, procs)


def load_run_data(cfg: TrainConfig, progress=None):
    """The run's verified, split data, with its groups file checked against the classes before anything is
    built."""
    from petclf.data import load_data

    data = load_data(cfg.data, split=cfg.split, valid_pct=cfg.valid_pct, seed=cfg.seed, progress=progress,
                     layout=cfg.layout, labels=cfg.labels, use_cache=cfg.cache)
    run_groups(cfg, data.vocab)
    return data


def finish(recipe, learn, state, latest: bool = True) -> TrainResult:
    """Metrics and temperature, export, and point `latest` at the run (rank 0; the others get the metrics)."""
    state.done = True
    run = recipe.ctx.run
    if not distributed.is_main():
        return TrainResult(learn, run.root, distributed.broadcast(None))
    with distributed.this_process_only():
        check_finite(learn)
        metrics = recipe.metrics(learn, state)
        export_run(recipe, learn, metrics)
        if not recipe.ctx.cfg.keep_checkpoints:  # the bundle is complete: nothing left to resume
            shutil.rmtree(run.checkpoints, ignore_errors=True)
        if latest:
            update_latest(run.root)
    return TrainResult(learn, run.root, distributed.broadcast(metrics.to_json()))


def owns_parent(run_dir: Path) -> bool:
    """True when the run folder sits in petclf's own `exports/` (where `latest` belongs)."""
    return run_dir.resolve().parent == EXPORTS.resolve()


def next_commands(run_dir: Path, cmd: str = "petclf") -> list[str]:
    """What to run next on a finished run (`cmd`: how the user runs petclf); `--model` is always named, so the
    commands stay true after another run moves `latest`."""
    return [f"{cmd} predict --model {run_dir} photo.jpg", f"{cmd} report --model {run_dir}",
            f"{cmd} serve --model {run_dir}"]


def train_summary(result: TrainResult, cmd: str = "petclf") -> str:
    """The end of a run, said once: the result, the run folder and what it holds, and the next commands."""
    m, run = result.metrics, RunDir(result.run_dir)
    how = m.get("estimate") or "validation split"
    files = (run.weights, run.manifest, run.onnx, run.metrics, run.lr_find, run.export_pkl, run.oof)
    made = [f.name for f in files if f.is_file()]
    latest = run.root.parent / "latest"
    points = f"; {latest} points to it" if latest.exists() and latest.resolve() == run.root.resolve() else ""
    cal = m.get("calibration") or {}
    # the loss the predictions have: a probe head's raw logits are small (T ~ 0.25)
    scaled = (f", {cal['cv_nll_after']:.4f} at the shipped temperature {cal['temperature']:.2f}"
              if cal.get("kept") else "")
    lines = [f"{error_kind(m)} {m['error_rate']:.4f}  accuracy {m['accuracy']:.4f}  "
             f"loss {m['valid_loss']:.4f}{scaled} ({how})",
             *([f"warning: {cal['not_possible']}"] if cal.get("not_possible") else []),
             f"run folder: {run.root} ({', '.join(made)}){points}",
             "next:", *(f"  {c}" for c in next_commands(run.root, cmd))]
    return "\n".join(lines)


def run_lr_find(cfg: TrainConfig, out: Path | None = None) -> tuple[LRFind, Path]:
    """`petclf lr-find`: build data and learner as `train` would, run lr_find, save the plot."""
    with tempfile.TemporaryDirectory() as tmp:
        # lr_find trains by batches at the fine-tune size, whatever the recipe's head
        recipe = pick_recipe(cfg, resolve_device(cfg), load_run_data(cfg), RunDir(Path(tmp)),
                             bs_of=FineTune.name)
        ctx = recipe.ctx
        dls = FineTune(ctx).dataloaders()
        learn = build_learner(ctx.cfg, dls, recipe.head_spec(), ctx.compute, ctx.pretrained, path=Path(tmp))
        found = lr_find(learn, ctx.cfg.lr_find_steps)
    return found, plot_lr_find(found, RunDir(Path(out or cfg.out or EXPORTS)).lr_find)
