"""A probe run's out-of-fold predictions (`oof.json` beside the bundle): every labelled photo with the logits and
probabilities of a cross-validation model that did not train on it. The run's honest evaluation data: its
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

from petclf.io import write_atomic

OOF_NAME = "oof.json"  # beside the bundle
OOF_NOTE = ("out-of-fold predictions of the cross-validation: every photo was predicted by a model that did not "
            "train on it")  # what the report says when it judges a probe run by them


def save_oof(run_dir: Path, items: list[Path], vocab: list[str], y: np.ndarray, logits: np.ndarray,
             estimate: str) -> Path:
    """oof.json: every labelled photo with the logits and probabilities of a model that never trained on it."""
    oof = {"estimate": estimate, "note": OOF_NOTE,
           "classes": vocab, "files": [str(p) for p in items], "labels": y.tolist(),
           "logits": logits.round(5).tolist(), "probs": softmax(logits, axis=1).round(6).tolist()}
    return write_atomic(run_dir / OOF_NAME, json.dumps(oof))


def read_oof(run_dir: Path) -> dict | None:
    """A run's oof.json (None when it has none: fastbook runs)."""
    path = Path(run_dir) / OOF_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def oof_outputs(oof: dict, items: Sequence[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, targets, losses) of `items` from a run's out-of-fold predictions; `ValueError` naming a photo the
    run never predicted out of fold (added after training)."""
    rows = {f: i for i, f in enumerate(oof["files"])}
    missing = [str(p) for p in items if str(p) not in rows]
    if missing:
        raise ValueError(f"{len(missing)} photos were not in the training run (e.g. {missing[0]})")
    idx = np.array([rows[str(p)] for p in items], dtype=int)
    logits = np.asarray(oof["logits"], np.float32)[idx]
    targs = np.asarray(oof["labels"], dtype=int)[idx]
    return logits, targs, -log_softmax(logits, axis=1)[np.arange(len(idx)), targs]
