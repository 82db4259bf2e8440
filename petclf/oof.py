"""A probe run's out-of-fold predictions (`oof.json` beside the bundle): every labelled photo with the logits
and probabilities of a cross-validation model that did not train on it. The run's honest evaluation data: its
temperature is fitted on them, and `petclf report --split valid` judges the run by them.

    save_oof(run_dir, items, classes, labels, logits, "5-fold cross-validation")
    oof = read_oof(run_dir)                              # None for runs without one (fastbook)
    logits, targs, losses = oof_outputs(oof, items)      # in the order of `items`
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, softmax

from petclf.errors import BundleError
from petclf.io import write_atomic

OOF_NAME = "oof.json"  # beside the bundle
OOF_NOTE = ("out-of-fold predictions of the cross-validation: every photo was predicted by a model that did not "
            "train on it")  # what the report says when it judges a probe run by them


def save_oof(run_dir: Path, items: list[Path], vocab: list[str], y: np.ndarray, logits: np.ndarray,
             estimate: str) -> Path:
    """oof.json: every labelled photo with the logits and probabilities of a model that never trained on
    it."""
    oof = {"estimate": estimate, "note": OOF_NOTE,
           "classes": vocab, "files": [str(p) for p in items], "labels": y.tolist(),
           "logits": logits.round(5).tolist(), "probs": softmax(logits, axis=1).round(6).tolist()}
    return write_atomic(run_dir / OOF_NAME, json.dumps(oof))


def read_oof(run_dir: Path) -> dict | None:
    """A run's oof.json (None when it has none: fastbook runs); `BundleError` naming it when it is damaged."""
    path = Path(run_dir) / OOF_NAME
    if not path.is_file():
        return None
    try:
        oof = json.loads(path.read_text())
        oof_problem(oof)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(f"corrupt {path}: {why}; it holds the run's out-of-fold predictions (train the run "
                          f"again to remake it)") from None
    return oof


def oof_problem(oof: object) -> None:
    """`ValueError` saying why `oof` (parsed oof.json) cannot be read: every field `oof_outputs` uses,
    checked."""
    if not isinstance(oof, dict):
        raise ValueError("not a JSON object")
    files, labels, logits, classes = (oof.get(k) for k in ("files", "labels", "logits", "classes"))
    if not all(isinstance(v, list) for v in (files, labels, logits, classes)):
        raise ValueError("files, labels, logits and classes must be lists")
    try:
        width = np.asarray(logits, np.float64).reshape(len(logits), -1).shape[1] if logits else len(classes)
        labels_ok = all(type(y) is int and 0 <= y < len(classes) for y in labels)
    except (TypeError, ValueError):
        raise ValueError("logits must be rows of numbers") from None
    if not (len(files) == len(labels) == len(logits)) or width != len(classes):
        raise ValueError(f"{len(files)} files, {len(labels)} labels and {len(logits)} rows of {width} logits "
                         f"for {len(classes)} classes do not match")
    if not labels_ok or not all(isinstance(f, str) for f in files):
        raise ValueError(f"labels must be class numbers below {len(classes)} and files must be names")


def oof_outputs(oof: dict, items: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, targets, losses) of `items` from a run's out-of-fold predictions; `ValueError` naming a photo
    the run never predicted out of fold (added after training)."""
    rows = {f: i for i, f in enumerate(oof["files"])}
    missing = [str(p) for p in items if str(p) not in rows]
    if missing:
        raise ValueError(f"{len(missing)} photos were not in the training run (e.g. {missing[0]})")
    idx = np.array([rows[str(p)] for p in items], dtype=int)
    logits = np.asarray(oof["logits"], np.float32)[idx]
    targs = np.asarray(oof["labels"], dtype=int)[idx]
    return logits, targs, -log_softmax(logits, axis=1)[np.arange(len(idx)), targs]
