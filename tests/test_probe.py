"""petclf.probe: the logistic regression on L2-normalised features, C by CV, the nested estimate and its OOF rows."""

from __future__ import annotations

import numpy as np

from petclf.notapet import l2_rows
from petclf.probefit import C_GRID, fit_logreg, fit_probe_cv, logits_of, stratified_folds


def blobs(n_per: int, k: int = 4, d: int = 32, noise: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm features of `k` noisy classes."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    return l2_rows(rng.normal(0, 1, (k, d))[y] + rng.normal(0, noise, (len(y), d))), y


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
    x, y = np.concatenate([x, x[:1] * 0 + l2_rows(np.ones((1, 32)))]), np.append(y, 3)  # class 3: one photo
    fit = fit_probe_cv(x, y, 4, cs=C_GRID[:3])
    assert len(fit.cv["fold_errors"]) == 2 and fit.oof_logits.shape == (13, 4)
    assert logits_of(x[-1:], (fit.weight, fit.bias)).argmax() == 3  # the final model trained on it


def spot_maps(n_per: int, k: int = 3, c: int = 8, side: int = 6, seed: int = 0) -> tuple:
    """Non-negative N x c x side x side maps: noise, and each photo's class channel lit in one random 2 x 2 spot
    (what a small animal in a big photo looks like to a body's last layer)."""
    import torch

    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    maps = rng.uniform(0, 1, (len(y), c, side, side)).astype(np.float32)
    for m, label in zip(maps, y, strict=True):
        i, j = rng.integers(0, side - 1, 2)
        m[label, i:i + 2, j:j + 2] += 3.0
    return torch.from_numpy(maps).half(), y


def test_the_head_on_crops_learns_and_is_repeatable():
    from petclf.model import GeMPool
    from petclf.probefit import crop_head, pooled_unit

    maps, y = spot_maps(8)
    keep = y != 2  # class 2 absent from training
    pool = GeMPool(2)
    w, b = crop_head(maps[keep], y[keep], 3, pool, seed=1)
    pred = logits_of(pooled_unit(maps, pool).numpy(), (w, b)).argmax(1)
    assert (pred[keep] == y[keep]).mean() >= 0.9 and not (pred == 2).any() and w.shape == (3, 8)
    w2, b2 = crop_head(maps[keep], y[keep], 3, pool, seed=1)
    assert np.array_equal(w, w2) and np.array_equal(b, b2)  # the run's seed fixes crops, mirrors and order


def test_the_head_on_crops_is_judged_on_photos_it_never_saw():
    from petclf.model import GeMPool
    from petclf.probefit import crop_head_cv

    maps, y = spot_maps(5, seed=3)
    est, oof = crop_head_cv(maps, y, 3, GeMPool(2))
    assert oof.shape == (15, 3) and len(est["fold_errors"]) == 5 and est["estimate"] == "5-fold cross-validation"
    assert est["error"] == float((oof.argmax(1) != y).mean()) and est["error"] <= 0.2


def test_the_head_trains_on_crops_only_where_there_are_maps_that_fit():
    import pytest

    from petclf import probe
    from petclf.model import GeMPool, build_model, probe_head

    cnn = build_model("resnet18", 3, head=probe_head("resnet18")).eval()
    assert isinstance(probe.map_pool(cnn, 64, 100), GeMPool)  # 512 x 2 x 2 maps: 4 KB a photo
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "MAX_MAPS_BYTES", 4096 * 99)
        assert probe.map_pool(cnn, 64, 100) is None  # would not fit: the probe alone is the head
    vit = build_model("vit_tiny_patch16_224", 3, head=probe_head("vit_tiny_patch16_224"))
    assert probe.map_pool(vit, 224, 100) is None  # tokens, no maps
