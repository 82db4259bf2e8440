"""Fast inference from an exported bundle: one image, or folders of them in overlapped batches.

    petclf predict photos/ cat.jpg 'more/*.png' --model exports/latest --topk 5 --format csv --out preds.csv

    from petclf import load_model
    p = load_model("exports/latest")                   # pickle-free: safetensors + model.json, checksum verified
    p.predict("cat.jpg")                               # {breed: prob}, most likely first
    for row in p.predict_paths(["photos/"], bs=32):    # decoding in threads, overlapped with the forward pass
        print(row.file, row.top(3), row.group)

Preprocessing is fastai's validation preprocessing (`petclf.preprocess`); probabilities are
`softmax(logits / temperature)`. The predictor works in numpy: with a verified model.onnx (backend `auto` on CPU,
or `onnx`) neither torch nor fastai is imported, so a cold `petclf predict` starts in well under a second.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import softmax

from petclf.bundle import Manifest, class_groups, display_names, read_manifest, resolve_bundle_dir
from petclf.config import DEFAULT_MODEL, UNSURE_BELOW, Backend, OutputFormat
from petclf.errors import ImageError, PetclfError
from petclf.image import ImageSource
from petclf.io import list_images
from petclf.labels import class_noun
from petclf.notapet import Detector
from petclf.openset import OpenSet
from petclf.preprocess import Preprocess
from petclf.verdict import Verdict, make_verdict

if TYPE_CHECKING:
    import torch

Net = Callable[[np.ndarray], np.ndarray]  # a preprocessed float32 batch -> its logits


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """One image's result: probabilities over all classes (most likely first) and over their groups (Pets: cat or
    dog; empty for a model without groups), or the error that stopped it."""

    file: str
    probs: dict[str, float] = field(default_factory=dict)
    group_probs: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    verdict: Verdict | None = None  # both answers (species or not a pet; breed), None for an error row

    @property
    def ok(self) -> bool:
        """True when the image was predicted."""
        return self.error is None

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most likely breeds with their probabilities."""
        return list(self.probs.items())[:k]

    @property
    def group(self) -> str | None:
        """The group (Pets: `cat` or `dog`) with the most probability summed over its classes; None without groups."""
        return max(self.group_probs, key=self.group_probs.get) if self.group_probs else None


# ---------------------------------------------------------------------------------------------------- paths


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _glob(pattern: str) -> list[Path]:
    """Paths matching `pattern` (`**`: any depth), sorted, hidden ones left out. pathlib's glob, not the glob
    module's: that one follows symlinked folders, and a folder linking to its parent never ends."""
    parts = Path(pattern).parts
    i = next(i for i, part in enumerate(parts) if _is_glob(part))
    root = Path(*parts[:i]) if i else Path()
    return sorted(m for m in root.glob(str(Path(*parts[i:])))
                  if not any(part.startswith(".") for part in m.relative_to(root).parts))


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursive) and globs -> (image files, error rows for arguments that name no image)."""
    items = expand_inputs(paths)
    return [i for i in items if isinstance(i, Path)], [i for i in items if isinstance(i, Prediction)]


def expand_inputs(paths: Iterable[str | Path]) -> list[Path | Prediction]:
    """Files, folders (recursive) and globs -> image files and error rows (arguments that name no image), in the
    order given; a file named twice comes once, where it first appears.

    Symlinked folders are not followed; a symlink that loops or leads nowhere is kept as a file, and decoding gives
    it its error row.
    """
    items: list[Path | Prediction] = []  # image files, and error rows in their argument's place
    for arg in paths:
        p = Path(arg)
        try:
            if p.is_dir():
                found = list_images(p)
                items += found
                if not found:
                    items.append(Prediction(str(p), error=f"{p}: no images in this folder"))
            elif p.exists() or p.is_symlink():
                items.append(p)
            elif _is_glob(str(arg)):
                matched = _glob(str(arg))
                for m in matched:
                    items += list_images(m) if m.is_dir() else [m]
                if not matched:
                    items.append(Prediction(str(arg), error=f"{arg}: no files match"))
            else:
                items.append(Prediction(str(arg), error=f"{p.name}: file not found"))
        except (OSError, ValueError) as e:  # a name too long, a NUL byte, an unreadable folder
            items.append(Prediction(str(arg), error=f"{p.name}: cannot read ({getattr(e, 'strerror', None) or e})"))
    seen: set[Path] = set()
    return [i for i in items if not isinstance(i, Path) or not (i in seen or seen.add(i))]


def _bounded_map(fn: Callable, items: Sequence, pool: ThreadPoolExecutor, ahead: int) -> Iterator[Future]:
    """`pool.submit(fn, item)` for each item, keeping at most `ahead` unfinished futures; yields them in order."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


# ---------------------------------------------------------------------------------------------------- the predictor


class TorchNet:
    """A torch network with the predictor's network interface: numpy batch in, numpy logits out."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.model, self.device = model, device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed batch."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, pooled features) for a preprocessed batch: one forward pass, as the ONNX graph gives them."""
        import torch

        from petclf.model import WithFeatures

        with torch.inference_mode():
            logits, feats = WithFeatures(self.model)(torch.from_numpy(x).to(self.device))
            return logits.float().cpu().numpy(), feats.cpu().numpy()


OPEN_SET_FIELDS = ("pet", "known", "species", "species_prob", "pet_mass", "coverage")
SIGNALS = np.dtype([("score", "f8"), ("pet", "i1"), ("known", "i1"), ("species", "U16"), ("species_prob", "f8"),
                    ("pet_mass", "f8"), ("coverage", "f8")])  # pet, known: 1, 0 or -1 (no open-set signals)


def signal_rows(feats: np.ndarray, detector: Detector | None, open_set: OpenSet | None) -> np.ndarray:
    """One `SIGNALS` record per row of pooled features: the not-a-pet score (NaN without a detector) and the open-set
    signals (pet = known = -1 without them)."""
    rows = np.zeros(len(feats), SIGNALS)
    rows["score"] = detector(feats)[0] if detector is not None else np.nan
    rows["pet"] = rows["known"] = -1
    rows["species_prob"] = rows["pet_mass"] = rows["coverage"] = np.nan
    if open_set is not None:
        sig = open_set(feats)
        rows["pet"], rows["known"], rows["species"] = sig.pet, sig.known, sig.species
        rows["species_prob"], rows["pet_mass"], rows["coverage"] = sig.species_prob, sig.pet_mass, sig.coverage
    return rows


class Predictor:
    """A loaded model and its preprocessing: `predict(image)`, `predict_paths(paths)`, `topk(image)`."""

    def __init__(self, net: Net, manifest: Manifest, backend: str = "torch",
                 model: torch.nn.Module | Callable[[], torch.nn.Module] | None = None,
                 detector: Detector | None = None, open_set: OpenSet | None = None):
        self.net, self.manifest, self.backend = net, manifest, backend
        self.detector = detector  # the bundle's not-a-pet detector; None when it has none (or it is off)
        self.open_set = open_set  # the bundle's open-set signals (petclf.openset); None when it has none
        # below this top-class probability the breed answer lists the likely ones; the bundle's own, else the default
        self.unsure_below = manifest.unsure_below
        # the torch network for Grad-CAM: given, or (ONNX backend) a loader called on first use
        self._model = model
        self._model_lock = threading.Lock()
        self.pre = Preprocess.from_manifest(manifest)
        self.classes = manifest.class_names
        self.display = display_names(manifest)  # {class id: the name people see}
        self.group_name, self.groups = class_groups(manifest)  # ("species", {breed: cat|dog}) for Pets
        self.noun = class_noun(self.group_name)  # what a class is called in words: breed (Pets) or class
        self.temperature = manifest.temperature
        self._group_idx = {g: np.array([i for i, c in enumerate(self.classes) if self.groups[c] == g])
                           for g in sorted(set(self.groups.values()))}

    @property
    def has_model(self) -> bool:
        """True when a torch network (for Grad-CAM) is at hand or can be loaded."""
        return self._model is not None

    @property
    def model(self) -> torch.nn.Module:
        """The torch network (for Grad-CAM); on the ONNX backend it is loaded from the bundle on first use."""
        import torch

        with self._model_lock:
            if self._model is None:
                raise PetclfError("this predictor has no torch network; load the model with backend='torch'")
            if not isinstance(self._model, torch.nn.Module):
                self._model = self._model()
            return self._model

    def preprocess(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Images (paths, bytes, PIL, arrays) -> the normalised input batch."""
        return self.pre(images)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw network outputs for a preprocessed batch."""
        return np.asarray(self.net(x), np.float32)

    def softmax(self, logits: np.ndarray) -> np.ndarray:
        """Logits -> probabilities: `softmax(logits / temperature)` (the calibrated temperature from the manifest)."""
        return softmax(np.asarray(logits, np.float64) / self.temperature, axis=1)

    def probs(self, x: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities for a preprocessed batch; with `tta`, averaged with the horizontally flipped batch."""
        return self._flip_averaged(self.softmax(self.logits(x)), x, tta)

    def _flip_averaged(self, p: np.ndarray, x: np.ndarray, tta: bool) -> np.ndarray:
        """`p` (the batch `x`'s probabilities), or with `tta` its mean with those of the horizontally flipped batch."""
        if not tta:
            return p
        return (p + self.softmax(self.logits(np.ascontiguousarray(x[..., ::-1])))) / 2

    def outputs(self, x: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, each row's signals (`signal_rows`) or None without a detector or open-set signals) for
        a preprocessed batch."""
        if (self.detector is None and self.open_set is None) or not hasattr(self.net, "outputs"):
            return self.probs(x, tta), None
        logits, feats = self.net.outputs(x)  # one forward pass for both
        p = self._flip_averaged(self.softmax(logits), x, tta)
        return p, None if feats is None else signal_rows(feats, self.detector, self.open_set)  # None: an old graph

    def verdict(self, p: np.ndarray, signals: np.void | float | None = None,
                unsure_below: float | None = None) -> Verdict:
        """The answers for one row of probabilities and its signals (a `signal_rows` row, or a not-a-pet score)."""
        row = signals if isinstance(signals, np.void) else None
        score = float(row["score"] if row is not None else signals) if signals is not None else None
        score = None if score is None or np.isnan(score) else score
        flagged = None if score is None or self.detector is None else bool(score < self.detector.threshold)
        open_set = None if row is None or row["pet"] < 0 else {k: row[k].item() for k in OPEN_SET_FIELDS}
        return make_verdict(self.to_dict(p), self.group_probs(p), self.display, self.groups, self.group_name,
                            flagged, score, self.unsure_below if unsure_below is None else unsure_below,
                            open_set, self.noun, None if self.open_set is None else UNSURE_BELOW)

    def answer(self, image: ImageSource, tta: bool = False) -> Verdict:
        """Both answers for one image (path, bytes, PIL image or array)."""
        p, s = self.outputs(self.pre.one(image), tta)
        return self.verdict(p[0], None if s is None else s[0])

    def to_dict(self, p: np.ndarray) -> dict[str, float]:
        """One row of probabilities -> {breed: prob}, most likely first."""
        return {self.classes[i]: float(p[i]) for i in np.argsort(-p, kind="stable")}

    def group_probs(self, p: np.ndarray) -> dict[str, float]:
        """One row of class probabilities -> {group: summed prob} ({} for a model without groups)."""
        return {g: float(p[idx].sum()) for g, idx in self._group_idx.items()}

    def predict(self, image: ImageSource, tta: bool = False) -> dict[str, float]:
        """{breed: prob} for one image (path, bytes, PIL image or array), most likely first."""
        return self.to_dict(self.probs(self.pre.one(image), tta)[0])

    def topk(self, image: ImageSource, k: int = 5, tta: bool = False) -> list[tuple[str, float]]:
        """The `k` most likely (breed, prob) pairs for one image."""
        return list(self.predict(image, tta).items())[:k]

    def _decode(self, path: Path) -> np.ndarray | ImageError:
        """One file's input, or the error that is its row: nothing one file does may stop the others."""
        try:
            return self.pre.one(path)
        except ImageError as e:
            return e
        except Exception as e:  # noqa: BLE001 - load_rgb raises only ImageError; this is the backstop
            return ImageError(f"{path.name}: cannot be read ({type(e).__name__}: {e})")

    def _rows(self, files: Sequence[Path], xs: list[np.ndarray | ImageError], tta: bool) -> list[Prediction]:
        good = [i for i, x in enumerate(xs) if not isinstance(x, ImageError)]
        rows = [Prediction(str(f), error=str(x)) if isinstance(x, ImageError) else None
                for f, x in zip(files, xs, strict=True)]
        if good:
            p, s = self.outputs(np.concatenate([xs[i] for i in good]), tta)
            for j, i in enumerate(good):
                rows[i] = Prediction(str(files[i]), self.to_dict(p[j]), self.group_probs(p[j]),
                                     verdict=self.verdict(p[j], None if s is None else s[j]))
        return rows

    def predict_paths(self, paths: Iterable[str | Path], bs: int = 32, tta: bool = False,
                      workers: int | None = None) -> Iterator[Prediction]:
        """One `Prediction` per image under `paths` (files, folders, globs), in the order given; bad files and
        arguments that name no image get error rows in their place.

        Images are decoded and preprocessed by a thread pool (Pillow and scipy release the GIL) a few batches ahead
        of the forward pass.
        """
        items = expand_inputs(paths)
        files = [i for i in items if isinstance(i, Path)]
        rows = self._predict_files(files, bs, tta, workers)
        for item in items:
            yield item if isinstance(item, Prediction) else next(rows)

    def _predict_files(self, files: list[Path], bs: int, tta: bool, workers: int | None) -> Iterator[Prediction]:
        """One `Prediction` per file, in order, batched."""
        workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="petclf-decode") as pool:
            batch_files: list[Path] = []
            batch_xs: list[np.ndarray | ImageError] = []
            for f, fut in zip(files, _bounded_map(self._decode, files, pool, ahead=2 * bs), strict=True):
                batch_files.append(f)
                batch_xs.append(fut.result())
                if len(batch_files) == bs:
                    yield from self._rows(batch_files, batch_xs, tta)
                    batch_files, batch_xs = [], []
            if batch_files:
                yield from self._rows(batch_files, batch_xs, tta)


# ---------------------------------------------------------------------------------------------------- loading


def load_model(model_dir: str | Path = DEFAULT_MODEL, device: str = "cpu", backend: str = "auto") -> Predictor:
    """A `Predictor` for the bundle in `model_dir`.

    `backend`: `torch`; `onnx` (onnxruntime on model.onnx, which must exist and verify); `auto` (the default):
    onnx on CPU when a verified model.onnx is there, torch otherwise. The ONNX backend still has `.model`, the
    torch network, loaded on first use (Grad-CAM needs its gradients).
    """
    from petclf.onnx import OnnxNet, auto_onnx, verified_onnx

    model_dir = resolve_bundle_dir(model_dir)
    try:
        backend = Backend(backend).value
    except ValueError:
        raise PetclfError(f"unknown backend {backend!r} ({', '.join(b.value for b in Backend)})") from None
    path, manifest = None, None
    if backend != "torch":  # auto gets None off the CPU or without a verified model.onnx, and falls back to torch
        manifest = read_manifest(model_dir)
        path = verified_onnx(model_dir, manifest) if backend == "onnx" else auto_onnx(model_dir, manifest, device)
    if path is None:
        from petclf.bundle import load_network

        model, manifest = load_network(model_dir, device=device, manifest=manifest)
        return Predictor(TorchNet(model, device), manifest, "torch", model=model,
                         detector=Detector.load(model_dir, manifest), open_set=OpenSet.load(model_dir, manifest))

    def torch_model():
        from petclf.bundle import load_network

        return load_network(model_dir)[0]

    return Predictor(OnnxNet(path), manifest, "onnx", model=torch_model, detector=Detector.load(model_dir, manifest),
                     open_set=OpenSet.load(model_dir, manifest))


# ---------------------------------------------------------------------------------------------------- output


Names = dict[str, str] | None  # {class id: display name}; None: labels.display_name


def _name(names: Names, c: str) -> str:
    from petclf.labels import display_name

    return (names or {}).get(c) or display_name(c)


def row_dict(row: Prediction, k: int = 5, names: Names = None) -> dict[str, Any]:
    """A result as plain data: the class id (`breed_id`, the machine key) and display name of each of the top k,
    the species and not-a-pet answers (each only where the model has them), the answer's kind (`answer`: known,
    other, not_a_pet or none: `petclf.verdict.ANSWERS`), both verdicts in words; `error` (null
    unless the row failed: JSON readers find every key in every object)."""
    if not row.ok:
        return {"file": row.file, "top": [], "error": row.error}
    v = row.verdict
    d: dict[str, Any] = {"file": row.file, "breed_id": row.top(1)[0][0], "breed": _name(names, row.top(1)[0][0]),
                         "prob": round(row.top(1)[0][1], 6),
                         "top": [{"breed_id": b, "breed": _name(names, b), "prob": round(p, 6)} for b, p in row.top(k)]}
    if row.group_probs:  # a cat or dog of another breed: the species the open-set signals name
        g, q = (v.species, v.species_prob) if v is not None and v.answer == "other" else \
            (row.group, row.group_probs[row.group])
        d |= {"species": g, "species_prob": round(q, 6)}
    if v is not None and v.not_a_pet is not None:
        d |= {"not_a_pet": v.not_a_pet,
              "not_a_pet_score": None if v.not_a_pet_score is None else round(v.not_a_pet_score, 6)}
    if v is not None:
        d |= {"answer": v.answer, "verdict": {"species": v.species_text, "breed": v.breed_text,
                                              "breed_sure": v.breed_sure, "likely": [b for b, _ in v.likely]}}
    return d | {"error": None}


def to_json(rows: Sequence[Prediction], k: int = 5, names: Names = None) -> str:
    """Results as a JSON list, one object per image, in input order."""
    import json

    return json.dumps([row_dict(r, k, names) for r in rows], indent=1) + "\n"


def _has(rows: Sequence[Prediction], what: str) -> bool:
    """Whether any row has species answers (`species`), not-a-pet answers (`not_a_pet`) or an error (`error`)."""
    if what == "error":
        return any(not r.ok for r in rows)
    if what == "species":
        return any(r.group_probs for r in rows)
    return any(r.verdict is not None and r.verdict.not_a_pet is not None for r in rows)


def csv_header(rows: Sequence[Prediction], k: int) -> list[str]:
    """The CSV columns these rows need: species, not-a-pet and error columns only where there is something to say."""
    head = ["file", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("breed_id", "breed", "prob")]]
    head += ["species", "species_prob"] if _has(rows, "species") else []
    head += ["not_a_pet", "not_a_pet_score"] if _has(rows, "not_a_pet") else []
    return head + ["verdict_species", "verdict_breed", "answer"] + (["error"] if _has(rows, "error") else [])


def to_csv(rows: Sequence[Prediction], k: int = 5, names: Names = None) -> str:
    """Results as CSV, in input order: file, breed_id_1, breed_1, prob_1, ..., [species, species_prob],
    [not_a_pet, not_a_pet_score], verdict_species, verdict_breed, answer, [error]."""
    import csv
    import io

    from petclf.text import as_cell

    head = csv_header(rows, k)
    numbers = {c for c in head if c.startswith("prob_") or c.endswith(("_prob", "_score"))}  # ours: no text
    buf = io.StringIO()
    w = csv.DictWriter(buf, head, lineterminator="\n", restval="")
    w.writeheader()
    for r in rows:
        d = row_dict(r, k, names)
        out = {"file": r.file, "error": r.error or ""}  # the error column exists only when a row failed
        for i, t in enumerate(d.get("top", []), 1):
            out |= {f"breed_id_{i}": t["breed_id"], f"breed_{i}": t["breed"], f"prob_{i}": f"{t['prob']:.6f}"}
        if "species" in d:
            out |= {"species": d["species"], "species_prob": f"{d['species_prob']:.6f}"}
        if "not_a_pet" in d:
            score = d["not_a_pet_score"]
            out |= {"not_a_pet": str(d["not_a_pet"]).lower(),
                    "not_a_pet_score": "" if score is None else f"{score:.6f}"}
        if "verdict" in d:
            out |= {"verdict_species": d["verdict"]["species"], "verdict_breed": d["verdict"]["breed"],
                    "answer": d["answer"]}
        w.writerow({c: v if c in numbers else as_cell(v) for c, v in out.items() if c in head})
    return buf.getvalue()


def verdict_text(row: Prediction) -> str:
    """The table's verdict: both answers in words, the species one first ('' for an error row)."""
    v = row.verdict
    if v is None:
        return ""
    return v.species_text if v.not_a_pet else "; ".join(t for t in (v.species_text, v.breed_text) if t)


def to_table(rows: Sequence[Prediction], k: int = 5, names: Names = None, noun: str = "breed",
             width: int = 160) -> str:
    """Results as an aligned text table (rich), in input order; an error column only when a row failed."""
    import io

    from rich.console import Console
    from rich.table import Table

    from petclf.text import as_terminal

    errors = _has(rows, "error")
    table = Table(box=None, pad_edge=False)
    heading = f"top {noun}es" if noun.endswith("s") else f"top {noun}s"  # breeds, classes
    for name in ("file", "verdict", heading, *(["error"] if errors else [])):
        table.add_column(name, overflow="fold")  # a long path is folded over lines, never cut to "..."
    for r in rows:
        top = ", ".join(f"{_name(names, b)} {p:.1%}" for b, p in r.top(k))
        cells = (r.file, verdict_text(r), top, *([r.error or ""] if errors else []))
        table.add_row(*map(as_terminal, cells))  # names are text: never rich markup, never raw control codes
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(table)
    return buf.getvalue()


WRITERS = {OutputFormat.table: to_table, OutputFormat.csv: to_csv, OutputFormat.json: to_json}


def format_rows(rows: Sequence[Prediction], fmt: str | OutputFormat = OutputFormat.table, k: int = 5,
                names: Names = None, noun: str = "breed") -> str:
    """Results in one of the `OutputFormat`s; `names`: the predictor's display names (`Predictor.display`);
    `noun`: what the table calls a class (`Predictor.noun`)."""
    try:
        fmt = OutputFormat(fmt)
    except ValueError:
        raise PetclfError(f"unknown format {fmt!r} (one of {', '.join(f.value for f in OutputFormat)})") from None
    return to_table(rows, k, names, noun) if fmt is OutputFormat.table else WRITERS[fmt](rows, k, names)
