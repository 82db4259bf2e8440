"""petclf.probe: the logistic regression's weights, mapped back onto the raw pooled features."""

from __future__ import annotations

import numpy as np

from petclf.probe import fit_probe


def test_fit_probe_maps_back_to_raw_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 16))
    y = np.repeat([0, 2], 20)  # class 1 absent from training
    x = centers[y] + rng.normal(0, 0.5, (40, 16)) + 100  # far from zero: the standardisation must be folded in
    w, b = fit_probe(x, y, n_classes=3, c=1.0)
    pred = (x @ w.T + b).argmax(1)
    assert (pred == y).mean() == 1.0
    assert w.shape == (3, 16) and b[1] < -1e3
