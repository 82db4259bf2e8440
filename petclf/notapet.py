"""Is this a pet at all? The not-a-pet detector: cosine similarity of a photo's pooled backbone features to
the nearest class mean, against a threshold fitted on the training run's own held-out photos.

    from petclf.notapet import fit_detector, Detector
    info, means = fit_detector(feats, labels, n_classes)       # at training: class means + leave-one-out threshold
    det = Detector.load(bundle_dir, manifest)                  # at prediction: None when the bundle has it off
    score, flagged = det(features)                             # N pooled feature vectors -> N scores, N flags
Picked by measurement (docs/decisions/not-a-pet.md): on 185 real Pets photos (each scored
by a detector fitted without it) and 29 real non-pet photos, every threshold set to flag 1 % of the training
pets, the nearest class mean flagged 1.1 % of the pets and 100 % of the non-pets; the breed head's max logit
and energy 0.5 % and 86-89 %; the backbone's own ImageNet head (probability on its cat and dog classes) 2.2 %
and 87 %. It needs no ImageNet head, so it works for a user's own classes and a fine-tuned backbone alike.
Numpy only: the ONNX path stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from petclf.errors import BundleError
from petclf.io import sha256_file, verify_sha256, write_atomic

METHOD = "cosine to the nearest class mean"  # how the manifest names the detector that is on
FILE = "not_a_pet.safetensors"  # the class means, beside the bundle, pinned in model.json
QUANTILE = 0.01  # the threshold is this quantile of held-out pet photos' scores: ~1 % of real pets flagged
MIN_PHOTOS = 10  # fewer held-out photos than this give no threshold worth recording: the detector stays off


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_means(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """K x D unit-length means of the unit-length features of each class (zero rows for classes without
    photos)."""
    x = l2_rows(x)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, y, x)
    return l2_rows(sums).astype(np.float32)


def scores(features: np.ndarray, means: np.ndarray) -> np.ndarray:
    """The not-a-pet score of each row: its largest cosine similarity to a class mean (higher: more like a
    pet)."""
    return (l2_rows(features) @ np.asarray(means, np.float64).T).max(1)


def leave_one_out_scores(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each photo's score against the class means made without it: what an unseen pet photo scores (a photo's
    own class mean contains it and would score it too high). Photos alone in their class are scored against
    the others."""
    x = l2_rows(x)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=n_classes)
    sims = x @ l2_rows(sums).T
    own = sums[y] - x  # the own class's sum without the photo
    own_sim = (x * own).sum(1) / np.maximum(np.linalg.norm(own, axis=1), 1e-12)
    sims[np.arange(len(y)), y] = np.where(counts[y] > 1, own_sim, -np.inf)
    sims[:, counts == 0] = -np.inf
    return sims.max(1)


def off(why: str) -> dict[str, Any]:
    """The manifest entry of a bundle without a detector, saying why."""
    return {"method": "off", "why": why}


def fit_detector(x: np.ndarray, y: np.ndarray, n_classes: int, fitted_on: str,
                 quantile: float = QUANTILE) -> tuple[dict[str, Any], np.ndarray | None]:
    """(manifest entry, class means or None): means of `x` (N pooled features of held-out labelled photos) and
    the threshold that flags `quantile` of them, scored leave-one-out."""
    if len(y) < MIN_PHOTOS:
        return off(f"only {len(y)} labelled photos to fit a threshold on (needs {MIN_PHOTOS})"), None
    loo = leave_one_out_scores(x, y, n_classes)
    loo = loo[np.isfinite(loo)]
    threshold = float(np.quantile(loo, quantile))
    return {"method": METHOD, "threshold": round(threshold, 6), "quantile": quantile, "n_photos": int(len(loo)),
            "fitted_on": fitted_on, "pets_flagged": round(float((loo < threshold).mean()), 4)}, class_means(x, y,
                                                                                                            n_classes)


def save_means(bundle_dir: Path, means: np.ndarray) -> dict[str, str]:
    """Write the class means beside the bundle; returns the pin ({file, sha256}) for the manifest."""
    from safetensors.numpy import save

    path = write_atomic(Path(bundle_dir) / FILE, save({"class_means": np.ascontiguousarray(means, np.float32)}))
    return {"file": FILE, "sha256": sha256_file(path)}


def read_pinned(bundle_dir: str | Path, entry: dict[str, Any], key: str,
                names: tuple[str, ...]) -> tuple[Path, list[np.ndarray]]:
    """(path, the arrays `names`) of the safetensors file a manifest entry (`key`) pins, its checksum
    verified; a missing, tampered or unreadable file is a BundleError."""
    from safetensors.numpy import load

    path = Path(bundle_dir) / entry["file"]
    if not path.is_file():
        raise BundleError(f"corrupt model file: {path} is missing (model.json's {key} names it)")
    verify_sha256(path, entry["sha256"])
    try:
        arrays = load(path.read_bytes())
        return path, [arrays[n] for n in names]
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise BundleError(f"corrupt model file: {path}: {type(e).__name__}") from None


@dataclass
class Detector:
    """A bundle's not-a-pet detector: class means and the score below which a photo is not a pet."""

    means: np.ndarray  # K x D, unit rows
    threshold: float

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(score, flagged) for N pooled feature vectors."""
        if features.shape[-1] != self.means.shape[1]:  # a means file of another backbone, its checksum redone
            raise BundleError(f"corrupt model file: {FILE}: class means {self.means.shape[1]} wide do not fit the "
                              f"network's {features.shape[-1]} features")
        s = scores(features, self.means)
        return s, s < self.threshold

    @classmethod
    def load(cls, bundle_dir: str | Path, manifest: Any) -> Detector | None:  # a petclf.manifest.Manifest
        """The bundle's detector (its means file checked against the manifest's checksum), or None when it is
        off."""
        entry = manifest.not_a_pet or {}
        if entry.get("method") != METHOD:
            return None
        path, (means,) = read_pinned(bundle_dir, entry, "not_a_pet", ("class_means",))
        if means.ndim != 2 or means.shape[0] != manifest.n_classes or not np.isfinite(means).all():
            raise BundleError(f"corrupt model file: {path}: class means of shape {means.shape} do not fit the model")
        return cls(means, float(entry["threshold"]))
