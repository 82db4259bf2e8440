"""How a folder of labelled photos is read: Pets file names, a folder per class, or a CSV of `file,label`.

    petclf data check --data ~/photos                                  # says which layout it found, and why
    petclf data check --data ~/photos --layout csv --labels ~/photos/labels.csv

    from petclf.layouts import read_layout, read_groups
    found = read_layout("~/photos")          # Reading(layout, why, items, labels, ...), not yet verified
    read_groups("kinds.csv", found.labels)   # ('kind', {label: group}) from a `label,kind` CSV

Layouts (fastai's own conventions): `pets`, labels from `<breed>_<number>.<ext>` file names
(`annotations/` gives the official split); `folders`, the parent folder is the label (fastai's
`parent_label`) and `train/` beside `valid/` (or `val/`) is the split (fastai's `GrandparentSplitter`);
`csv`, `file,label` rows with an optional `split` or `is_valid` column, files relative to the data folder
(fastai's `from_df`: `ColReader`, `ColSplitter`). A test part (`test/`, `split=test` rows, Pets'
`test.txt`) is never trained on. `auto` picks the one reading that makes sense and refuses a folder that
reads two ways.
"""

from __future__ import annotations

import csv
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from petclf.config import Layout
from petclf.errors import DataError
from petclf.labels import breed_of, label_from_path
from petclf.listing import Listing

LAYOUTS = tuple(x.value for x in Layout)  # what --layout takes
TRAIN_DIR = "train"  # fastai GrandparentSplitter's train_name
TEST_DIR = "test"  # a folders layout's test part (test/<label>/), a csv split value: `report --split test`
VALID_DIRS = ("valid", "val")  # validation folder names, the first present wins; test/ is never trained on
# a csv `split` cell: True for the held-out half
SPLIT_VALUES = {"train": False, "valid": True, "val": True, "validation": True, "test": True}
BOOL_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}
SHOWN = 8  # problems listed by name in one error line; the rest are counted


@dataclass
class Reading:
    """What a layout says about a folder before any image is decoded: labelled files, the layout's split."""

    layout: str
    why: str  # one line: why this layout (printed by `petclf data check`)
    root: Path  # the folder the images are under
    items: list[Path]
    labels: list[str]
    get_y: Callable  # fastai get_y that gives `labels` from `items` (pickled with export.pkl: no lambdas)
    valid: list[bool] | None = None  # the layout's own split (train/ + valid/, a csv column); None: none
    split_name: str | None = None  # how that split was read, for the data report
    unlabelled: list[str] = field(default_factory=list)  # images the layout gives no label
    unsplit: list[str] = field(default_factory=list)  # labelled images in neither half of the layout's split
    warnings: list[str] = field(default_factory=list)
    labels_file: Path | None = None  # the csv layout's labels file (not a stray non-image file)
    merged: list[str] = field(default_factory=list)  # folders layout: class names that several folders give


class CsvLabels:
    """fastai get_y for the csv layout: a file's label from the CSV (a dict lookup; picklable)."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels

    def __call__(self, path) -> str:
        """The label the CSV gives `path`."""
        return self.labels[str(path)]


def _listing(rows: list[str]) -> str:
    """The first SHOWN entries, then how many more."""
    more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return ", ".join(rows[:SHOWN]) + more


def check_data_folder(data: str | Path) -> Path:
    """`data` as a folder path, or one line (`DataError`) when it is missing or a file: cheap, so the command
    line says it before torch and fastai load."""
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"--data must be a folder, not a file: {root}")
    return root


# ---------------------------------------------------------------------------------------------------- pets


def pets_root(root: Path) -> Path:
    """Where Pets images are: `root/images` when there is one (the extracted dataset), else `root`."""
    return root / "images" if (root / "images").is_dir() else root


def read_pets(files: Listing, why: str = "") -> Reading:
    """Labels from `<breed>_<number>.<ext>` file names, anywhere below the images folder."""
    root = pets_root(files.root)
    images = files.images_under(root)
    breeds = [breed_of(p) for p in images]
    items = [p for p, b in zip(images, breeds, strict=True) if b is not None]
    return Reading("pets", why or "file names are <breed>_<number>.<ext>", root, items,
                   [b for b in breeds if b is not None], label_from_path,
                   unlabelled=[str(p) for p, b in zip(images, breeds, strict=True) if b is None])


# ---------------------------------------------------------------------------------------------------- folders


def _valid_dir(root: Path) -> str | None:
    """The first of valid/, val/ that exists beside train/ (test/ is a test part, set aside)."""
    return next((n for n in VALID_DIRS if (root / n).is_dir()), None)


def _has_split_dirs(root: Path) -> bool:
    """True when `root/train` holds class folders (fastai's GrandparentSplitter layout)."""
    train = root / TRAIN_DIR
    return train.is_dir() and any(d.is_dir() and not d.name.startswith(".") for d in train.iterdir())


def _class_dirs(tops: list[Path]) -> list[Path]:
    """The visible folders directly inside each of `tops`: the class folders."""
    return sorted(d for t in tops if t.is_dir() for d in t.iterdir()
                  if d.is_dir() and not d.name.startswith("."))


def _same_name_folders(items: list[Path], tops: list[Path]) -> list[str]:
    """Class names that more than one folder gives (`a/x` and `b/x`, or `cats/2019` and `dogs/2019`), each
    with its folders: the label is the folder a photo is directly in, so those photos would silently become
    one class."""
    where: dict[str, set[str]] = defaultdict(set)
    for p in items:
        top = next((t for t in tops if p.is_relative_to(t)), tops[0])
        where[p.parent.name].add(p.parent.relative_to(top).as_posix())
    return [f"{name!r} from {' and '.join(sorted(dirs))}" for name, dirs in sorted(where.items())
            if len(dirs) > 1]


def read_folders(files: Listing, why: str = "", test: bool = False) -> Reading:
    """`root/<label>/<file>`, or `root/train|valid/<label>/<file>`: the parent folder is the label (fastai's
    `parent_label`), and train/ + valid/ (or val/) the split (fastai's `GrandparentSplitter`); train/ alone
    (or beside test/ only) is all training data, split as usual. A test/ is never read for training; `test`:
    test/ is the held-out half instead (for `report --split test`)."""
    from fastai.data.transforms import GrandparentSplitter, parent_label

    root = files.root
    split_dirs = _has_split_dirs(root)
    valid_name = (TEST_DIR if (root / TEST_DIR).is_dir() else None) if test else _valid_dir(root)
    valid_name = valid_name if split_dirs else None
    tops = [root / TRAIN_DIR, *([root / valid_name] if valid_name else [])] if split_dirs else [root]
    images = files.images
    in_class = [p.parent != root and p.parent not in tops for p in images]  # else: in no class folder
    items = [p for p, ok in zip(images, in_class, strict=True) if ok]
    unsplit: list[str] = []
    if split_dirs:  # only what lies in train/ and valid/ is read; the rest (a test/) is set aside
        train, valid = GrandparentSplitter(TRAIN_DIR, valid_name or "")(items)
        inside = set(map(int, train)) | set(map(int, valid))
        unsplit = [str(p) for i, p in enumerate(items) if i not in inside]
        items = [p for i, p in enumerate(items) if i in inside]
    reading = Reading("folders", why or "one folder per class", root, items, [parent_label(p) for p in items],
                      parent_label, unsplit=unsplit,
                      unlabelled=[str(p) for p, ok in zip(images, in_class, strict=True) if not ok])
    reading.merged = _same_name_folders(items, tops)
    if valid_name:
        reading.valid = [p.parent.parent.name == valid_name for p in items]
        reading.split_name = f"folders {TRAIN_DIR}/ + {valid_name}/"
    empty = [d for d in _class_dirs(tops) if d not in files.image_dirs]
    if empty:
        reading.warnings.append(f"{len(empty)} empty class folder(s) skipped: "
                                + _listing([str(d.relative_to(root)) for d in empty]))
    return reading


# ---------------------------------------------------------------------------------------------------- csv


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, row)]) of a CSV file; one line when it cannot be read."""
    if not path.is_file():
        raise DataError(f"labels file not found: {path}")
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            return header, [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k})
                            for row in reader]
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name} is not a UTF-8 CSV file ({e})") from None
    except csv.Error as e:  # a cell over the csv module's limit (128 KiB), a NUL byte: the line is what helps
        line = reader.line_num + 1 if reader is not None else 1  # the line being read when it failed
        raise DataError(f"{path.name} line {line}: cannot be read as CSV ({e})") from None


def _csv_valid(rows: list[tuple[int, dict[str, str]]], col: str, problems: list[str],
               test: bool = False) -> list[bool | None] | None:
    """Each row's split from a `split` (train/valid/test) or `is_valid` (true/false) cell; None: set aside
    (test rows: never trained on). `test`: the `test` rows are the held-out half and valid rows are set aside
    (None when there are no test rows)."""
    table = SPLIT_VALUES if col == "split" else BOOL_VALUES
    bad = [f"line {n}: {r[col]!r}" for n, r in rows if r[col].lower() not in table]
    if bad:
        allowed = "/".join(sorted(set(table) - {""}))
        problems.append(f"{len(bad)} {col} value(s) not in {allowed} ({_listing(bad)})")
    values = [r[col].lower() for _, r in rows]
    if test:
        if col != "split" or TEST_DIR not in values:
            return None
        return [True if v == TEST_DIR else None if table.get(v, False) else False for v in values]
    return [None if col == "split" and v == TEST_DIR else table.get(v, False) for v in values]


def outside(name: str) -> bool:
    """True when a CSV's file name leaves the data folder: absolute, or climbing out with `..` (checked as
    written: a symlink the user put inside the folder is theirs to make)."""
    norm = os.path.normpath(name)
    return Path(name).is_absolute() or Path(norm).parts[:1] == ("..",)


def _csv_problems(rows: list[tuple[int, dict[str, str]]], root: Path) -> list[str]:
    """Unknown files, empty labels, duplicate rows and conflicting labels, each with its line numbers."""
    first: dict[str, tuple[int, str]] = {}
    found: dict[str, list[str]] = {"unknown file(s)": [], "empty label(s)": [], "duplicate row(s)": [],
                                   "conflicting label(s)": [], "file(s) outside the data folder": []}
    for n, r in rows:
        f, label = r["file"], r["label"]
        if not label:
            found["empty label(s)"].append(f"line {n}")
        if f not in first:
            first[f] = (n, label)
            if f and outside(f):  # the data folder is what the run records and `report` reads again
                found["file(s) outside the data folder"].append(f"line {n}: {f}")
            elif not f or not (root / f).is_file():
                found["unknown file(s)"].append(f"line {n}: {f or '(empty)'}")
            continue
        line, other = first[f]
        if other == label:
            found["duplicate row(s)"].append(f"line {n}: {f} (line {line})")
        else:
            found["conflicting label(s)"].append(f"lines {line}, {n}: {f} is {other!r} and {label!r}")
    return [f"{len(v)} {what} ({_listing(v)})" for what, v in found.items() if v]


def read_csv(files: Listing, labels: str | Path, why: str = "", test: bool = False) -> Reading:
    """`file,label` rows (plus `split` or `is_valid`), files relative to the data folder: fastai's from_df
    conventions. `test`: the `split` column's test rows are the held-out half (for `report --split test`)."""
    root, path = files.root, Path(labels).expanduser()
    header, rows = _csv_rows(path)
    missing = [c for c in ("file", "label") if c not in header]
    if missing:
        raise DataError(f"{path.name} lacks column(s) {', '.join(missing)} "
                        f"(header: {', '.join(header) or 'empty'}); it needs file,label and optionally "
                        "split or is_valid")
    problems = _csv_problems(rows, root)
    col = next((c for c in ("split", "is_valid") if c in header), None)
    valid = _csv_valid(rows, col, problems, test) if col else None
    if problems:
        raise DataError(f"{path.name}: " + "; ".join(problems))
    aside = {i for i in range(len(rows)) if valid is not None and valid[i] is None}  # test rows
    keep = [i for i in range(len(rows)) if i not in aside]
    if col == "split" and valid is not None and not any(valid[i] for i in keep):
        valid, col = None, None  # train (and test) rows only: the rest is split as usual (--split)
    items = [root / rows[i][1]["file"] for i in keep]
    reading = Reading("csv", why or f"labels from {path.name}", root, items,
                      [rows[i][1]["label"] for i in keep],
                      CsvLabels({str(root / r["file"]): r["label"] for _, r in rows}),
                      valid=[bool(valid[i]) for i in keep] if valid else None,
                      split_name=f"csv column {col}" if col else None,
                      unsplit=[str(root / rows[i][1]["file"]) for i in sorted(aside)],
                      labels_file=path.resolve())
    listed = {p.resolve() for p in items} | {Path(p).resolve() for p in reading.unsplit}
    reading.unlabelled = [str(p) for p in files.images if p.resolve() not in listed]
    return reading


# ------------------------------------------------------------------------------------------------ detection


def _differ(a: Reading, b: Reading) -> bool:
    """True when two readings label some file differently (or label different files)."""
    return (dict(zip(map(str, a.items), a.labels, strict=True))
            != dict(zip(map(str, b.items), b.labels, strict=True)))


def labels_csvs(files: Listing) -> list[Path]:
    """CSV files directly in the data folder with `file` and `label` columns: a csv layout's labels file."""
    found = []
    for p in (f for f in files.files if f.parent == files.root and f.suffix == ".csv"):
        try:
            with p.open(newline="", encoding="utf-8-sig") as f:
                header = {h.strip() for h in next(csv.reader(f), [])}
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        if {"file", "label"} <= header:
            found.append(p)
    return found


def _reads(r: Reading) -> str:
    """How a reading labels the files, for the error that names two readings."""
    how = {"pets": "from <breed>_<number> file names", "folders": "from folder names", "csv": "from the CSV"}
    return f"as {r.layout} ({len(set(r.labels))} classes {how[r.layout]}, e.g. {sorted(set(r.labels))[0]!r})"


def detect(files: Listing) -> Reading:
    """The one reading of the folder that gives two classes or more; an error naming both when two differ."""
    root = files.root
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return read_pets(files, "images/ beside annotations/ (the Oxford-IIIT Pets layout)")
    csvs = labels_csvs(files)
    readings = [read_folders(files, ""), read_pets(files)]
    if len(csvs) == 1:
        readings.insert(0, read_csv(files, csvs[0], f"{csvs[0].name} has file and label columns"))
    viable = [r for r in readings if len(set(r.labels)) >= 2]
    if len(csvs) > 1 and not viable:  # labelled by a CSV, but which one is the user's to say
        raise DataError(f"{root} has {len(csvs)} labels files with file and label columns "
                        f"({', '.join(p.name for p in csvs)}); pass --labels FILE.csv to say which")
    for other in viable[1:]:
        if _differ(viable[0], other):
            flag = f"--labels {csvs[0].name}" if "csv" in (viable[0].layout, other.layout) else ""
            flags = " or ".join(flag if r.layout == "csv" else f"--layout {r.layout}"
                                for r in (viable[0], other))
            raise DataError(f"{root} reads two ways: {_reads(viable[0])} and {_reads(other)}; pass {flags}")
    folders = readings[-2]
    if viable and viable[0] is not folders:
        return viable[0]
    if viable or folders.items:
        split = ", split into train/ and " + folders.split_name.split(" + ")[1] if folders.split_name else ""
        folders.why = f"{len(set(folders.labels))} class folders (the folder is the label){split}"
        return folders
    return readings[-1]


def read_layout(root: str | Path, layout: str = "auto", labels: str | Path | None = None,
                test: bool = False, files: Listing | None = None) -> Reading:
    """The labelled images under `root` as `layout` reads them (`auto`: detected; `--labels` means csv);
    `test`: with a folders or csv layout's test part as the held-out half, as `report --split test` evaluates
    it. `files`: `root`'s listing when the caller has it (else it is walked here)."""
    files = files or Listing.of(root)
    reading = _read_layout(files, layout, labels)
    if reading.layout == "folders" and reading.merged:  # refused, not renamed: often a slip
        raise DataError(f"{len(reading.merged)} class name(s) given by more than one folder, which would "
                        f"merge into one class: {_listing(reading.merged)}; the class is the folder a "
                        "photo is directly in: rename the folders so each class has its own name")
    if not test or reading.layout == "pets":  # Pets' test part is its official list (split `official`)
        return reading
    reading = read_csv(files, reading.labels_file, reading.why, test=True) if reading.layout == "csv" \
        else read_folders(files, reading.why, test=True)
    if reading.valid is None:
        where = ("rows whose split is test" if reading.layout == "csv"
                 else f"{TEST_DIR}/<label>/ beside {TRAIN_DIR}/")
        raise DataError(f"--split test needs a test part: this {reading.layout} layout has no {where}")
    return reading


def _read_layout(files: Listing, layout: str, labels: str | Path | None) -> Reading:
    """`read_layout` without the test part."""
    root = files.root
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {'|'.join(LAYOUTS)}, got {layout!r}")
    if layout == "csv" and labels is None:
        if len(found := labels_csvs(files)) != 1:
            raise DataError("--layout csv needs --labels FILE.csv (columns file,label and optionally "
                            f"split or is_valid); {root} has {len(found) or 'no'} CSV file(s) with those "
                            "columns")
        labels = found[0]
    if labels is not None and layout in ("auto", "csv"):
        return read_csv(files, labels, f"--labels {Path(labels).name} given" if layout == "auto" else "")
    if labels is not None:
        raise DataError(f"--labels is for --layout csv, not {layout}")
    if layout == "pets":
        return read_pets(files, "--layout pets")
    if layout == "folders":
        return read_folders(files, "--layout folders")
    return detect(files)


# ---------------------------------------------------------------------------------------------------- checks


def label_key(label: str) -> str:
    """What two labels that a person would call the same share: Unicode NFC form, case folded."""
    return unicodedata.normalize("NFC", label).casefold()


def check_label_clashes(labels: list[str]) -> None:
    """Refuse labels that differ only in case or Unicode normalisation (`Cat` vs `cat`), naming both."""
    seen: dict[str, set[str]] = defaultdict(set)
    for label in set(labels):
        seen[label_key(label)].add(label)
    clashes = [sorted(v) for v in seen.values() if len(v) > 1]
    if clashes:
        pairs = "; ".join(" vs ".join(repr(x) for x in c) for c in sorted(clashes))
        raise DataError(f"labels that differ only in case or Unicode normalisation: {pairs}; rename one so "
                        "each class has one spelling")


def single_image_classes(labels: list[str]) -> list[str]:
    """Classes with exactly one image: it cannot be both trained on and validated."""
    return sorted(c for c, n in Counter(labels).items() if n == 1)


def read_groups(path: str | Path, classes: list[str]) -> tuple[str, dict[str, str]]:
    """(group name: the CSV's second column, {class: group}) from a `label,<group name>` CSV. Every class
    needs one group; rows for labels the data lacks are ignored (one groups file can serve several subsets of
    a dataset)."""
    path = Path(path).expanduser()
    header, rows = _csv_rows(path)
    if len(header) != 2 or not all(header):
        raise DataError(f"{path.name} must have two columns, label and the group's name (e.g. label,kind), "
                        f"not {', '.join(header) or 'none'}")
    key, name = header
    groups: dict[str, str] = {}
    problems = []
    for n, r in rows:
        if r[key] in groups:
            problems.append(f"line {n}: {r[key]!r} listed twice")
        elif not r[name]:
            problems.append(f"line {n}: no {name} for {r[key]!r}")
        groups.setdefault(r[key], r[name])
    missing = sorted(set(classes) - set(groups))
    if missing:
        problems.append(f"no {name} for: {_listing([repr(m) for m in missing])}")
    if problems:
        raise DataError(f"{path.name}: " + "; ".join(problems))
    return name, {c: groups[c] for c in classes}
