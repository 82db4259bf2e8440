"""The report's numbers, computed from one `Evaluation` (no figures, no page): plain JSON-ready data.

    from petclf.report_numbers import compute_report
    numbers = compute_report(evaluate("exports/latest"))   # summary, confusion, per_class, answers, ...

fastai's `ClassificationInterpretation` (confusion matrix, most confused, top losses), scikit-learn (per-class
precision and recall), cleanlab (likely label errors) and petclf's own calibration and answer rules
(`petclf.calibrate`, `petclf.verdict`) do the work; every probability shown is the calibrated one predict
shows.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.interpret import ClassificationInterpretation
from fastai.torch_core import TensorBase

from petclf.bundle import Manifest, class_groups
from petclf.calibrate import N_BINS, ece, nll, reliability_bins, softmax, wilson
from petclf.config import REPORT_MIN_VAL, REPORT_TOP_LOSSES
from petclf.evaluation import Evaluation, Run
from petclf.labels import class_noun, error_kind, error_name
from petclf.oof import OOF_NOTE
from petclf.plots import is_number
from petclf.version import __version__

TOP_K = REPORT_TOP_LOSSES
MIN_VAL = REPORT_MIN_VAL
MAX_PAIRS = 12  # most-confused pairs listed with example images
PAIR_EXAMPLES = 3  # example images per confused pair
MAX_LABEL_ERRORS = 24  # likely label errors listed
MAX_WRONG_ANSWERS = 24  # photos of the model's own classes answered "another breed" or "not a pet", listed
SMALL_SAMPLE = 5  # a class with fewer evaluated images than this gets a small-sample warning
ANSWER_KINDS = ("known_sure", "known_unsure", "other", "not_a_pet", "none")  # the open-set section's counts


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


def group_list(manifest: Manifest) -> tuple[str | None, list[str] | None]:
    """(what the groups are called, each class's group in output order); (None, None) without groups."""
    name, groups = class_groups(manifest)
    return (name, [groups[c] for c in manifest.class_names]) if groups else (None, None)


def display_order(groups: list[str] | None, n: int) -> list[int]:
    """Class indices by group (Pets: cats, then dogs), each group in model order; model order without."""
    return sorted(range(n), key=lambda i: (groups[i], i)) if groups else list(range(n))


def _recorded(metrics: dict | None, key: str) -> Any:
    """`metrics[key]`, or None when the run recorded no metrics."""
    return None if metrics is None else metrics.get(key)


def _rate(hits: int | None, n: int, name: str) -> dict[str, Any]:
    """{name: hits / n, name_ci: its 95 % Wilson interval}; None for both without a count."""
    return {name: None if hits is None else hits / n, f"{name}_ci": None if hits is None else wilson(hits, n)}


def _other_accuracies(ev: Evaluation) -> dict[str, Any]:
    """Top-k accuracy (k below the number of classes) and group accuracy (Pets: species), with intervals."""
    n, preds = len(ev.targs), ev.logits.argmax(1)
    group_name, groups = group_list(ev.manifest)
    k = min(5, len(ev.classes) - 1)  # top-k says something only for k < the number of classes (and k > 1)
    top = int((np.argsort(-ev.logits, axis=1)[:, :k] == ev.targs[:, None]).any(1).sum()) if k > 1 else None
    same = int((np.array(groups)[preds] == np.array(groups)[ev.targs]).sum()) if groups else None
    return {"top5_k": k if k > 1 else None, **_rate(top, n, "top5_accuracy"), "group_name": group_name,
            **_rate(same, n, "group_accuracy")}


def summary(ev: Evaluation, cm: np.ndarray) -> dict[str, Any]:
    """Headline numbers of the evaluation, beside those `metrics.json` recorded at the end of training."""
    n, metrics = len(ev.targs), ev.run.metrics
    acc = float(np.trace(cm) / n)
    recorded = ("error_rate", "accuracy", "valid_loss", "train_seconds", "images_per_second")
    return {"arch": ev.manifest.arch, "model_dir": str(ev.model_dir), "data": str(ev.pets.root),
            "layout": ev.pets.report.layout, "noun": class_noun(group_list(ev.manifest)[0]),
            "split": ev.split, "split_used": ev.split_used, "n_classes": len(ev.classes),
            "n_images": ev.pets.report.n_images, "n_train": len(ev.pets.train_idx), "n_evaluated": n,
            "input_size": ev.manifest.size,
            "accuracy": acc, "error_rate": 1.0 - acc, "error_rate_ci": wilson(n - int(np.trace(cm)), n),
            "error_name": error_name(ev.split, ev.split_used),
            "recorded_error_name": error_kind(metrics) if metrics else None,
            **_other_accuracies(ev), "valid_loss": float(ev.losses.mean()),
            "recorded": {key: _recorded(metrics, key) for key in recorded},
            "agrees_with_recorded": _agrees(metrics, 1.0 - acc, n) if ev.split == "valid" else None,
            "note": OOF_NOTE if ev.split_used == "out-of-fold" else None}


def _agrees(metrics: dict | None, error_rate: float, n: int) -> bool | None:
    """Whether the recorded error rate matches this one to within one image (mixed precision may flip one)."""
    recorded = _recorded(metrics, "error_rate")
    return None if not is_number(recorded) else abs(recorded - error_rate) <= 1.5 / n


def training(run: Run) -> dict[str, Any]:
    """What the run recorded of training: per-epoch history, learning rate, lr_find; None where absent."""
    m = run.metrics or {}
    lr_find_s = (m.get("lr_find") or {}).get("seconds")
    fit_s = m.get("train_seconds")
    return {"metrics_recorded": run.metrics is not None, "history": m.get("history") or None,
            "lr": m.get("lr"), "lr_find": m.get("lr_find"), "lr_find_plot": run.lr_find is not None,
            "train_seconds": fit_s + (lr_find_s or 0.0) if fit_s is not None else None, "fit_seconds": fit_s,
            "lr_find_seconds": lr_find_s,
            "config": run.config and run.config.to_dict(), "recipe": m.get("recipe"),
            "probe": m.get("probe")}


def confusion(cm: np.ndarray, classes: list[str], group_name: str | None,
              groups: list[str] | None) -> dict[str, Any]:
    """The confusion matrix in display order (by group; Pets: cats, dogs): counts and row-normalised rates."""
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
        examples = [{"index": i, "file": ev.items[i].name, "loss": float(ev.losses[i]),
                     "image": f"confused/{rank + 1:02d}_{j + 1}.png"} for j, i in enumerate(ex)]
        pairs.append({"actual": a, "predicted": p, "count": int(count), "examples": examples})
    return pairs


def _item(ev: Evaluation, probs: np.ndarray, i: int) -> dict[str, Any]:
    """One image's file, labels, loss and probabilities."""
    p = int(probs[i].argmax())
    return {"index": int(i), "file": ev.items[i].name, "path": str(ev.items[i]),
            "actual": ev.classes[ev.targs[i]], "predicted": ev.classes[p], "loss": float(ev.losses[i]),
            "probability": float(probs[i, p]), "actual_probability": float(probs[i, ev.targs[i]])}


def top_losses(interp, ev: Evaluation, probs: np.ndarray, k: int = TOP_K) -> list[dict[str, Any]]:
    """fastai's `top_losses(k)`: the images the model got most wrong, with their image and Grad-CAM names."""
    _, idx = interp.top_losses(min(k, len(ev.targs)))
    return [{**_item(ev, probs, int(i)), "image": f"top_losses/{r + 1:02d}.png",
             "cam": f"top_losses/{r + 1:02d}_cam.png"} for r, i in enumerate(idx.tolist())]


def per_class(ev: Evaluation) -> dict[str, Any]:
    """Precision, recall (each with its 95 % Wilson interval), F1 and support per class, worst F1 first; None
    (n/a) where a class has no image (recall) or no prediction (precision); `small` where it has under
    SMALL_SAMPLE."""
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
                     "precision_ci": wilson(tp, predicted), "recall": recall,
                     "recall_ci": wilson(tp, support), "f1": f1, "support": support,
                     "small": 0 < support < SMALL_SAMPLE})
    rows.sort(key=lambda row: (row["support"] == 0, row["f1"] or 0.0, row["recall"] or 0.0, -row["support"]))
    avg = {}
    for kind in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(ev.targs, preds, labels=labels, average=kind,
                                                        zero_division=0)
        avg[kind] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    return {"classes": rows, "average": avg, "small_sample": SMALL_SAMPLE,
            "n_small": sum(r["small"] for r in rows), "n_absent": sum(r["support"] == 0 for r in rows)}


def calibration(ev: Evaluation, n_bins: int = N_BINS) -> dict[str, Any]:
    """ECE and NLL before and after the bundle's temperature (fitted at the end of training on the validation
    split, cross-validated there, and kept only when it helped); the report never refits it nor writes into
    the model."""
    t = ev.manifest.temperature
    recorded = (ev.run.metrics or {}).get("calibration") or ev.manifest.calibration
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

    return held_out_answers(probs, ev.targs, group_list(ev.manifest)[1], ev.manifest.unsure_below)


def label_issues(ev: Evaluation, probs: np.ndarray) -> list[dict[str, Any]]:
    """Images whose label is likely wrong, by confident learning (cleanlab's `find_label_issues`, Northcutt et
    al.): a per-class confidence threshold learnt from the split itself, rather than "the model was very
    wrong", which lists the model's own mistakes. Needs out-of-sample probabilities: images the model was not
    trained on. Found on the raw outputs; each entry shows `probs` (the calibrated ones)."""
    import warnings

    from cleanlab.filter import find_label_issues

    present = np.unique(ev.targs)
    if len(present) < 2:
        return []
    column = {c: j for j, c in enumerate(present)}  # a class absent from the split is no one's label here
    raw = softmax(ev.logits, axis=1)  # the finder was checked on the network's own outputs (T = 1)
    p = raw[:, present] / raw[:, present].sum(1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "too few examples in class ...": the report says the split is small
        idx = find_label_issues(np.array([column[t] for t in ev.targs]), p,
                                return_indices_ranked_by="self_confidence")
    return [{**_item(ev, probs, int(i)), "image": f"label_errors/{r + 1:02d}.png"}
            for r, i in enumerate(idx[:MAX_LABEL_ERRORS])]


def data_quality(ev: Evaluation, probs: np.ndarray) -> dict[str, Any]:
    """Files the data layer skipped (as the run recorded them, else as found now) and likely label errors."""
    from dataclasses import asdict

    recorded = ev.run.data_report
    if recorded is not None and Path(recorded.get("root", "")).resolve() != Path(ev.pets.root).resolve():
        recorded = None  # the run was trained on other data; what counts is the data evaluated here
    dr = recorded if recorded is not None else asdict(ev.pets.report)
    source = "the run's data_report.json" if recorded is not None else "this report's scan of the data"
    return {"source": source,
            "skipped": [{"file": Path(r["path"]).name, "path": r["path"], "reason": r.get("reason", "")}
                        for r in dr.get("skipped", [])],
            "n_converted": len(dr.get("converted", [])),
            "unlabelled": [Path(p).name for p in dr.get("unlabelled", [])],
            "warnings": dr.get("warnings", []),
            "label_errors": label_issues(ev, probs), "label_error_method": "confident learning (cleanlab)"}


def compute_report(ev: Evaluation, min_val: int = MIN_VAL, top_k: int = TOP_K) -> dict[str, Any]:
    """Every number of the report, as plain JSON-ready data."""
    interp = interpretation(ev)
    cm = interp.confusion_matrix()
    t = ev.manifest.temperature
    probs = softmax(ev.logits / t, axis=1)  # calibrated, as predict and the demo show them
    n = len(ev.targs)
    read = ev.split_used == "out-of-fold"  # no forward pass: the run's out-of-fold outputs were read
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"petclf_version": __version__, "created": created,
            "summary": summary(ev, cm), "training": training(ev.run),
            "confusion": confusion(cm, ev.classes, *group_list(ev.manifest)),
            "most_confused": most_confused(interp, ev, min_val), "min_val": min_val,
            "top_losses": top_losses(interp, ev, probs, top_k), "per_class": per_class(ev),
            "calibration": calibration(ev), "answers": answers(ev, probs),
            "open_set": open_set_answers(ev, probs), "data_quality": data_quality(ev, probs),
            "probability_temperature": t,
            "timing": {"device": str(ev.learn.dls.device), "images": n, "read_out_of_fold": read,
                       "inference_seconds": None if read else ev.seconds,
                       "images_per_second": n / ev.seconds if ev.seconds > 0 and not read else None}}


# ---------------------------------------------------------------------------------------------------- open
# set


def signals_off(manifest: Manifest) -> str:
    """Why a bundle's photos get no open-set answers: its entries' own reasons."""
    def why(entry: dict | None, name: str) -> str:
        reason = (entry or {}).get("why") or ("" if entry else "not recorded: made before it existed")
        return f"{name} off ({reason})" if reason else f"{name} off"

    return "; ".join((why(manifest.open_set, "open-set signals"),
                      why(manifest.not_a_pet, "not-a-pet detector")))


def photo_verdicts(ev: Evaluation, probs: np.ndarray) -> list:
    """Each judged photo's `Verdict` from its calibrated `probs` (columns in the model's class order) and its
    features' signals, by the very rules `petclf predict` and the demo use (`Predictor.verdict`)."""
    from petclf.predict import Predictor, signal_rows

    answerer = Predictor(None, ev.manifest, detector=ev.detector, open_set=ev.open_set)  # no network: rules only
    rows = signal_rows(ev.features, ev.detector, ev.open_set, probs.argmax(1))
    return [answerer.verdict(p, row) for p, row in zip(probs, rows, strict=True)]


def answer_kind(v) -> str:
    """One of ANSWER_KINDS for a `Verdict`."""
    return ("known_sure" if v.breed_sure else "known_unsure") if v.answer == "known" else v.answer


def open_set_answers(ev: Evaluation, probs: np.ndarray) -> dict[str, Any]:
    """How many judged photos got each answer (a known class sure or unsure, another breed of a known group,
    not a pet; `none`: a detector-only bundle's "none of the classes"), and the photos of the model's own
    classes answered otherwise; `on: false` and why for a bundle without the signals."""
    if ev.features is None:
        return {"on": False, "why": signals_off(ev.manifest)}
    verdicts = photo_verdicts(ev, probs)
    kinds = [answer_kind(v) for v in verdicts]
    n = max(len(kinds), 1)
    wrong = [i for i, k in enumerate(kinds) if not k.startswith("known")]  # every photo is of a known class
    return {"on": True, "signals": "open-set" if ev.open_set is not None else "not-a-pet detector",
            "n": len(kinds), "counts": {k: kinds.count(k) for k in ANSWER_KINDS},
            "shares": {k: kinds.count(k) / n for k in ANSWER_KINDS}, "n_wrong": len(wrong),
            "wrong": [{"index": i, "file": ev.items[i].name, "path": str(ev.items[i]),
                       "actual": ev.classes[ev.targs[i]], "answer": kinds[i],
                       "words": f"{verdicts[i].species_text}. {verdicts[i].breed_text}"}
                      for i in wrong[:MAX_WRONG_ANSWERS]]}
