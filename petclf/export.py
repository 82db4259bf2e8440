"""A finished run's files: the bundle (weights + manifest), examples, model.onnx, export.pkl, then
metrics.json, the last file written (a run folder with it is complete). Recipe-neutral: what differs, it
asks the recipe.

    export_run(recipe, learn, metrics)      # recipe: `petclf.recipe.Recipe`; metrics: `RunMetrics`
"""

from __future__ import annotations

import json
import math
from datetime import datetime

import torch

from petclf import distributed
from petclf.config import UNSURE_BELOW, TrainConfig
from petclf.io import atomic_path, write_atomic
from petclf.progress import stage
from petclf.runfiles import RunDir, RunMetrics


class TrainingDiverged(RuntimeError):
    """The run ended with weights or a loss that are not finite numbers: nothing is exported (exit code 1)."""


def check_finite(learn) -> None:
    """Refuse to export a network with NaN or infinite weights (a learning rate too high, fp16 overflow)."""
    bad = [k for k, v in distributed.unwrap(learn.model).state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingDiverged(f"training diverged: {len(bad)} weight tensors are not finite (e.g. "
                               f"{bad[0]}); nothing was exported and `latest` is unchanged; try a lower --lr")


def export_run(recipe, learn, metrics: RunMetrics) -> None:
    """Bundle (weights + manifest), examples, model.onnx, export.pkl and metrics.json; then the run is
    complete. A validation loss that is not finite exports nothing."""
    from petclf.bundle import write_bundle
    from petclf.data import save_examples

    if not math.isfinite(metrics.valid_loss):
        raise TrainingDiverged("training diverged: the validation loss is not finite; nothing was exported "
                               "and `latest` is unchanged; try a lower --lr")
    run = recipe.ctx.run
    manifest = run_manifest(recipe, list(learn.dls.vocab), metrics)
    with stage("export (model.safetensors, model.json, examples)", total=1, kind="export") as s:
        write_bundle(learn.model, run.root, manifest)
        save_examples(recipe.ctx.data, run.examples, every=not recipe.holds_out)
        s.advance()
    with stage("ONNX export and check against torch", total=1, kind="onnx") as s:
        s.info = export_onnx_quietly(run)
        s.advance()
    with atomic_path(run.export_pkl) as tmp:  # absolute: fastai joins a relative name onto learn.path
        learn.export(tmp)
    write_atomic(run.metrics, json.dumps(metrics.to_json(), indent=1))


def run_manifest(recipe, vocab: list[str], metrics: RunMetrics) -> dict:
    """model.json's fields: the network and its preprocessing, the data, the metrics and the recipe's
    entries."""
    from petclf.bundle import make_manifest

    ctx = recipe.ctx
    data = ctx.data
    group_name, groups = run_groups(ctx.cfg, vocab)
    sure = (metrics.probe or {}).get("sure_below")  # a probe's, from its out-of-fold predictions
    extra = {"metrics": {"error_rate": metrics.error_rate, "accuracy": metrics.accuracy,
                         "valid_loss": metrics.valid_loss},
             "trained_at": datetime.now().astimezone().isoformat(timespec="seconds"),
             "data": {"root": str(data.root), "layout": data.report.layout, "split": recipe.split_words(),
                      "sizes": recipe.data_sizes()},
             "temperature": metrics.calibration["temperature"], "calibration": metrics.calibration,
             "recipe": metrics.recipe, "not_a_pet": metrics.not_a_pet, "open_set": metrics.open_set,
             "unsure_below": UNSURE_BELOW if sure is None else sure}
    size, presize = recipe.sizes()
    return make_manifest(ctx.cfg.arch, recipe.head_spec(), vocab, size, presize, ctx.mean, ctx.std,
                         groups=groups, group_name=group_name, **extra)


def run_groups(cfg: TrainConfig, vocab: list[str]) -> tuple[str | None, dict[str, str] | None]:
    """(group name, {class: group}) from `cfg.groups`, or (None, None): Pets' built-in groups, or none."""
    from petclf.layouts import read_groups

    return read_groups(cfg.groups, vocab) if cfg.groups else (None, None)


def export_onnx_quietly(run: RunDir) -> str:
    """model.onnx + its checksum file beside the bundle (`load_model` prefers it on CPU); a failure is only
    said. Returns what happened, in words."""
    from petclf.onnx import export_onnx, match_summary

    try:
        info = export_onnx(run.root)
    except Exception as e:  # noqa: BLE001 - the run is good without ONNX; torch serves it
        return (f"skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "predict/serve will use torch")
    return f"wrote {info['file']} ({match_summary(info)})"
