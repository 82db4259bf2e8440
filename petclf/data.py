"""The training data: find (or download Pets), read its layout, verify every image, split, build DataLoaders.

    petclf data check --data data/oxford-iiit-pet      # the same steps from the command line
    petclf data check --data ~/photos                  # a folder per class (or --labels FILE.csv)

    from petclf.data import load_data, make_dataloaders
    data = load_data("data/oxford-iiit-pet")           # LabelledImages: items, labels, split, data report
    dls = make_dataloaders(data, bs=32, size=224, presize=460, mean=MEAN, std=STD)

The folder is walked once (`petclf.listing`); its layout is read by `petclf.layouts` (Pets file names
`<breed>_<number>.<ext>` as in fastbook, a folder per class, a CSV, with fastai's own conventions), its images
verified by `petclf.verify` and split by `petclf.splits`.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastai.vision.core import PILImage
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from petclf.config import TrainConfig
from petclf.errors import DataError
from petclf.image import load_rgb
from petclf.io import reachable, write_atomic
from petclf.labels import label_from_path, pets_groups
from petclf.layouts import Reading, check_data_folder, check_label_clashes, read_layout
from petclf.listing import Listing
from petclf.splits import layout_split, pets_test_part, single_images_train
from petclf.text import shown
from petclf.verify import verify_images

DATA_DIR = Path("data")  # where downloads land and the default dataset is looked for
PETS_DIRNAME = "oxford-iiit-pet"  # fastai's folder name for URLs.PETS
REPORT_NAME = "data_report.json"
EXAMPLES_DIR = "examples"  # in a run folder: validation photos for the demo when the shipped ones do not fit
N_EXAMPLES, EXAMPLE_SIDE = 6, 384  # how many example photos a run keeps, and their longest side in pixels
UNLABELLED = {"pets": "name is not <breed>_<number>", "folders": "in no class folder",
              "csv": "not in the labels file"}  # why an image has no label, per layout
WHERE_LABELLED = {"pets": "named <breed>_<number>.<ext>", "folders": "in class folders (DIR/<label>/<file>)",
                  "csv": "listed in the labels file"}  # where a layout looks for labelled images


# ---------------------------------------------------------------------------------------------------- finding


def download_pets(dest: Path = DATA_DIR) -> Path:
    """fastai's `untar_data(URLs.PETS)` into `dest`, after a quick reachability check: offline fails fast."""
    from fastai.data.external import URLs, untar_data

    if not reachable(URLs.PETS):
        raise DataError(f"Oxford-IIIT Pets is not in {dest / PETS_DIRNAME} and cannot be downloaded "
                        "(no network); copy the extracted dataset there or pass --data DIR")
    dest.mkdir(parents=True, exist_ok=True)
    return Path(untar_data(URLs.PETS, data=dest))


def find_root(data: str | Path | None = None, dest: Path = DATA_DIR) -> Path:
    """The data folder: `data` if given, else `dest/oxford-iiit-pet`, else a fresh download."""
    if data is None:
        root = dest / PETS_DIRNAME
        root = root if root.is_dir() else download_pets(dest)
    else:
        root = check_data_folder(data)
    return root


# ------------------------------------------------------------------------------------------------ the dataset


@dataclass
class DataReport:
    """What the data layer found: usable images per class, the split, and every file it skipped or fixed."""

    root: str
    layout: str = "pets"  # pets | folders | csv
    layout_why: str = ""  # why that layout: what `petclf data check` prints first
    n_images: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    n_train: int = 0
    n_valid: int = 0
    split: str = "random"
    skipped: list[dict] = field(default_factory=list)  # unreadable: left out of training
    converted: list[dict] = field(default_factory=list)  # readable after a fix (format, mode, frames)
    unlabelled: list[str] = field(default_factory=list)  # images the layout gives no label
    ignored: list[str] = field(default_factory=list)  # files that are not images (.mat, .txt, ...)
    unsplit: list[str] = field(default_factory=list)  # images the chosen split does not mention
    warnings: list[str] = field(default_factory=list)

    def save(self, out_dir: str | Path) -> Path:
        """Write the report as `data_report.json` in `out_dir`."""
        path = Path(out_dir) / REPORT_NAME
        write_atomic(path, json.dumps(asdict(self), indent=1))
        return path

    def summary(self) -> str:
        """A few readable lines for a terminal or log."""
        groups = pets_groups(list(self.class_counts)) or {}  # Pets' built-in cat/dog; other data has none
        per: Counter = Counter()
        for c, n in self.class_counts.items():
            per[groups.get(c)] += n
        per_group = ", ".join(f"{per[g]} {g}" for g in sorted(set(groups.values())))
        split_groups = f" ({per_group})" if groups else ""
        lines = [f"layout {self.layout}: {self.layout_why}",
                 f"{self.n_images} usable images in {len(self.class_counts)} classes{split_groups} "
                 f"under {self.root}",
                 f"split {self.split}: {self.n_train} train, {self.n_valid} valid"]
        for title, rows in (("skipped", self.skipped), ("converted", self.converted)):
            if rows:
                lines.append(f"{len(rows)} {title}:")
                lines += [f"  {Path(r['path']).name}: {r['reason']}" for r in rows]
        for title, names in ((f"unlabelled ({UNLABELLED[self.layout]})", self.unlabelled),
                             ("ignored (not images)", self.ignored), ("not in the split", self.unsplit)):
            if names:
                lines.append(f"{len(names)} {title}: " + ", ".join(Path(n).name for n in names[:20])
                             + (" ..." if len(names) > 20 else ""))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(map(shown, lines))  # one line each: a newline or ANSI escape in one is a name's


@dataclass
class LabelledImages:
    """Verified, labelled, split items ready for a DataBlock: what `load_data` returns for any layout."""

    root: Path
    items: list[Path]
    labels: list[str]
    train_idx: list[int]
    valid_idx: list[int]
    report: DataReport
    get_y: Callable = label_from_path  # fastai get_y of the layout: items -> labels
    valid_is_test: bool = False  # the validation half is a test part (Pets' official list): never trained on

    @property
    def vocab(self) -> list[str]:
        """Class names, sorted (Pets: Capitalized cats come before lowercase dogs)."""
        return sorted(set(self.labels))

    @property
    def fit_idx(self) -> list[int]:
        """What a recipe that trains on every labelled photo (the probe) trains on: all but a test part."""
        return list(self.train_idx) if self.valid_is_test else list(range(len(self.items)))


def few_image_classes(counts: dict[str, int]) -> list[str]:
    """Classes with fewer than max(5, a quarter of the median) images."""
    if not counts:
        return []
    limit = max(5, statistics.median(counts.values()) / 4)
    return sorted(c for c, n in counts.items() if n < limit)


def _new_report(reading: Reading, files: Listing) -> DataReport:
    """The report as the layout leaves it: why this layout, its warnings, files that are not images."""
    ignored = [str(p) for p in files.others_under(reading.root) if p.resolve() != reading.labels_file]
    return DataReport(root=str(reading.root), layout=reading.layout, layout_why=reading.why,
                      warnings=reading.warnings, ignored=ignored, unsplit=list(reading.unsplit))


def _verified(reading: Reading, report: DataReport, use_cache: bool,
              progress) -> tuple[list[Path], list[str]]:
    """Decode every image the layout found; (usable labelled items, their labels), the rest in `report`."""
    if not reading.items and not reading.unlabelled:
        raise DataError(f"no images found in {reading.root}")
    checks = verify_images([*reading.items, *map(Path, reading.unlabelled)], reading.root,
                           use_cache=use_cache, progress=progress)
    report.skipped = [asdict(c) for c in checks if c.status == "skipped"]
    report.converted = [asdict(c) for c in checks if c.status == "converted"]
    bad = {r["path"] for r in report.skipped}
    report.unlabelled = [p for p in reading.unlabelled if p not in bad]
    keep = [i for i, p in enumerate(reading.items) if str(p) not in bad]
    if not keep:
        raise DataError(f"no usable images {WHERE_LABELLED[reading.layout]} in {reading.root}")
    return [reading.items[i] for i in keep], [reading.labels[i] for i in keep]


def _drop_unsplit(items: list[Path], labels: list[str], train_idx: list[int], valid_idx: list[int],
                  report: DataReport) -> tuple[list[Path], list[str], list[int], list[int]]:
    """Items in neither half (the official split leaves some out) leave the data, listed in `report`; the
    halves are re-indexed."""
    keep = sorted(set(train_idx) | set(valid_idx))
    if len(keep) == len(items):
        return items, labels, train_idx, valid_idx
    report.unsplit += [str(items[i]) for i in sorted(set(range(len(items))) - set(keep))]
    pos = {old: new for new, old in enumerate(keep)}
    return ([items[i] for i in keep], [labels[i] for i in keep], [pos[i] for i in train_idx],
            [pos[i] for i in valid_idx])


def _count_classes(report: DataReport, labels: list[str]) -> None:
    """Images per class into `report`; refused with fewer than two classes."""
    report.class_counts = dict(sorted(Counter(labels).items()))
    if len(report.class_counts) < 2:
        raise DataError(f"found only one class ({labels[0]}) in {report.root}; "
                        "a classifier needs at least two")


def _check_split(report: DataReport, labels: list[str], train_idx: list[int], valid_idx: list[int],
                 split: str, own: bool) -> None:
    """Refuse a split with an empty half (`all` has no training half), or one of the layout's own (`own`) that
    validates a class it never trains on; warn when a split petclf drew does that, and about classes with few
    images."""
    name = report.split
    if (not train_idx and split != "all") or not valid_idx:
        fix = ("add photos: the random split validates valid_pct of them, rounded down" if name == "random"
               else "put photos in both parts")
        raise DataError(f"split {name!r} leaves {len(train_idx)} training and {len(valid_idx)} validation "
                        f"images; a run needs both: {fix}")
    report.warnings += [f"class {c} has only {report.class_counts[c]} images"
                        for c in few_image_classes(report.class_counts)]
    missing = sorted(set(report.class_counts) - {labels[i] for i in train_idx})
    if missing and own:
        raise DataError(f"the {name} split validates class(es) it never trains on: {', '.join(missing)}; "
                        "add training images for them or remove them")
    if missing and split != "all":
        report.warnings.append(f"no training images for: {', '.join(missing)}")


def _unused_valid_pct(report: DataReport, split: str, valid_pct: float) -> None:
    """A warning when a `valid_pct` other than the default was asked of a random split that the layout's own
    split (train/ + valid/, a csv column) replaced: the setting did nothing."""
    if split == "random" and report.split != "random" and valid_pct != TrainConfig.valid_pct:
        report.warnings.append(f"valid_pct {valid_pct:g} is not used: the data has its own split "
                               f"({report.split}); pass --split FILE to choose another")


def load_data(data: str | Path | None = None, split: str = TrainConfig.split,
              valid_pct: float = TrainConfig.valid_pct, seed: int = TrainConfig.seed,
              use_cache: bool = True, progress=None, layout: str = TrainConfig.layout,
              labels: str | Path | None = None) -> LabelledImages:
    """Find the data, read its layout (`auto`, `pets`, `folders`, or `csv` with `labels`), verify, label and
    split it; raise `DataError` if training could not go on. A test part (Pets' official list, a folders
    layout's test/, a csv's test rows) is never in the training half. `split="test"`: that test part as the
    validation half, for `report --split test`; `split="all"`: every photo (new photos to judge, for
    `report --split all`)."""
    files = Listing.of(find_root(data))  # the one walk of the folder: layouts and the report share it
    reading = read_layout(files.root, layout, labels, test=split == "test", files=files)
    split = pets_test_part(reading, split)
    check_label_clashes(reading.labels)
    report = _new_report(reading, files)
    items, labels_ = _verified(reading, report, use_cache, progress)
    train_idx, valid_idx, report.split = layout_split(reading, items, split, valid_pct, seed)
    _unused_valid_pct(report, split, valid_pct)
    items, labels_, train_idx, valid_idx = _drop_unsplit(items, labels_, train_idx, valid_idx, report)
    _count_classes(report, labels_)
    train_idx, valid_idx = single_images_train(labels_, train_idx, valid_idx, report.warnings,
                                               move=report.split == "random")
    report.n_images, report.n_train, report.n_valid = len(items), len(train_idx), len(valid_idx)
    # own: the layout's own split (train/ + valid/, a csv column) is the user's, never changed
    _check_split(report, labels_, train_idx, valid_idx, split, own=report.split != split)
    return LabelledImages(reading.root, items, labels_, train_idx, valid_idx, report, reading.get_y,
                          valid_is_test=split in ("official", "test", "all"))


def save_examples(data: LabelledImages, out: Path, n: int = N_EXAMPLES, every: bool = False) -> list[Path]:
    """Copies of up to `n` validation photos (`every`: any photo), one class after another, as small JPEGs in
    `out`: the demo's examples for a model whose classes the shipped pet photos do not show."""
    pool = range(len(data.items)) if every or not data.valid_idx else data.valid_idx
    by_class: dict[str, list[int]] = {}
    for i in pool:
        by_class.setdefault(data.labels[i], []).append(i)
    order = [i for rank in range(n) for c in sorted(by_class) for i in by_class[c][rank:rank + 1]][:n]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, i in enumerate(order, 1):
        img = load_rgb(data.items[i])
        img.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
        with open(out / f"{k:02d}.jpg", "wb") as f:  # numbered: a class name may hold any character
            img.save(f, "JPEG", quality=90)
        written.append(out / f"{k:02d}.jpg")
    return written


# ---------------------------------------------------------------------------------------------------- fastai


class PetImage(PILImage):
    """fastai's PILImage, decoded through `load_rgb` (EXIF, odd modes, first frame), not a naive convert."""

    @classmethod
    def create(cls, fn, **kwargs):
        return fn if isinstance(fn, PILImage) else cls(load_rgb(fn))


def augmentations(size: int, min_scale: float) -> list:
    """fastai's `aug_transforms(size, min_scale)`, with the random-resized crop moved before the affine warp.

    fastai warps the whole presized batch (460 px) and crops it to `size` afterwards; cropping first makes the
    warp run on `size` px images. Measured side by side (docs/decisions/redesign-before-after.md, 2 cores,
    resnet34 at 224 px): data pipeline 56.4 -> 33.8 ms per image (1.67 x), training loop 498.7 -> 438.5 ms per
    image (1.14 x), so it stays. The validation pipeline is unchanged: the warp does not run there and the
    crop is the same centre crop.
    """
    from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU, aug_transforms

    tfms = aug_transforms(size=size, min_scale=min_scale)
    for t in tfms:
        if isinstance(t, RandomResizedCropGPU):
            t.order = AffineCoordTfm.order - 1
    return tfms


def make_dataloaders(data: LabelledImages, bs: int = 32, size: int = 224, presize: int = 460,
                     min_scale: float = 0.75, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                     std: Sequence[float] = IMAGENET_DEFAULT_STD, device=None, workers: int | None = None,
                     seed: int | None = None):
    """fastbook's presizing DataBlock: Resize(presize) per item; aug_transforms(size), Normalize per batch."""
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.vision.augment import Resize
    from fastai.vision.data import ImageBlock, Normalize

    dblock = DataBlock(blocks=(ImageBlock(cls=PetImage), CategoryBlock(vocab=data.vocab)),
                       get_y=data.get_y, splitter=IndexSplitter(data.valid_idx),
                       item_tfms=Resize(presize),
                       batch_tfms=[*augmentations(size, min_scale),
                                   Normalize.from_stats(list(mean), list(std))])
    kw = {} if workers is None else {"num_workers": workers}
    if seed is not None:
        from fastai.torch_core import set_seed

        set_seed(seed)
    return dblock.dataloaders(data.items, bs=bs, device=device, **kw)


