"""Synthetic data for tests and the offline demo, in each layout: learnable images, and the bad files real
Pets has.

    petclf data synth data/synth --classes 4 --per-class 20 --bad
    petclf data synth data/mine --layout folders       # DIR/<class>/<n>.jpg, class names like "Crème brûlée"
    petclf data synth data/mine --layout csv           # DIR/images/photo-<n>.jpg + DIR/labels.csv (file,label,split)

    from petclf.synth import synth_pets, synth_data
    planted = synth_pets("data/synth", n_classes=4, per_class=20, bad=True)   # {file name: expected verdict}
    synth_data("data/mine", layout="folders", split_dirs=True)                # DIR/train|valid/<class>/

Each class is a coloured, striped blob on a noisy background: a small CNN learns it in a minute on a CPU.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from petclf.config import SYNTH_SET
from petclf.errors import DataError
from petclf.image import encode
from petclf.labels import CAT_BREEDS, DOG_BREEDS

CLASSES, PER_CLASS, SIZE, SEED = SYNTH_SET  # kept in petclf.config: the CLI shows them without loading numpy
# class names of the folders and csv layouts: a user's own, not Pets breeds (spaces, accents, capitals, one
# lowercase)
OWN_CLASSES = ("Crème brûlée", "Red fox", "blue whale", "Ølkrus", "Zebra Crossing", "Château", "Tea cup", "Ñandú")
LABELS_CSV = "labels.csv"  # the csv layout's labels file, inside the data folder
VALID_EVERY = 5  # folders (with split_dirs) and csv: every 5th image of a class is validation (20 %)


def synth_classes(n: int) -> list[str]:
    """`n` real breed names, cats and dogs interleaved so both species appear."""
    if not 2 <= n <= len(CAT_BREEDS) + len(DOG_BREEDS):
        raise DataError(f"number of classes must be between 2 and 37, got {n}")
    mixed = [b for pair in zip(CAT_BREEDS, DOG_BREEDS, strict=False) for b in pair] + list(DOG_BREEDS[len(CAT_BREEDS):])
    return mixed[:n]


def _synth_image(cls_idx: int, n_classes: int, size: int, rng) -> Image.Image:
    """A noisy background with one blob whose hue and stripe angle encode the class, at a random place and
    scale."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    low = rng.random((4, 4, 3)).astype(np.float32)
    bg = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    bg = 0.6 * bg + 40 * rng.standard_normal((size, size, 3)).astype(np.float32)
    hue = cls_idx / n_classes
    color = 255 * np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
    angle = np.pi * (cls_idx % 4) / 4
    stripes = 0.5 + 0.5 * np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi * 4))
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.35)
    blob = (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2)[..., None]
    fg = color * (0.55 + 0.45 * stripes[..., None])
    img = np.where(blob, fg * rng.uniform(0.8, 1.1), bg)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _plant_bad_files(out: Path, classes: list[str], size: int, rng) -> dict[str, str]:
    """Write one of each bad file BAD_INPUTS.md lists for the dataset; returns {file name: expected
    verdict}."""
    cat, dog = classes[0], classes[1]
    img = _synth_image(0, len(classes), size, rng)
    planted = {}

    def put(name: str, verdict: str, data: bytes) -> None:
        (out / name).write_bytes(data)
        planted[name] = verdict

    frames = [img, img.transpose(Image.FLIP_LEFT_RIGHT)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    put(f"{cat}_9001.jpg", "converted", gif.getvalue())  # GIF named .jpg (Egyptian_Mau_139)
    put(f"{cat}_9002.jpg", "converted", encode(img.convert("RGBA"), "PNG"))  # RGBA PNG named .jpg (Abyssinian_5)
    put(f"{dog}_9003.jpg", "skipped", encode(img, "JPEG")[: size * 4])  # truncated JPEG (beagle_116)
    put(f"{dog}_9004.jpg", "skipped", b"")  # 0-byte file
    put(f"{dog}_9005.jpg", "skipped", b"this is a text file, renamed\n")  # text renamed .jpg
    put(f"{cat}_9006.jpg", "converted", encode(img.convert("CMYK"), "JPEG"))  # CMYK JPEG
    put(f"{cat}_9007.png", "converted", encode(img.convert("P", palette=Image.ADAPTIVE), "PNG", transparency=0))
    deep = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257).astype(np.uint16))
    put(f"{dog}_9008.png", "converted", encode(deep, "PNG"))  # 16-bit grayscale
    put(f"{dog}_9009.jpg", "converted", encode(img.convert("L"), "JPEG"))  # grayscale
    put("my dog photo.jpg", "unlabelled", encode(img, "JPEG"))  # name outside <breed>_<number>
    put(f"{cat}_9010.mat", "ignored", b"MATLAB 5.0 MAT-file\x00" * 4)  # .mat beside the images (Abyssinian_100)
    return planted


def synth_pets(out: str | Path, n_classes: int = CLASSES, per_class: int = PER_CLASS, size: int = SIZE,
               seed: int = SEED, bad: bool = False) -> dict[str, str]:
    """Write a Pets-style folder of learnable synthetic images; with `bad`, plant the known bad files too.

    Returns {file name: expected verdict} for the planted files (empty without `bad`).
    """
    if per_class < 1 or size < 8:
        raise DataError("need at least 1 image per class and a size of at least 8 px")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = synth_classes(n_classes)
    for ci, breed in enumerate(classes):
        for k in range(1, per_class + 1):
            _synth_image(ci, n_classes, size, rng).save(out / f"{breed}_{k}.jpg", quality=92)
    return _plant_bad_files(out, classes, size, rng) if bad else {}


def own_classes(n: int) -> list[str]:
    """`n` class names a user might have (not Pets breeds)."""
    if not 2 <= n <= len(OWN_CLASSES):
        raise DataError(f"number of classes must be between 2 and {len(OWN_CLASSES)} for this layout, got {n}")
    return list(OWN_CLASSES[:n])


def synth_data(out: str | Path, layout: str = "pets", n_classes: int = CLASSES, per_class: int = PER_CLASS,
               size: int = SIZE, seed: int = SEED, bad: bool = False, split_dirs: bool = False) -> dict[str, str]:
    """Synthetic data in `layout`: pets (`synth_pets`), folders (`DIR/<class>/`, or `DIR/train|valid/<class>/`
    with `split_dirs`) or csv (`DIR/images/` + `DIR/labels.csv` with a split column); returns `synth_pets`'s
    plants."""
    if layout == "pets":
        return synth_pets(out, n_classes, per_class, size, seed, bad)
    if layout not in ("folders", "csv"):
        raise DataError(f"layout must be pets, folders or csv, got {layout!r}")
    if bad:
        raise DataError("--bad plants Pets' own bad files: use it with --layout pets")
    if per_class < 1 or size < 8:
        raise DataError("need at least 1 image per class and a size of at least 8 px")
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for ci, name in enumerate(own_classes(n_classes)):
        for k in range(1, per_class + 1):
            split = "valid" if k % VALID_EVERY == 0 else "train"
            rel = (Path(split) if split_dirs else Path()) / name / f"{k}.jpg" if layout == "folders" \
                else Path("images") / f"photo-{ci * per_class + k:04d}.jpg"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            _synth_image(ci, n_classes, size, rng).save(out / rel, quality=92)
            rows.append((rel.as_posix(), name, split))
    if layout == "csv":
        import csv

        with open(out / LABELS_CSV, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("file", "label", "split"), *rows])
    return {}
