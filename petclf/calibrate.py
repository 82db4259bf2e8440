"""Calibration: expected calibration error, reliability bins and temperature scaling (Guo et al., 2017).

    from petclf.calibrate import ece, fit_temperature, softmax
    t = fit_temperature(logits, targets)               # LBFGS on the NLL of logits / t, on the validation set
    ece(softmax(logits), targets), ece(softmax(logits, t), targets)   # 15 equal-width confidence bins

Predictors apply the fitted temperature as `softmax(logits / manifest["temperature"])`; it never changes the
top-1 prediction, only how confident the probabilities are.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

N_BINS = 15  # equal-width confidence bins for ECE and the reliability diagram (Guo et al. use 15)
T_MIN, T_MAX = 0.05, 20.0  # a fitted temperature outside this range means the fit ran away (e.g. 100% accuracy)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, computed stably."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_bins(probs: np.ndarray, targs: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per equal-width bin of top-1 confidence: its range, count, mean confidence and accuracy (None when empty)."""
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
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return float(F.cross_entropy(z, torch.as_tensor(np.asarray(targs), dtype=torch.long)))


def fit_temperature(logits: np.ndarray, targs: np.ndarray, max_iter: int = 100) -> float:
    """The temperature minimising the NLL of `logits / t` (LBFGS over log t); 1.0 if the fit does not help."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targs), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # log keeps t positive
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp().clamp(T_MIN, T_MAX))
    if not math.isfinite(t) or nll(logits, targs, t) > nll(logits, targs, 1.0):
        return 1.0
    return t
