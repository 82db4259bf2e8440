"""The small-data recipe's linear probe: a logistic regression on the frozen backbone's pooled features,
written into the network's linear head.

    from petclf.probe import run_probe
    result = run_probe(learn, c=1.0)                  # {"error_rate", "valid_loss", "seconds"}
"""

from __future__ import annotations

import time

import numpy as np
import torch


@torch.no_grad()
def pooled_features(learn, dl, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels): the input of the linear head's last layer, for every item of `dl` (eval mode)."""
    model = learn.model.eval()
    feats, ys = [], []
    for xb, yb in dl:
        if flip:
            xb = torch.flip(xb, dims=[3])
        feats.append(model[1][:-1](model[0](xb)).float().cpu())
        ys.append(yb.cpu())
    return torch.cat(feats).numpy(), torch.cat(ys).numpy()


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features; returns (weight, bias) for the raw features."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=3000).fit((x - mu) / sd, y)
    w = np.zeros((n_classes, x.shape[1]), np.float32)
    b = np.full(n_classes, -1e4, np.float32)  # classes absent from training are never predicted
    coef, icpt = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # sklearn stores one row for a binary problem
        coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    w[clf.classes_] = coef / sd
    b[clf.classes_] = icpt - (coef / sd) @ mu
    return w, b


def run_probe(learn, c: float = 1.0) -> dict:
    """Initialise the linear head by a logistic regression on pooled features (train set, + flips, no augmentation)."""
    t0 = time.monotonic()
    dls = learn.dls
    train_dl = dls.test_dl(dls.train.items, with_labels=True)
    x1, y = pooled_features(learn, train_dl)
    x2, _ = pooled_features(learn, train_dl, flip=True)
    w, b = fit_probe(np.concatenate([x1, x2]), np.concatenate([y, y]), dls.c, c)
    lin = learn.model[1][-1]
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    valid_loss, err, _ = (float(v) for v in learn.validate())
    return {"error_rate": err, "valid_loss": valid_loss, "seconds": round(time.monotonic() - t0, 2)}
