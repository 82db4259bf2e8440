"""Splitting labelled images into a training and a validation half, and keeping a test part out of training.

    from petclf.splits import split_indices
    train, valid = split_indices(items, "random", valid_pct=0.2, seed=42)  # fastai's RandomSplitter
    train, valid = split_indices(items, "official", root=images_root)     # Pets' annotations/test.txt
    train, valid = split_indices(items, "valid.txt")                       # a file naming the valid images

A layout's own split (train/ + valid/, a csv column) comes from `petclf.layouts`; this module applies it, or
draws one, and sets Pets' official test list aside from any split that is not that list.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from petclf.errors import DataError
from petclf.layouts import Reading, single_image_classes

TEST_LIST, TRAINVAL_LIST = "test.txt", "trainval.txt"  # Pets' official split, in its annotations/ folder


def annotations_dir(images_root: Path) -> Path | None:
    """The Pets `annotations/` folder beside (or inside) the images folder, if any."""
    for cand in (images_root.parent / "annotations", images_root / "annotations"):
        if cand.is_dir():
            return cand
    return None


def official_lists(images_root: Path | None) -> tuple[Path, Path] | None:
    """Pets' (test.txt, trainval.txt) beside the images, or None unless both are there."""
    ann = annotations_dir(images_root) if images_root else None
    if ann is None or not (ann / TEST_LIST).is_file() or not (ann / TRAINVAL_LIST).is_file():
        return None
    return ann / TEST_LIST, ann / TRAINVAL_LIST


def read_names(path: Path) -> list[str]:
    """First word of every non-empty, non-comment line (Pets' annotation files and plain name lists alike),
    without its extension."""
    lines = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return [Path(n).stem for n in lines]


def random_split(n: int, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """fastai's seeded `RandomSplitter` over `n` items, as sorted (train, valid) indices."""
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be between 0 and 1, got {valid_pct}")
    from fastai.data.transforms import RandomSplitter

    train, valid = RandomSplitter(valid_pct=valid_pct, seed=seed)(range(n))
    return sorted(int(i) for i in train), sorted(int(i) for i in valid)


def official_split(stems: list[str], root: Path | None) -> tuple[list[int], list[int]]:
    """(trainval, test) indices from Pets' annotation lists; a photo in neither is in neither half."""
    lists = official_lists(root)
    if lists is None:
        raise DataError("--split official needs annotations/trainval.txt and annotations/test.txt "
                        "beside images/")
    test, trainval = set(read_names(lists[0])), set(read_names(lists[1]))
    return ([i for i, s in enumerate(stems) if s in trainval and s not in test],
            [i for i, s in enumerate(stems) if s in test])


def file_split(stems: list[str], split: str) -> tuple[list[int], list[int]]:
    """(the rest, the images the file `split` names)."""
    path = Path(split)
    if not path.is_file():
        raise DataError("--split must be random, official or a file of validation image names; "
                        f"not found: {split}")
    names = set(read_names(path))
    valid = [i for i, s in enumerate(stems) if s in names]
    if not valid:
        raise DataError(f"split file {path} names none of the {len(stems)} images")
    vset = set(valid)
    return [i for i in range(len(stems)) if i not in vset], valid


def split_indices(items: Sequence[Path], split: str, valid_pct: float = 0.2, seed: int = 42,
                  root: Path | None = None) -> tuple[list[int], list[int]]:
    """(train, valid) indices into `items` for `random`, `official` or a file naming the validation images."""
    if split == "random":
        return random_split(len(items), valid_pct, seed)
    stems = [p.stem for p in items]
    return official_split(stems, root) if split == "official" else file_split(stems, split)


def layout_split(reading: Reading, items: list[Path], split: str, valid_pct: float,
                 seed: int) -> tuple[list[int], list[int], str]:
    """(train, valid, split name): the layout's own split (train/ + valid/, a csv column) unless `split` names
    another than random, else `split_indices`; `all`: every photo is the held-out half (new data to judge)."""
    if split == "all":
        return [], list(range(len(items))), "all"
    if reading.valid is not None and split in ("random", "test"):
        valid = dict(zip(map(str, reading.items), reading.valid, strict=True))
        flags = [valid[str(p)] for p in items]
        train, valid = [i for i, v in enumerate(flags) if not v], [i for i, v in enumerate(flags) if v]
        return train, valid, reading.split_name
    train_idx, valid_idx = split_indices(items, split, valid_pct, seed, reading.root)
    return train_idx, valid_idx, split


def pets_test_part(reading: Reading, split: str) -> str:
    """The split to draw once Pets' test part is placed: `test` means its official list (refused without
    it); any split but that list (`official`) or `all` leaves the list's photos out (as not in the split)."""
    if reading.layout != "pets":
        return split
    if split == "test":
        if official_lists(reading.root) is None:
            raise DataError("--split test needs the official Pets lists annotations/test.txt and "
                            "trainval.txt beside images/; pass --split valid or a file naming the images "
                            "instead")
        return "official"
    if split not in ("official", "all"):
        _set_aside_test_list(reading)
    return split


def _set_aside_test_list(reading: Reading) -> None:
    """Move the photos Pets' annotations/test.txt names out of `reading`, into its `unsplit`."""
    ann = annotations_dir(reading.root)
    if ann is None or not (ann / TEST_LIST).is_file():
        return
    test = set(read_names(ann / TEST_LIST))
    keep = [i for i, p in enumerate(reading.items) if p.stem not in test]
    reading.unsplit += [str(p) for p in reading.items if p.stem in test]
    reading.items, reading.labels = [reading.items[i] for i in keep], [reading.labels[i] for i in keep]


def single_images_train(labels: list[str], train_idx: list[int], valid_idx: list[int], warnings: list[str],
                        move: bool) -> tuple[list[int], list[int]]:
    """A class with one image cannot be both trained on and validated: a warning, and (`move`: in a split
    petclf drew) it trains."""
    lonely = set(single_image_classes(labels))
    if lonely:
        warnings.append(f"{len(lonely)} class(es) with one image, used for training only (nothing "
                        f"validates them): {', '.join(sorted(lonely))}")
    moved = {i for i in valid_idx if labels[i] in lonely} if move else set()
    return sorted([*train_idx, *moved]), [i for i in valid_idx if i not in moved]
