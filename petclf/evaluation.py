"""The report's first step: choose the photos to judge as the run split them, and run the bundle over them.

    from petclf.evaluation import evaluate
    ev = evaluate("exports/latest", split="valid")     # Evaluation: logits, targets, losses, open-set signals

`valid` is the run's own split (read typed from its config.yaml: a `--seed 0` run is judged on its seed-0
split), `test` the data's test part, `all` every photo of a new labelled folder, FILE the photos it names. A
probe run's `valid` photos are judged by its out-of-fold outputs (`petclf.oof`): the probe trained on every
one of them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback  # noqa: F401 - patches Learner.no_bar
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy, error_rate
from fastai.torch_core import noop

from petclf.bundle import Manifest, load_network, read_manifest, resolve_bundle_dir
from petclf.config import DEFAULT_MODEL, REPORT_BS, TrainConfig, read_run_config
from petclf.data import LabelledImages, load_data, make_dataloaders
from petclf.device import machine_device
from petclf.errors import PetclfError
from petclf.notapet import Detector
from petclf.oof import oof_outputs, read_oof
from petclf.openset import OpenSet
from petclf.progress import bar_unless
from petclf.runfiles import RunDir


class ReportError(PetclfError):
    """The report cannot be made with these inputs."""


# ---------------------------------------------------------------------------------------------------- the run


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@dataclass
class Run:
    """What the run left beside the bundle; None where absent (a bundle made without `petclf train`)."""

    metrics: dict[str, Any] | None = None  # metrics.json
    config: TrainConfig | None = None  # config.yaml, read typed
    lr_find: Path | None = None  # the lr_find plot
    data_report: dict[str, Any] | None = None  # data_report.json


def read_run(model_dir: str | Path) -> Run:
    """The run's artefacts beside the bundle (metrics, config, lr_find plot, data report)."""
    run = RunDir(Path(model_dir))
    return Run(read_json(run.metrics), read_run_config(run.config), run.lr_find if run.lr_find.is_file() else None,
               read_json(run.data_report))


def recorded_data(manifest: Manifest, run: Run) -> str | None:
    """The data root the run was trained on: config.yaml, else the manifest, else the run's data report."""
    for c in (run.config and run.config.data, manifest.data, (run.data_report or {}).get("root")):
        c = c.get("root") if isinstance(c, dict) else c
        if isinstance(c, str) and c:
            return c
    return None


def resolve_layout(config: TrainConfig | None, data: str | Path | None,
                   labels: str | Path | None) -> tuple[str, str | None]:
    """(layout, labels file) to read the data with: the run's own, unless other data (or labels) are named."""
    cfg = config or TrainConfig()
    own = data is None and labels is None
    return (cfg.layout if own else "auto"), (cfg.labels if own else labels)


def resolve_split(split: str, config: TrainConfig | None) -> tuple[str, float, int]:
    """`valid`: the run's own split; `test`: the data's test part (Pets: the official list); `all`: every
    labelled photo (new data), FILE -> that list: (split, valid_pct, seed)."""
    cfg = config or TrainConfig()  # a bundle made without `petclf train`: the defaults it would have had
    if split in ("valid", "test", "all"):
        return (cfg.split if split == "valid" else split), cfg.valid_pct, cfg.seed
    if not Path(split).is_file():
        raise ReportError(f"--split must be valid, test, all or a file naming the images to evaluate; not "
                          f"found: {split}")
    return split, cfg.valid_pct, cfg.seed


def data_to_judge(split: str, data: str | Path | None, manifest: Manifest, run: Run) -> str | Path | None:
    """The data folder to evaluate: `data`, else the one the run recorded; `--split all` only on other data
    (every photo of the run's own data includes the ones it trained on)."""
    own = recorded_data(manifest, run)
    same = data is not None and own and Path(data).expanduser().resolve() == Path(own).resolve()
    if split == "all" and (data is None or same):
        raise ReportError("--split all judges every photo of a new labelled folder: pass --data FOLDER with "
                          "photos the model never trained on (the run's own data: --split valid or test)")
    return data if data is not None else own


# ---------------------------------------------------------------------------------------------------- the
# learner


@dataclass
class _ModelClasses(LabelledImages):
    """Pets whose vocab is the model's class list, so targets index the model's outputs."""

    classes: list[str] = field(default_factory=list)

    @property
    def vocab(self) -> list[str]:
        """The model's classes, in its output order."""
        return self.classes


def _with_model_vocab(pets: LabelledImages, classes: list[str]) -> LabelledImages:
    """`pets` relabelled in the model's class order; breeds the model does not know are an error."""
    unknown = sorted(set(pets.labels) - set(classes))
    if unknown:
        raise ReportError(f"the data has {len(unknown)} breed(s) this model was not trained on: "
                          f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return _ModelClasses(**{f.name: getattr(pets, f.name) for f in fields(LabelledImages)}, classes=classes)


def make_learner(model_dir: str | Path, pets: LabelledImages, bs: int = REPORT_BS, device: str | None = None,
                 workers: int | None = None, manifest: Manifest | None = None) -> Learner:
    """A fastai Learner over the bundle's network and `pets`, preprocessed exactly as the manifest says."""
    device = machine_device(device or "auto")
    model, m = load_network(model_dir, device, manifest)
    pets = _with_model_vocab(pets, m.class_names)
    dls = make_dataloaders(pets, bs=bs, size=m.size, presize=m.presize, mean=m.mean, std=m.std,
                           device=torch.device(device), workers=workers)
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=[error_rate, accuracy])


def _progress_callback(progress: Callable[[int, int], None], total: int) -> Callback:
    """A fastai callback that reports images done after every batch."""
    class ReportProgress(Callback):
        order = 100

        def before_validate(self) -> None:
            self.done = 0

        def after_batch(self) -> None:
            self.done += len(self.yb[0])
            progress(self.done, total)

    return ReportProgress()


@contextlib.contextmanager
def pooled_features(model: torch.nn.Module, keep: bool) -> Iterator[list[np.ndarray]]:
    """Collect the body's average-pooled features of every batch the network sees (the open-set signals'
    input, as `model.WithFeatures` gives them), in the same forward pass as the logits; nothing when not
    `keep`."""
    from petclf.model import average_pooled

    out: list[np.ndarray] = []
    if not keep:
        yield out
        return
    hook = model[0].register_forward_hook(lambda _m, _i, f: out.append(average_pooled(f).cpu().numpy()))
    try:
        yield out
    finally:
        hook.remove()


def predict_split(learn: Learner, progress: Callable[[int, int], None] | None = None,
                  features: bool = False) -> tuple[np.ndarray | None, ...]:
    """(logits, targets, losses, pooled features or None) over the learner's validation set, in item order."""
    dl = learn.dls.valid
    cbs = [_progress_callback(progress, len(dl.dataset))] if progress else []
    with learn.no_bar(), torch.no_grad(), pooled_features(learn.model, features) as feats:
        logits, targs, losses = learn.get_preds(dl=dl, with_loss=True, act=noop, cbs=cbs)
    return (logits.float().cpu().numpy(), targs.cpu().numpy().astype(int), losses.float().cpu().numpy(),
            np.concatenate(feats) if feats else None)


# ----------------------------------------------------------------------------------------------------
# evaluation


@dataclass
class Evaluation:
    """One pass of a bundle's network over a split: raw outputs, and what is needed to explain them."""

    model_dir: Path
    manifest: Manifest
    run: Run
    learn: Any  # fastai Learner
    pets: LabelledImages
    split: str  # as asked: valid | test | FILE
    split_used: str  # as the data layer applied it: random | official | FILE
    items: list[Path]
    logits: np.ndarray  # N x C raw outputs
    targs: np.ndarray  # N class indices
    losses: np.ndarray  # N cross-entropy losses
    seconds: float  # time of the pass
    features: np.ndarray | None = None  # N x D pooled: only for a bundle with a detector or open-set signals
    detector: Detector | None = None  # the bundle's not-a-pet detector, None when off
    open_set: OpenSet | None = None  # the bundle's open-set signals, None when off

    @property
    def classes(self) -> list[str]:
        """Class names in the model's output order."""
        return self.manifest.class_names


def _load_split(manifest: Manifest, run: Run, split: str, data: str | Path | None,
                labels: str | Path | None, progress: bool) -> tuple[LabelledImages, str]:
    """The data read and split as the run did: (pets, the split as the data layer applied it)."""
    split_used, valid_pct, seed = resolve_split(split, run.config)
    layout, labels = resolve_layout(run.config, data, labels)
    data = data_to_judge(split, data, manifest, run)
    with bar_unless(not progress, "verifying images") as report_progress:
        pets = load_data(data, split=split_used, valid_pct=valid_pct, seed=seed, progress=report_progress,
                         layout=layout, labels=labels)
    return pets, pets.report.split if split == "test" else split_used  # as the data read it: official, ...


def _oof_outputs(oof: dict, items: list[Path]) -> tuple[np.ndarray, ...]:
    """The run's out-of-fold outputs for `items`; one line when the data gained photos since training."""
    try:
        return oof_outputs(oof, items)
    except ValueError as e:
        raise ReportError(f"{e}: the out-of-fold predictions cover only the training photos; pass "
                          "--split FILE naming new photos") from None


def _learner_over(model_dir: Path, pets: LabelledImages, split: str, every_photo: bool, bs: int, device: str | None,
                  workers: int | None, manifest: Manifest) -> Learner:
    """The learner whose validation loader holds the photos to judge: the split's, or every photo (new data;
    a probe's out-of-fold judgement)."""
    every = list(range(len(pets.items)))
    # fastai builds no DataLoaders without training items: new data (`all`) is loaded on a stand-in split
    stand_in = replace(pets, train_idx=every[1:], valid_idx=every[:1]) if split == "all" else pets
    learn = make_learner(model_dir, stand_in, bs=bs, device=device, workers=workers, manifest=manifest)
    if every_photo or split == "all":
        learn.dls.loaders[1] = learn.dls.test_dl(pets.items, with_labels=True)
    return learn


def _outputs(learn: Learner, oof: dict | None, keep: bool, progress: bool,
             split: str) -> tuple[np.ndarray | None, ...]:
    """(logits, targets, losses, pooled features or None): the network's, or a probe's out-of-fold ones (then
    the network passes over the photos only to `keep` their features)."""
    logits = targs = losses = feats = None
    if oof is None or keep:
        with bar_unless(not progress, f"predicting {split}") as report_progress:
            logits, targs, losses, feats = predict_split(learn, report_progress, keep)
    if oof is not None:
        logits, targs, losses = _oof_outputs(oof, list(learn.dls.valid.items))
    return logits, targs, losses, feats


def evaluate(model: str | Path = DEFAULT_MODEL, data: str | Path | None = None, split: str = "valid",
             bs: int = REPORT_BS, device: str | None = None, workers: int | None = None,
             progress: bool = False, labels: str | Path | None = None,
             manifest: Manifest | None = None) -> Evaluation:
    """Load the bundle and the data as its run read and split them; run the network over the chosen split."""
    model_dir = resolve_bundle_dir(model)
    manifest = manifest or read_manifest(model_dir)
    run = read_run(model_dir)
    pets, split_used = _load_split(manifest, run, split, data, labels, progress)
    # a probe trained on every photo of its split: it is judged by its out-of-fold outputs on each
    oof = read_oof(model_dir) if split == "valid" and not pets.valid_is_test else None
    learn = _learner_over(model_dir, pets, split, oof is not None, bs, device, workers, manifest)
    if oof is not None:
        every = list(range(len(pets.items)))
        pets, split_used = replace(pets, train_idx=every, valid_idx=every), "out-of-fold"
    detector, open_set = Detector.load(model_dir, manifest), OpenSet.load(model_dir, manifest)
    keep = detector is not None or open_set is not None  # the answers need each photo's features
    start = time.perf_counter()
    logits, targs, losses, feats = _outputs(learn, oof, keep, progress, split)
    return Evaluation(model_dir, manifest, run, learn, pets, split, split_used, list(learn.dls.valid.items),
                      logits, targs, losses, time.perf_counter() - start, feats, detector, open_set)
