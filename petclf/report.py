"""Interpretation report: where a trained model fails and why, as one self-contained HTML page.

    petclf report --model exports/latest --split valid --out exports/latest/report

    from petclf.report import write_report
    paths = write_report("exports/latest")             # {"html": ..., "json": ..., "dir": ...}

One pass of the model over the split (fastai `Learner.get_preds(with_loss=True)`, with a progress bar) gives the
raw outputs; fastai's `ClassificationInterpretation` and scikit-learn turn them into the numbers; matplotlib draws
the figures, which are saved as PNG and embedded as data URIs in `report.html` (no CDN, opens offline).
`report.json` holds every number. The bundle is only read: its temperature was fitted when it was trained.

Pipeline: `evaluate` (model + data -> outputs), `compute_report` (outputs -> numbers), `draw_figures`
(numbers + model -> PNGs), `render_html` (numbers + PNGs -> page); `write_report` runs all four.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback  # noqa: F401 - patches Learner.no_bar
from fastai.interpret import ClassificationInterpretation
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy, error_rate
from fastai.torch_core import TensorBase, noop

from petclf.bundle import class_groups, load_network, manifest_number, read_manifest, resolve_bundle_dir
from petclf.calibrate import N_BINS, ece, nll, reliability_bins, softmax, wilson
from petclf.config import DEFAULT_MODEL, REPORT_BS, REPORT_MIN_VAL, REPORT_TOP_LOSSES, UNSURE_BELOW, TrainConfig
from petclf.data import Pets, load_pets, make_dataloaders
from petclf.device import machine_device
from petclf.errors import PetclfError
from petclf.image import encode
from petclf.io import check_writable, write_atomic
from petclf.labels import class_noun, error_kind, error_name
from petclf.oof import OOF_NOTE, oof_outputs, read_oof
from petclf.plots import is_number, plot_confusion, plot_history, plot_reliability, png, render_html
from petclf.progress import bar_unless
from petclf.version import __version__

TOP_K = REPORT_TOP_LOSSES
MIN_VAL = REPORT_MIN_VAL
MAX_PAIRS = 12  # most-confused pairs listed with example images
PAIR_EXAMPLES = 3  # example images per confused pair
MAX_LABEL_ERRORS = 24  # likely label errors listed
SMALL_SAMPLE = 5  # a class with fewer evaluated images than this gets a small-sample warning
THUMB = 192  # largest side of top-loss and label-error images, in pixels
THUMB_SMALL = 128  # ... and of the confused pairs' examples, shown smaller


class ReportError(PetclfError):
    """The report cannot be made with these inputs."""


# ---------------------------------------------------------------------------------------------------- the run


def _read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_run(model_dir: str | Path) -> dict[str, Any]:
    """The run's artefacts beside the bundle (metrics, config, lr_find plot, data report); None where absent."""
    from petclf.config import read_run_config

    d = Path(model_dir)
    lr_find = d / "lr_find.png"
    return {"metrics": _read_json(d / "metrics.json"), "config": read_run_config(d / "config.yaml"),
            "lr_find": lr_find if lr_find.is_file() else None, "data_report": _read_json(d / "data_report.json")}


def _recorded_data(manifest: dict, run: dict) -> str | None:
    """The data root the run was trained on: config.yaml, else the manifest, else the run's data report."""
    cfg = run["config"]
    cands = [cfg and cfg.data, manifest.get("data"), (run["data_report"] or {}).get("root")]
    for c in cands:
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


# ---------------------------------------------------------------------------------------------------- evaluation


@dataclass
class _ModelPets(Pets):
    """Pets whose vocab is the model's class list, so targets index the model's outputs."""

    classes: list[str] = field(default_factory=list)

    @property
    def vocab(self) -> list[str]:
        """The model's classes, in its output order."""
        return self.classes


def _with_model_vocab(pets: Pets, classes: list[str]) -> Pets:
    """`pets` relabelled in the model's class order; breeds the model does not know are an error."""
    unknown = sorted(set(pets.labels) - set(classes))
    if unknown:
        raise ReportError(f"the data has {len(unknown)} breed(s) this model was not trained on: "
                          f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return _ModelPets(**{f.name: getattr(pets, f.name) for f in fields(Pets)}, classes=classes)


def make_learner(model_dir: str | Path, pets: Pets, bs: int = REPORT_BS, device: str | None = None,
                 workers: int | None = None):
    """A fastai Learner over the bundle's network and `pets`, preprocessed exactly as the manifest says."""
    device = machine_device(device or "auto")
    model, manifest = load_network(model_dir, device)
    inp = manifest["input"]
    pets = _with_model_vocab(pets, [c["name"] for c in manifest["classes"]])
    dls = make_dataloaders(pets, bs=bs, size=inp["size"], presize=inp["presize"], mean=inp["mean"],
                           std=inp["std"], device=torch.device(device), workers=workers)
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=[error_rate, accuracy])


def _progress_callback(progress: Callable[[int, int], None], total: int):
    """A fastai callback that reports images done after every batch."""
    class ReportProgress(Callback):
        order = 100

        def before_validate(self) -> None:
            self.done = 0

        def after_batch(self) -> None:
            self.done += len(self.yb[0])
            progress(self.done, total)

    return ReportProgress()


@dataclass
class Evaluation:
    """One pass of a bundle's network over a split: raw outputs, and what is needed to explain them."""

    model_dir: Path
    manifest: dict[str, Any]
    run: dict[str, Any]
    learn: Any  # fastai Learner
    pets: Pets
    split: str  # as asked: valid | test | FILE
    split_used: str  # as the data layer applied it: random | official | FILE
    items: list[Path]
    logits: np.ndarray  # N x C raw outputs
    targs: np.ndarray  # N class indices
    losses: np.ndarray  # N cross-entropy losses
    seconds: float  # time of the pass

    @property
    def classes(self) -> list[str]:
        """Class names in the model's output order."""
        return [c["name"] for c in self.manifest["classes"]]


def predict_split(learn, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, ...]:
    """(logits, targets, losses) over the learner's validation set, in item order."""
    dl = learn.dls.valid
    cbs = [_progress_callback(progress, len(dl.dataset))] if progress else []
    with learn.no_bar(), torch.no_grad():
        logits, targs, losses = learn.get_preds(dl=dl, with_loss=True, act=noop, cbs=cbs)
    return logits.float().cpu().numpy(), targs.cpu().numpy().astype(int), losses.float().cpu().numpy()


def evaluate(model: str | Path = DEFAULT_MODEL, data: str | Path | None = None, split: str = "valid",
             bs: int = REPORT_BS, device: str | None = None, workers: int | None = None,
             progress: bool = False, labels: str | Path | None = None) -> Evaluation:
    """Load the bundle and the data the way its run read and split them, and run the network over the chosen split."""
    model_dir = resolve_bundle_dir(model)
    manifest = read_manifest(model_dir)
    run = read_run(model_dir)
    split_used, valid_pct, seed = resolve_split(split, run["config"])
    layout, labels = resolve_layout(run["config"], data, labels)
    data = _data_to_judge(split, data, manifest, run)
    with bar_unless(not progress, "verifying images") as report_progress:
        pets = load_pets(data, split=split_used, valid_pct=valid_pct, seed=seed, progress=report_progress,
                         layout=layout, labels=labels)
    split_used = pets.report.split if split == "test" else split_used  # as the data read it: official, test/, ...
    oof = read_oof(model_dir) if split == "valid" and not pets.valid_is_test else None
    every = list(range(len(pets.items)))
    # fastai builds no DataLoaders without training items: new data (`all`) is loaded on a stand-in split
    stand_in = replace(pets, train_idx=every[1:], valid_idx=every[:1]) if split == "all" else pets
    learn = make_learner(model_dir, stand_in, bs=bs, device=device, workers=workers)
    # every photo is judged: by the model (new data), or by the out-of-fold outputs (a probe trained on each)
    if oof is not None or split == "all":
        learn.dls.loaders[1] = learn.dls.test_dl(pets.items, with_labels=True)
    if oof is not None:
        pets, split_used = replace(pets, train_idx=every, valid_idx=every), "out-of-fold"
    start = time.perf_counter()
    if oof is not None:
        logits, targs, losses = _oof_outputs(oof, list(learn.dls.valid.items))
    else:
        with bar_unless(not progress, f"predicting {split}") as report_progress:
            logits, targs, losses = predict_split(learn, report_progress)
    seconds = time.perf_counter() - start
    return Evaluation(model_dir, manifest, run, learn, pets, split, split_used, list(learn.dls.valid.items),
                      logits, targs, losses, seconds)


def _data_to_judge(split: str, data: str | Path | None, manifest: dict, run: dict) -> str | Path | None:
    """The data folder to evaluate: `data`, else the one the run recorded; `--split all` only on other data
    (every photo of the run's own data includes the ones it trained on)."""
    own = _recorded_data(manifest, run)
    same = data is not None and own and Path(data).expanduser().resolve() == Path(own).resolve()
    if split == "all" and (data is None or same):
        raise ReportError("--split all judges every photo of a new labelled folder: pass --data FOLDER with "
                          "photos the model never trained on (the run's own data: --split valid or test)")
    return data if data is not None else own


def _oof_outputs(oof: dict, items: list[Path]) -> tuple[np.ndarray, ...]:
    """The run's out-of-fold outputs for `items`; one line when the data gained photos since training."""
    try:
        return oof_outputs(oof, items)
    except ValueError as e:
        raise ReportError(f"{e}: the out-of-fold predictions cover only the training photos; pass --split FILE "
                          "naming new photos") from None


# ---------------------------------------------------------------------------------------------------- numbers


class _Interpretation(ClassificationInterpretation):
    """fastai's ClassificationInterpretation over outputs already computed, so the data is read only once."""

    def __init__(self, learn, dl, losses, preds: np.ndarray, targs: np.ndarray):
        super().__init__(learn, dl, losses)
        self.preds, self.targs = preds, targs

    def confusion_matrix(self) -> np.ndarray:
        """Counts, rows actual and columns predicted (fastai's layout, from the stored outputs)."""
        from sklearn.metrics import confusion_matrix

        return confusion_matrix(self.targs, self.preds, labels=list(range(len(self.vocab))))


def interpretation(ev: Evaluation) -> ClassificationInterpretation:
    """fastai's interpretation of the evaluation (confusion matrix, most_confused, top_losses)."""
    losses = TensorBase(torch.as_tensor(ev.losses))
    return _Interpretation(ev.learn, ev.learn.dls.valid, losses, ev.logits.argmax(1), ev.targs)


def group_list(manifest: dict) -> tuple[str | None, list[str] | None]:
    """(what the groups are called, every class's group in the model's output order); (None, None) without groups."""
    name, groups = class_groups(manifest)
    return (name, [groups[c["name"]] for c in manifest["classes"]]) if groups else (None, None)


def display_order(groups: list[str] | None, n: int) -> list[int]:
    """Class indices grouped (Pets: cats, then dogs), each group in model order; model order without groups."""
    return sorted(range(n), key=lambda i: (groups[i], i)) if groups else list(range(n))


def _recorded(metrics: dict | None, key: str) -> Any:
    """`metrics[key]`, or None when the run recorded no metrics."""
    return None if metrics is None else metrics.get(key)


def summary(ev: Evaluation, cm: np.ndarray) -> dict[str, Any]:
    """Headline numbers of the evaluation, beside those `metrics.json` recorded at the end of training."""
    n, classes = len(ev.targs), ev.classes
    group_name, groups = group_list(ev.manifest)
    preds = ev.logits.argmax(1)
    k = min(5, len(classes) - 1)  # top-k says something only for k < the number of classes (and k > 1)
    metrics = ev.run["metrics"]
    acc = float(np.trace(cm) / n)
    top5 = int((np.argsort(-ev.logits, axis=1)[:, :k] == ev.targs[:, None]).any(1).sum()) if k > 1 else None
    same = int((np.array(groups)[preds] == np.array(groups)[ev.targs]).sum()) if groups else None
    return {"arch": ev.manifest["arch"], "model_dir": str(ev.model_dir), "data": str(ev.pets.root),
            "layout": ev.pets.report.layout, "noun": class_noun(group_name),
            "split": ev.split, "split_used": ev.split_used, "n_classes": len(classes),
            "n_images": ev.pets.report.n_images, "n_train": len(ev.pets.train_idx), "n_evaluated": n,
            "input_size": ev.manifest["input"]["size"],
            "accuracy": acc, "error_rate": 1.0 - acc, "error_rate_ci": wilson(n - int(np.trace(cm)), n),
            "error_name": error_name(ev.split, ev.split_used),
            "recorded_error_name": error_kind(metrics) if metrics else None,
            "top5_k": k if k > 1 else None, "top5_accuracy": top5 / n if k > 1 else None,
            "top5_accuracy_ci": wilson(top5, n) if k > 1 else None,
            "group_name": group_name, "group_accuracy": same / n if groups else None,
            "group_accuracy_ci": wilson(same, n) if groups else None,
            "valid_loss": float(ev.losses.mean()),
            "recorded": {key: _recorded(metrics, key) for key in ("error_rate", "accuracy", "valid_loss",
                                                                  "train_seconds", "images_per_second")},
            "agrees_with_recorded": _agrees(metrics, 1.0 - acc, n) if ev.split == "valid" else None,
            "note": OOF_NOTE if ev.split_used == "out-of-fold" else None}


def _agrees(metrics: dict | None, error_rate: float, n: int) -> bool | None:
    """Whether the recorded error rate matches this one to within one image (mixed precision may flip one)."""
    recorded = _recorded(metrics, "error_rate")
    return None if not is_number(recorded) else abs(recorded - error_rate) <= 1.5 / n


def training(run: dict) -> dict[str, Any]:
    """What the run recorded about training: per-epoch history, learning rate, lr_find; None where not recorded."""
    m = run["metrics"] or {}
    lr_find_s = (m.get("lr_find") or {}).get("seconds")
    fit_s = m.get("train_seconds")
    return {"metrics_recorded": run["metrics"] is not None, "history": m.get("history") or None, "lr": m.get("lr"),
            "lr_find": m.get("lr_find"), "lr_find_plot": run["lr_find"] is not None,
            "train_seconds": fit_s + (lr_find_s or 0.0) if fit_s is not None else None, "fit_seconds": fit_s,
            "lr_find_seconds": lr_find_s,
            "config": run["config"] and run["config"].to_dict(), "recipe": m.get("recipe"),
            "probe": m.get("probe")}


def confusion(cm: np.ndarray, classes: list[str], group_name: str | None, groups: list[str] | None) -> dict[str, Any]:
    """The confusion matrix in display order (by group; Pets: cats, then dogs): counts and row-normalised rates."""
    order = display_order(groups, len(classes))
    counts = cm[np.ix_(order, order)]
    rows = counts.sum(1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    return {"classes": [classes[i] for i in order], "group_name": group_name,
            "groups": [groups[i] for i in order] if groups else None,
            "counts": counts.tolist(), "row_normalised": np.round(rates, 4).tolist(),
            "total": int(counts.sum()), "correct": int(np.trace(counts))}


def _examples(ev: Evaluation, actual: int, predicted: int, n: int) -> list[int]:
    """Indices of up to `n` images of `actual` predicted as `predicted`, highest loss first."""
    idx = np.flatnonzero((ev.targs == actual) & (ev.logits.argmax(1) == predicted))
    return [int(i) for i in idx[np.argsort(-ev.losses[idx], kind="stable")][:n]]


def most_confused(interp, ev: Evaluation, min_val: int = MIN_VAL) -> list[dict[str, Any]]:
    """fastai's `most_confused(min_val)` pairs; the first MAX_PAIRS with example images."""
    pos = {c: i for i, c in enumerate(ev.classes)}
    pairs = []
    for rank, (a, p, count) in enumerate(interp.most_confused(min_val)):
        ex = _examples(ev, pos[a], pos[p], PAIR_EXAMPLES) if rank < MAX_PAIRS else []
        pairs.append({"actual": a, "predicted": p, "count": int(count),
                      "examples": [{"index": i, "file": ev.items[i].name, "loss": float(ev.losses[i]),
                                    "image": f"confused/{rank + 1:02d}_{j + 1}.png"} for j, i in enumerate(ex)]})
    return pairs


def _item(ev: Evaluation, probs: np.ndarray, i: int) -> dict[str, Any]:
    """One image's file, labels, loss and probabilities."""
    p = int(probs[i].argmax())
    return {"index": int(i), "file": ev.items[i].name, "path": str(ev.items[i]),
            "actual": ev.classes[ev.targs[i]], "predicted": ev.classes[p], "loss": float(ev.losses[i]),
            "probability": float(probs[i, p]), "actual_probability": float(probs[i, ev.targs[i]])}


def top_losses(interp, ev: Evaluation, probs: np.ndarray, k: int = TOP_K) -> list[dict[str, Any]]:
    """fastai's `top_losses(k)`: the images the model got most wrong, with names of their image and Grad-CAM."""
    _, idx = interp.top_losses(min(k, len(ev.targs)))
    return [{**_item(ev, probs, int(i)), "image": f"top_losses/{r + 1:02d}.png",
             "cam": f"top_losses/{r + 1:02d}_cam.png"} for r, i in enumerate(idx.tolist())]


def per_class(ev: Evaluation) -> dict[str, Any]:
    """Precision, recall (each with its 95 % Wilson interval), F1 and support per class, worst F1 first; None (n/a)
    where a class has no image (recall) or no prediction (precision); `small` where it has under SMALL_SAMPLE."""
    from sklearn.metrics import precision_recall_fscore_support

    labels, preds = list(range(len(ev.classes))), ev.logits.argmax(1)
    _, groups = group_list(ev.manifest)
    rows = []
    for i in labels:
        tp, support, predicted = (int(((preds == i) & (ev.targs == i)).sum()), int((ev.targs == i).sum()),
                                  int((preds == i).sum()))
        recall = tp / support if support else None
        precision = tp / predicted if predicted else None
        f1 = 2 * tp / (support + predicted) if support and predicted else None
        rows.append({"class": ev.classes[i], "group": groups[i] if groups else None, "precision": precision,
                     "precision_ci": wilson(tp, predicted), "recall": recall, "recall_ci": wilson(tp, support),
                     "f1": f1, "support": support, "small": 0 < support < SMALL_SAMPLE})
    rows.sort(key=lambda row: (row["support"] == 0, row["f1"] or 0.0, row["recall"] or 0.0, -row["support"]))
    avg = {}
    for kind in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(ev.targs, preds, labels=labels, average=kind,
                                                        zero_division=0)
        avg[kind] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    return {"classes": rows, "average": avg, "small_sample": SMALL_SAMPLE,
            "n_small": sum(r["small"] for r in rows), "n_absent": sum(r["support"] == 0 for r in rows)}


def calibration(ev: Evaluation, n_bins: int = N_BINS) -> dict[str, Any]:
    """ECE and NLL before and after the bundle's temperature (fitted at the end of training on the validation split,
    cross-validated there, and kept only when it helped); the report never refits it nor writes into the model."""
    t = manifest_number(ev.manifest, "temperature", 1.0)
    recorded = (ev.run["metrics"] or {}).get("calibration") or ev.manifest.get("calibration")
    before, after = softmax(ev.logits, axis=1), softmax(ev.logits / t, axis=1)
    return {"n_bins": n_bins, "temperature": t, "recorded": recorded,
            "source": "the bundle's, fitted on the validation split at the end of training" if recorded
            else "the bundle's (how it was chosen was not recorded)",
            "ece_before": ece(before, ev.targs, n_bins), "ece_after": ece(after, ev.targs, n_bins),
            "nll_before": nll(ev.logits, ev.targs), "nll_after": nll(ev.logits, ev.targs, t),
            "bins_before": reliability_bins(before, ev.targs, n_bins),
            "bins_after": reliability_bins(after, ev.targs, n_bins)}


def answers(ev: Evaluation, probs: np.ndarray) -> dict[str, Any]:
    """How the evaluated photos were answered from their calibrated `probs` at the bundle's sure threshold."""
    from petclf.verdict import held_out_answers

    sure = manifest_number(ev.manifest, "unsure_below", UNSURE_BELOW)
    return held_out_answers(probs, ev.targs, group_list(ev.manifest)[1], sure)


def label_issues(ev: Evaluation, probs: np.ndarray) -> list[dict[str, Any]]:
    """Images whose label is likely wrong, by confident learning (cleanlab's `find_label_issues`, Northcutt et al.):
    a per-class confidence threshold learnt from the split itself, rather than "the model was very wrong", which
    lists the model's own mistakes. Needs out-of-sample probabilities: images the model was not trained on.
    Found on the raw outputs; each entry shows `probs` (the calibrated ones)."""
    import warnings

    from cleanlab.filter import find_label_issues

    present = np.unique(ev.targs)
    if len(present) < 2:
        return []
    column = {c: j for j, c in enumerate(present)}  # classes absent from the split cannot be anyone's label here
    raw = softmax(ev.logits, axis=1)  # the finder was checked on the network's own outputs (T = 1)
    p = raw[:, present] / raw[:, present].sum(1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "too few examples in class ...": the report says the split is small
        idx = find_label_issues(np.array([column[t] for t in ev.targs]), p, return_indices_ranked_by="self_confidence")
    return [{**_item(ev, probs, int(i)), "image": f"label_errors/{r + 1:02d}.png"}
            for r, i in enumerate(idx[:MAX_LABEL_ERRORS])]


def data_quality(ev: Evaluation, probs: np.ndarray) -> dict[str, Any]:
    """Files the data layer skipped (as the run recorded them, else as found now) and likely label errors."""
    from dataclasses import asdict

    recorded = ev.run["data_report"]
    if recorded is not None and Path(recorded.get("root", "")).resolve() != Path(ev.pets.root).resolve():
        recorded = None  # the run was trained on other data; what counts is the data evaluated here
    dr = recorded if recorded is not None else asdict(ev.pets.report)
    return {"source": "the run's data_report.json" if recorded is not None else "this report's scan of the data",
            "skipped": [{"file": Path(r["path"]).name, "path": r["path"], "reason": r.get("reason", "")}
                        for r in dr.get("skipped", [])],
            "n_converted": len(dr.get("converted", [])), "unlabelled": [Path(p).name for p in dr.get("unlabelled", [])],
            "warnings": dr.get("warnings", []),
            "label_errors": label_issues(ev, probs), "label_error_method": "confident learning (cleanlab)"}


def compute_report(ev: Evaluation, min_val: int = MIN_VAL, top_k: int = TOP_K) -> dict[str, Any]:
    """Every number of the report, as plain JSON-ready data."""
    interp = interpretation(ev)
    cm = interp.confusion_matrix()
    t = manifest_number(ev.manifest, "temperature", 1.0)
    probs = softmax(ev.logits / t, axis=1)  # calibrated, as predict and the demo show them
    n = len(ev.targs)
    read = ev.split_used == "out-of-fold"  # no forward pass: the run's out-of-fold outputs were read
    return {"petclf_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "summary": summary(ev, cm), "training": training(ev.run),
            "confusion": confusion(cm, ev.classes, *group_list(ev.manifest)),
            "most_confused": most_confused(interp, ev, min_val), "min_val": min_val,
            "top_losses": top_losses(interp, ev, probs, top_k), "per_class": per_class(ev),
            "calibration": calibration(ev), "answers": answers(ev, probs), "data_quality": data_quality(ev, probs),
            "probability_temperature": t,
            "timing": {"device": str(ev.learn.dls.device), "images": n, "read_out_of_fold": read,
                       "inference_seconds": None if read else ev.seconds,
                       "images_per_second": n / ev.seconds if ev.seconds > 0 and not read else None}}


# ---------------------------------------------------------------------------------------------------- figures

def _inputs(learn, items: list[Path]) -> torch.Tensor:
    """The preprocessed tensors of `items`, exactly as validation saw them."""
    dl = learn.dls.test_dl(items, num_workers=0)
    return torch.cat([b[0] for b in dl])


def _to_image(x: torch.Tensor, mean: list[float], std: list[float]):
    """A normalised 3xHxW tensor back to a PIL image."""
    from PIL import Image

    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    a = ((x.detach().cpu().float() * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(a)


def _thumbpng(img, side: int = THUMB) -> bytes:
    """`img` scaled so its longest side is at most `side` pixels, as PNG bytes."""
    img = img.copy()
    img.thumbnail((side, side))
    return encode(img, "PNG", optimize=True)


def example_images(ev: Evaluation, entries: list[dict[str, Any]], cam: bool = False,
                   side: int = THUMB) -> dict[str, bytes]:
    """PNG thumbnails for report entries (`index`, `image`), plus their Grad-CAM for the predicted class (`cam`)."""
    from petclf.cam import gradcam, overlay

    if not entries:
        return {}
    inp = ev.manifest["input"]
    x = _inputs(ev.learn, [ev.items[e["index"]] for e in entries])
    images = [_to_image(xi, inp["mean"], inp["std"]) for xi in x]
    out = {e["image"]: _thumbpng(img, side) for e, img in zip(entries, images, strict=True)}
    if cam:
        pos = {c: i for i, c in enumerate(ev.classes)}
        model = ev.learn.model
        heat = gradcam(model, x.to(next(model.parameters()).device), [pos[e["predicted"]] for e in entries])
        cams = [overlay(img, h) for img, h in zip(images, heat, strict=True)]
        out.update({e["cam"]: _thumbpng(c, side) for e, c in zip(entries, cams, strict=True)})
    return out


def draw_figures(report: dict[str, Any], ev: Evaluation) -> dict[str, bytes]:
    """Every figure of the report as {relative file name: PNG bytes}."""
    figures = {"confusion_matrix.png": png(plot_confusion(report["confusion"])),
               "reliability.png": png(plot_reliability(report["calibration"]))}
    if report["training"]["history"]:
        figures["training_curves.png"] = png(plot_history(report["training"]["history"]))
    if ev.run["lr_find"] is not None:
        figures["lr_find.png"] = ev.run["lr_find"].read_bytes()
    figures.update(example_images(ev, report["top_losses"], cam=True))
    figures.update(example_images(ev, [e for p in report["most_confused"] for e in p["examples"]], side=THUMB_SMALL))
    figures.update(example_images(ev, report["data_quality"]["label_errors"]))
    return figures


# ---------------------------------------------------------------------------------------------------- output


def _remove_old_figures(out: Path) -> None:
    """Delete the figures an earlier report in `out` listed, so none outlives the report that made it."""
    old = _read_json(out / "report.json") or {}
    for rel in old.get("figures", []):
        path = (out / rel).resolve()
        if path.suffix == ".png" and (out / "figures").resolve() in path.parents:
            path.unlink(missing_ok=True)


def save_outputs(report: dict[str, Any], figures: dict[str, bytes], out: str | Path) -> dict[str, Path]:
    """Write figures (PNG), `report.json` and `report.html` into `out`; returns their paths."""
    out = Path(out)
    _remove_old_figures(out)
    for name, data in figures.items():
        (out / "figures" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "figures" / name).write_bytes(data)
    report = {**report, "figures": sorted(f"figures/{name}" for name in figures)}
    json_path = write_atomic(out / "report.json", json.dumps(report, indent=1))
    html_path = write_atomic(out / "report.html", render_html(report, figures))
    return {"dir": out, "html": html_path, "json": json_path}


def write_report(model: str | Path = DEFAULT_MODEL, data: str | Path | None = None, split: str = "valid",
                 out: str | Path | None = None, bs: int = REPORT_BS, device: str | None = None,
                 workers: int | None = None, min_val: int = MIN_VAL, top_k: int = TOP_K,
                 progress: bool = False, labels: str | Path | None = None) -> dict[str, Path]:
    """Evaluate, compute, draw and write the report (default `out`: MODEL/report); the model folder's files are
    only read."""
    start = time.perf_counter()
    model_dir = resolve_bundle_dir(model)
    read_manifest(model_dir)  # a missing or corrupt model is reported before anything else
    out = check_writable(out if out is not None else model_dir / "report")  # before the long part, not after it
    ev = evaluate(model_dir, data, split, bs=bs, device=device, workers=workers, progress=progress, labels=labels)
    report = compute_report(ev, min_val=min_val, top_k=top_k)
    with bar_unless(not progress, "drawing the figures (Grad-CAM of the top losses)"):
        figures = draw_figures(report, ev)
    report["timing"]["total_seconds"] = time.perf_counter() - start
    return save_outputs(report, figures, out)
