"""Calibration: expected calibration error, reliability bins and temperature scaling (Guo et al., 2017).

    from petclf.calibrate import choose_temperature, ece, softmax
    cal = choose_temperature(logits, targets)          # fitted at the end of training, kept only if it helps
    ece(softmax(logits), targets), ece(softmax(logits / cal["temperature"]), targets)

Predictors apply the bundle's temperature as `softmax(logits / temperature)`; it never changes the top-1
prediction, only how confident the probabilities are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax  # noqa: F401 - softmax is re-exported for the report

N_BINS = 15  # equal-width confidence bins for ECE and the reliability diagram (Guo et al. use 15)
T_MIN, T_MAX = 0.05, 20.0  # a fitted temperature outside this range means the fit ran away (e.g. 100% accuracy)
CV_FOLDS = 5  # folds of the validation outputs a temperature is fitted on and judged on


def reliability_bins(probs: np.ndarray, targs: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per equal-width bin of top-1 confidence: its range, count, mean confidence and accuracy (None when
    empty)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(targs)
    which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # bin i holds (i/n, (i+1)/n]
    bins = []
    for i in range(n_bins):
        m = which == i
        n = int(m.sum())
        bins.append({"lo": i / n_bins, "hi": (i + 1) / n_bins, "count": n,
                     "confidence": float(conf[m].mean()) if n else None,
                     "accuracy": float(correct[m].mean()) if n else None})
    return bins


def ece(probs: np.ndarray, targs: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over the bins."""
    bins = reliability_bins(probs, targs, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / max(total, 1))


def nll(logits: np.ndarray, targs: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under `softmax(logits / temperature)`."""
    logp = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(logp)), np.asarray(targs)].mean())


def fit_temperature(logits: np.ndarray, targs: np.ndarray) -> float:
    """The temperature minimising the NLL of `logits / t` (bounded search over log t); 1.0 if it does not
    help."""
    res = minimize_scalar(lambda log_t: nll(logits, targs, math.exp(log_t)), method="bounded",
                          bounds=(math.log(T_MIN), math.log(T_MAX)))
    t = math.exp(res.x)
    return t if math.isfinite(t) and nll(logits, targs, t) < nll(logits, targs, 1.0) else 1.0


def cv_folds(n: int, k: int = CV_FOLDS, seed: int = 0) -> list[np.ndarray]:
    """`n` indices shuffled and cut into `k` folds (fewer when there are fewer items)."""
    idx = np.random.default_rng(seed).permutation(n)
    return [f for f in np.array_split(idx, min(k, n)) if len(f)]


def at_bound(t: float) -> bool:
    """True when a fitted temperature sits at the search's bound: the fit ran away (every held-out output
    right and the NLL still falling as T shrinks), so it is no calibration."""
    return math.isclose(t, T_MIN, rel_tol=1e-3) or math.isclose(t, T_MAX, rel_tol=1e-3)


def choose_temperature(logits: np.ndarray, targs: np.ndarray, k: int = CV_FOLDS) -> dict[str, Any]:
    """The temperature to ship: fitted on all validation outputs, kept only if fitting on k-1 folds lowers the
    NLL of the held-out fold on average (a temperature fitted and judged on the same few images can make
    things worse), and never when the fit ran to the search's bound (T = 1 then, and `not_possible` says why).

    Returns {temperature, kept, fitted, n, cv_folds, cv_nll_before, cv_nll_after[, not_possible]}.
    """
    logits, targs = np.asarray(logits, np.float64), np.asarray(targs)
    before = after = 0.0
    for fold in cv_folds(len(targs), k):
        rest = np.setdiff1d(np.arange(len(targs)), fold)
        t = fit_temperature(logits[rest], targs[rest]) if len(rest) else 1.0
        before += nll(logits[fold], targs[fold]) * len(fold)
        after += nll(logits[fold], targs[fold], t) * len(fold)
    n = max(len(targs), 1)
    fitted = fit_temperature(logits, targs)
    kept = after < before and not at_bound(fitted)
    cal = {"temperature": fitted if kept else 1.0, "kept": kept, "fitted": fitted, "n": int(len(targs)),
           "cv_folds": len(cv_folds(len(targs), k)), "cv_nll_before": before / n, "cv_nll_after": after / n}
    if at_bound(fitted):
        cal["not_possible"] = (f"calibration was not possible: the fit ran to its bound (T = {fitted:.3g}; "
                               "every held-out image right, so any T below 1 only looks better); T = 1 is "
                               "shipped")
    return cal


def wilson(k: int, n: int) -> list[float] | None:
    """The 95 % Wilson score interval [low, high] of a rate k / n (scipy's binomtest), None when n is 0."""
    if n == 0:
        return None
    from scipy.stats import binomtest  # scipy.stats takes ~0.3 s to import: only the report needs it

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(ci.low), float(ci.high)]
