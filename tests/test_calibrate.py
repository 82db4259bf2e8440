"""petclf.calibrate: ECE, reliability bins, and the temperature a run ships (kept only when it helps)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from petclf.calibrate import choose_temperature, ece, fit_temperature, nll, reliability_bins


def test_ece_is_zero_when_confidence_matches_accuracy():
    """Half the images at 0.5 confidence (half right), half at 1.0 (all right): perfectly calibrated."""
    probs = np.array([[0.5, 0.5 - 1e-9, 1e-9]] * 4 + [[1.0, 0.0, 0.0]] * 4)
    targs = np.array([0, 1, 0, 1, 0, 0, 0, 0])
    assert ece(probs, targs) == pytest.approx(0.0, abs=1e-6)


def test_ece_of_an_overconfident_model():
    """Always 90% sure, right half the time: ECE is the 0.4 gap, and every image sits in the (0.867, 0.933] bin."""
    probs = np.tile([0.9, 0.1], (10, 1))
    targs = np.array([0, 1] * 5)
    bins = reliability_bins(probs, targs, 15)
    assert [b["count"] for b in bins].index(10) == 13
    assert sum(b["count"] for b in bins) == 10
    assert ece(probs, targs) == pytest.approx(0.4)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 10))
    true_t = 2.5
    p = softmax(logits / true_t, axis=1)
    targs = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)  # one draw per row from softmax(logits / 2.5)
    t = fit_temperature(logits, targs)
    assert t == pytest.approx(true_t, rel=0.1)
    assert ece(softmax(logits / t, axis=1), targs) < ece(softmax(logits, axis=1), targs)


def test_fit_temperature_never_makes_the_fit_worse():
    """All predictions right: NLL keeps falling as T -> 0; the fit stops at a sane bound instead of running away."""
    logits = np.eye(5)[np.arange(50) % 5] * 3.0
    t = fit_temperature(logits, np.arange(50) % 5)
    assert 0.05 <= t <= 1.0


def _drawn(t_true: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / t_true): a model whose best temperature is t_true."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, 10))
    p = softmax(logits / t_true, axis=1)
    return logits, (p.cumsum(1) > rng.random((n, 1))).argmax(1)


def test_choose_temperature_keeps_a_temperature_that_helps_on_held_out_folds():
    logits, targs = _drawn(2.5, 600)
    cal = choose_temperature(logits, targs)
    assert cal["kept"] and cal["temperature"] == pytest.approx(2.5, rel=0.2) and cal["cv_folds"] == 5
    assert cal["cv_nll_after"] < cal["cv_nll_before"]
    assert nll(logits, targs, cal["temperature"]) < nll(logits, targs)


def test_choose_temperature_refuses_one_that_only_fits_the_images_it_was_fitted_on():
    """Calibrated already (t = 1) and few images: a fit on them alone moves away from 1; held out, it loses."""
    logits, targs = _drawn(1.0, 40, seed=3)
    cal = choose_temperature(logits, targs)
    assert cal["fitted"] != 1.0  # a fit on all 40 finds "something"
    assert not cal["kept"] and cal["temperature"] == 1.0
    assert cal["cv_nll_after"] >= cal["cv_nll_before"]


def test_a_temperature_at_the_search_bound_is_not_shipped_as_if_fitted():
    """Every held-out output right (a cross-validation error of 0): the NLL falls as T shrinks, the fit runs
    to T_MIN and every answer would read 100 %. T = 1 is shipped instead, and the record says calibration was
    not possible."""
    from petclf.calibrate import T_MIN

    rng = np.random.default_rng(0)
    targs = rng.integers(0, 5, 100)
    logits = rng.normal(0, 0.1, (100, 5))
    logits[np.arange(100), targs] += 1.0  # right every time, by a small margin (a probe head's raw logits)
    cal = choose_temperature(logits, targs)
    assert cal["fitted"] == pytest.approx(T_MIN, rel=1e-3)
    assert not cal["kept"] and cal["temperature"] == 1.0 and "not possible" in cal["not_possible"]
