"""petclf.probe: the logistic regression on L2-normalised features, C by CV, the nested estimate and its OOF rows."""

from __future__ import annotations

import numpy as np

from petclf.probe import C_GRID, fit_logreg, fit_probe_cv, l2_normalise, logits_of, stratified_folds


def blobs(n_per: int, k: int = 4, d: int = 32, noise: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm features of `k` noisy classes."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    return l2_normalise(rng.normal(0, 1, (k, d))[y] + rng.normal(0, noise, (len(y), d))), y


def test_fit_maps_back_to_raw_features_and_never_predicts_absent_classes():
    x, y = blobs(10, k=3, noise=0.3)
    keep = y != 1  # class 1 absent from training
    (wb,) = fit_logreg(x[keep] + 5.0, y[keep], 3, [100.0])  # far from zero: the centring must be folded in
    pred = logits_of(x[keep] + 5.0, wb).argmax(1)
    assert (pred == y[keep]).all() and wb[0].shape == (3, 32) and wb[1][1] < -1e3


def test_c_by_cv_and_an_honest_nested_estimate():
    x, y = blobs(6, noise=1.2)
    fit = fit_probe_cv(x, y, 4, cs=C_GRID[:5])
    assert fit.c in C_GRID[:5] and fit.cv["c_table"]["c"] == list(C_GRID[:5])
    assert fit.cv["c"] == fit.c and len(fit.cv["c_per_fold"]) == 5 and len(fit.cv["fold_errors"]) == 5
    assert fit.oof_logits.shape == (24, 4)
    in_sample = float((logits_of(x, (fit.weight, fit.bias)).argmax(1) != y).mean())
    assert fit.cv["error"] == float((fit.oof_logits.argmax(1) != y).mean())
    assert fit.cv["error"] > in_sample  # the photos each model never saw are harder than those it trained on
    assert fit.cv["estimate"] == "nested 5-fold cross-validation"


def test_folds_shrink_to_the_smallest_class():
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    folds = stratified_folds(y, 5)
    assert len(folds) == 2 and sorted(np.concatenate(folds)) == list(range(8))
    assert len(stratified_folds(np.array([0, 0, 0, 1, 1, 1, 2]), 5)) == 2  # one photo of class 2: still 2 folds


def test_a_class_with_one_photo_still_trains():
    x, y = blobs(4, k=3, noise=0.5)
    x, y = np.concatenate([x, x[:1] * 0 + l2_normalise(np.ones((1, 32)))]), np.append(y, 3)  # class 3: one photo
    fit = fit_probe_cv(x, y, 4, cs=C_GRID[:3])
    assert len(fit.cv["fold_errors"]) == 2 and fit.oof_logits.shape == (13, 4)
    assert logits_of(x[-1:], (fit.weight, fit.bias)).argmax() == 3  # the final model trained on it
