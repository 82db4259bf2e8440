"""Is this a cat or a dog, and of a breed the model knows? The backbone's own ImageNet-1k head, kept in the
bundle, answers what a head trained on 37 breeds cannot: its 118 dog and 5 domestic-cat classes know breeds
the model never saw.

    from petclf.openset import fit_open_set, OpenSet
    entry, arrays = fit_open_set(pooled, y, n_classes, oof_probs, weight, bias, fitted_on)   # at training
    signals = OpenSet.load(bundle_dir, manifest)(features, top)   # at prediction (None when it is off); top: the
    signals.pet, signals.known, signals.species, signals.species_prob, signals.agrees   # breed head's argmax
Three signals, each with a threshold set on the training run's own photos by one stated procedure (the 5 %
quantile of their held-out scores; nothing is fitted on photos of other things):
- a pet unless both say otherwise: the ImageNet head's probability on its dog and domestic-cat classes ("pet
  mass") and the cosine of the photo's features to the nearest class mean (`petclf.notapet`'s score,
  leave-one-out), each below its 5 % quantile on the training photos;
- a breed it knows unless either says otherwise: the share of the pet mass on the ImageNet classes the
  training photos' own top-1 fell on ("coverage", leave-one-out) and the same cosine, each at least its 5 %
  quantile;
- sure of a breed: the photo near the mean of the class the breed head names (`agrees`: its cosine at least
  the `NEAR_QUANTILE` quantile of the training photos' leave-one-out cosines to their own class mean; a
  Doberman named German Shorthaired is far from the German Shorthaired photos), and the calibrated top
  probability at least `sure_below`, the lowest on a grid at which the run's out-of-fold predictions are sure
  and wrong on at most `SURE_WRONG` of its photos (the manifest's `unsure_below` too: choosing it again with
  the rule applied was tried, and missed the 10 % goal on one split of three).
A cat or dog of another breed gets its species from the ImageNet head (the breed head only knows the 37).
Picked by measurement: benchmarks/bench_open_set.py, BENCHMARKS.md "Three answers". It needs an ImageNet head
that reads the average-pooled features (a frozen ImageNet backbone: the probe recipe) and classes that are
cats or dogs; anything else has it off. Numpy only: the ONNX path stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax

from petclf.errors import BundleError
from petclf.io import sha256_file, write_atomic
from petclf.notapet import class_means, l2_rows, leave_one_out_scores, read_pinned, scores

METHOD = "imagenet head"  # how the manifest names the open-set signals when they are on
VERSION = 1  # of the manifest's `open_set` entry: readers ignore an entry of another version (and say so)
FILE = "open_set.safetensors"  # the ImageNet head and its covered classes, beside the bundle, pinned in model.json
IMAGENET_GROUPS = {"dog": (151, 269), "cat": (281, 286)}  # ImageNet-1k's dog breeds and domestic cats: [lo, hi)
N_IMAGENET = 1000
QUANTILE = 0.05  # every threshold: this quantile of the training photos' (held-out) scores
SURE_WRONG = 0.03  # the sure rule's threshold: out-of-fold photos sure and wrong at most this share
SURE_GRID = np.round(np.arange(0.5, 1.0, 0.01), 2)  # thresholds tried, lowest first
# a sure breed also needs the photo near the mean of the class it names: its cosine at least the
# `NEAR_QUANTILE` quantile of the training photos' cosines to their own class mean (leave-one-out)
SURE_RULE = "near the named class"
NEAR_QUANTILE = 0.10
MIN_PHOTOS = 10  # fewer training photos give no quantile worth recording: the signals stay off


def off(why: str) -> dict[str, Any]:
    """The manifest entry of a bundle without the open-set signals, saying why."""
    return {"method": "off", "why": why}


def imagenet_probs(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """N x 1000 softmax of the ImageNet head on N average-pooled feature vectors."""
    return softmax(np.asarray(features, np.float64) @ np.asarray(weight, np.float64).T + bias, axis=1)


def pet_rows() -> np.ndarray:
    """The ImageNet classes of every group, in order."""
    return np.concatenate([np.arange(lo, hi) for lo, hi in IMAGENET_GROUPS.values()])


def group_mass(q: np.ndarray) -> dict[str, np.ndarray]:
    """{group: the ImageNet probability on its classes} for N rows of ImageNet probabilities."""
    return {g: q[:, lo:hi].sum(1) for g, (lo, hi) in IMAGENET_GROUPS.items()}


def top_pet_class(q: np.ndarray) -> np.ndarray:
    """Each row's most likely ImageNet class among the dog and cat classes."""
    rows = pet_rows()
    return rows[q[:, rows].argmax(1)]


def coverage(q: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """The share of each row's dog-and-cat probability on the `covered` classes (a boolean over the 1000)."""
    rows = pet_rows()
    return q[:, covered].sum(1) / np.maximum(q[:, rows].sum(1), 1e-300)


def leave_one_out_coverage(q: np.ndarray) -> np.ndarray:
    """Each training photo's coverage by the classes the other photos' top-1 fell on: what an unseen photo of
    a known breed scores (its own top-1 would cover it)."""
    top = top_pet_class(q)
    counts = np.bincount(top, minlength=N_IMAGENET)
    mass = q[:, pet_rows()].sum(1)
    own = np.where(counts[top] > 1, 0.0, q[np.arange(len(q)), top])  # its class, if no other photo covers it
    return (q[:, counts > 0].sum(1) - own) / np.maximum(mass, 1e-300)


def sure_threshold(probs: np.ndarray, y: np.ndarray, most_wrong: float = SURE_WRONG) -> float:
    """The lowest top-probability threshold on `SURE_GRID` at which out-of-fold predictions `probs` are sure
    and wrong on at most `most_wrong` of the photos (1.0: never sure)."""
    top, p = probs.argmax(1), probs.max(1)
    for t in SURE_GRID:
        if ((p >= t) & (top != y)).mean() <= most_wrong:
            return float(t)
    return 1.0


def named_cosine(features: np.ndarray, means: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Each photo's cosine to the mean of the class `top` names."""
    return (l2_rows(features) * np.asarray(means, np.float64)[top]).sum(1)


def leave_one_out_named(x: np.ndarray, y: np.ndarray, n_classes: int, top: np.ndarray) -> np.ndarray:
    """`named_cosine` for the training photos, each against class means made without it."""
    x = l2_rows(x)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, y, x)
    named = sums[top] - np.where((top == y)[:, None], x, 0.0)  # the named class's sum without the photo
    return (x * named).sum(1) / np.maximum(np.linalg.norm(named, axis=1), 1e-12)


def fit_open_set(pooled: np.ndarray, y: np.ndarray, n_classes: int, oof_probs: np.ndarray, weight: np.ndarray,
                 bias: np.ndarray, fitted_on: str) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """(manifest entry, arrays to save or None): the thresholds of the three signals from the training photos'
    average-pooled features `pooled`, labels `y` and out-of-fold calibrated probabilities `oof_probs`."""
    if len(y) < MIN_PHOTOS:
        return off(f"only {len(y)} labelled photos to fit thresholds on (needs {MIN_PHOTOS})"), None
    q = imagenet_probs(pooled, weight, bias)
    cos = leave_one_out_scores(pooled, y, n_classes)
    covered = np.bincount(top_pet_class(q), minlength=N_IMAGENET) > 0
    near = round(float(np.quantile(leave_one_out_named(pooled, y, n_classes, y), NEAR_QUANTILE)), 6)
    entry = {"method": METHOD, "version": VERSION, "fitted_on": fitted_on, "n_photos": int(len(y)),
             "quantile": QUANTILE, "pet_threshold": quantile(sum(group_mass(q).values())),
             "cosine_threshold": quantile(cos[np.isfinite(cos)]),
             "known_threshold": quantile(leave_one_out_coverage(q)),
             "covered_classes": int(covered.sum()),
             "sure_below": sure_threshold(oof_probs, y),
             "sure_wrong": SURE_WRONG, "sure_rule": SURE_RULE, "named_threshold": near,
             "imagenet_groups": {g: list(r) for g, r in IMAGENET_GROUPS.items()}}
    arrays = {"weight": np.ascontiguousarray(weight, np.float16), "bias": np.asarray(bias, np.float32),
              "covered": covered.astype(np.uint8), "class_means": class_means(pooled, y, n_classes)}
    return entry, arrays


def quantile(x: np.ndarray) -> float:
    """The `QUANTILE` quantile of held-out scores, as the manifest records it."""
    return round(float(np.quantile(x, QUANTILE)), 6)


def save_arrays(bundle_dir: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Write the ImageNet head and covered classes beside the bundle; returns the pin ({file, sha256})."""
    from safetensors.numpy import save

    path = write_atomic(Path(bundle_dir) / FILE, save(arrays))
    return {"file": FILE, "sha256": sha256_file(path)}


@dataclass
class Signals:
    """The open-set signals for N photos."""

    pet: np.ndarray  # bool: a cat or a dog
    known: np.ndarray  # bool: of a breed the model knows (meaningful where `pet`)
    species: np.ndarray  # the ImageNet head's more likely group ('dog' | 'cat')
    species_prob: np.ndarray  # that group's share of the dog-and-cat probability
    pet_mass: np.ndarray  # the ImageNet probability on dogs and cats
    coverage: np.ndarray  # its share on the classes the training photos covered
    agrees: np.ndarray  # bool: near the class `top` names (`SURE_RULE`; True where no `top` was given)


@dataclass
class OpenSet:
    """A bundle's open-set signals: the backbone's ImageNet head, the classes its training photos covered, the
    class means and the thresholds."""

    weight: np.ndarray  # 1000 x D
    bias: np.ndarray  # 1000
    covered: np.ndarray  # bool, 1000
    means: np.ndarray  # K x D, unit rows
    pet_threshold: float
    cosine_threshold: float
    known_threshold: float
    sure_below: float
    named_threshold: float | None = None  # `SURE_RULE`'s cosine; None in a bundle fitted before it

    def __call__(self, features: np.ndarray, top: np.ndarray | None = None) -> Signals:
        """The signals of N average-pooled feature vectors; `agrees` for the classes `top` (the breed head's
        most likely class of each photo) where given."""
        q = imagenet_probs(features, self.weight, self.bias)
        agrees = np.ones(len(q), bool)
        if top is not None and self.named_threshold is not None:
            agrees = named_cosine(features, self.means, np.asarray(top)) >= self.named_threshold
        mass = group_mass(q)
        names = list(mass)
        stacked = np.stack([mass[g] for g in names], 1)
        pet = stacked.sum(1)
        cover = coverage(q, self.covered)
        near = scores(features, self.means) >= self.cosine_threshold
        return Signals((pet >= self.pet_threshold) | near, (cover >= self.known_threshold) & near,
                       np.array(names)[stacked.argmax(1)], stacked.max(1) / np.maximum(pet, 1e-300), pet, cover, agrees)

    @classmethod
    def load(cls, bundle_dir: str | Path, manifest: Any) -> OpenSet | None:  # a petclf.manifest.Manifest
        """The bundle's signals (the file checked against the manifest's checksum), or None when off, absent
        or of another version."""
        entry = manifest.open_set or {}
        if entry.get("method") != METHOD or entry.get("version") != VERSION:
            return None
        path, (w, b, covered, means) = read_pinned(bundle_dir, entry, "open_set",
                                                   ("weight", "bias", "covered", "class_means"))
        covered = covered.astype(bool)
        fits = (w.ndim == 2 and w.shape[0] == N_IMAGENET and b.shape == (N_IMAGENET,)
                and covered.shape == (N_IMAGENET,) and means.shape == (manifest.n_classes, w.shape[1]))
        if not fits or not all(np.isfinite(t).all() for t in (w, b, means)):
            raise BundleError(f"corrupt model file: {path}: an ImageNet head of shape {w.shape} or class means of "
                              f"shape {means.shape} do not fit the model")
        # a bundle fitted before the rule (or with another) has no threshold for it: its sure is the breed
        # head's
        named = float(entry["named_threshold"]) if entry.get("sure_rule") == SURE_RULE else None
        if named is not None and not -1.0 <= named <= 1.0:
            raise BundleError(f"corrupt model file: model.json: open_set.named_threshold {named} is no cosine")
        return cls(w.astype(np.float32), b.astype(np.float32), covered, means, *(
            float(entry[k]) for k in ("pet_threshold", "cosine_threshold", "known_threshold", "sure_below")), named)
