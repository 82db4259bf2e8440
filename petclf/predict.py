"""Fast inference from an exported bundle: one image, or folders of them in overlapped batches.

    petclf predict photos/ cat.jpg 'more/*.png' --model exports/latest --topk 5 --format csv --out preds.csv

    from petclf import load_model
    p = load_model("exports/latest")                   # pickle-free: safetensors + model.json, verified
    p.predict("cat.jpg")                               # {breed: prob}, most likely first
    for row in p.predict_paths(["photos/"], bs=32):    # decoding in threads, overlapped with the forward pass
        print(row.file, row.top(3), row.group)
    Batcher(p).outputs(x)                              # from many server threads: one forward pass for all

Preprocessing is fastai's validation preprocessing (`petclf.preprocess`); probabilities are
`softmax(logits / temperature)`; `petclf.formats` writes the results. The predictor works in numpy: with a
verified model.onnx (backend `auto` on CPU, or `onnx`) neither torch nor fastai is imported, so a cold
`petclf predict` starts in well under a second.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import softmax

from petclf.bundle import Manifest, class_groups, display_names, read_manifest, resolve_bundle_dir
from petclf.config import DEFAULT_MODEL, UNSURE_BELOW, Backend
from petclf.errors import ImageError, PetclfError
from petclf.formats import (  # noqa: F401 - the writers re-exported: petclf.predict.format_rows etc.
    Prediction,
    format_rows,
    row_dict,
    to_csv,
    to_json,
    to_table,
)
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
    """Files, folders (recursive) and globs -> image files and error rows (arguments that name no image),
    in the order given; a file named twice comes once, where it first appears.

    Symlinked folders are not followed; a symlink that loops or leads nowhere is kept as a file, and
    decoding gives it its error row.
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
            why = getattr(e, "strerror", None) or e
            items.append(Prediction(str(arg), error=f"{p.name}: cannot read ({why})"))
    seen: set[Path] = set()
    return [i for i in items if not isinstance(i, Path) or not (i in seen or seen.add(i))]


def _bounded_map(fn: Callable, items: Sequence, pool: ThreadPoolExecutor, ahead: int) -> Iterator[Future]:
    """`pool.submit(fn, item)` for each item, keeping at most `ahead` unfinished futures; yields them in
    order."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


# ---------------------------------------------------------------------------------------------------- the
# predictor


class TorchNet:
    """A torch network with the predictor's network interface: numpy batch in, numpy logits out."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.model, self.device = model, device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed batch."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, pooled features) for a preprocessed batch: one forward pass, as the ONNX graph gives
        them."""
        import torch

        from petclf.model import WithFeatures

        with torch.inference_mode():
            logits, feats = WithFeatures(self.model)(torch.from_numpy(x).to(self.device))
            return logits.float().cpu().numpy(), feats.cpu().numpy()


OPEN_SET_FIELDS = ("pet", "known", "species", "species_prob", "pet_mass", "coverage", "agrees")
SIGNALS = np.dtype([("score", "f8"), ("pet", "i1"), ("known", "i1"), ("species", "U16"), ("species_prob", "f8"),
                    ("pet_mass", "f8"), ("coverage", "f8"), ("agrees", "i1")])  # pet, known: 1, 0 or -1 (no signals)


def signal_rows(feats: np.ndarray, detector: Detector | None, open_set: OpenSet | None,
                top: np.ndarray | None = None) -> np.ndarray:
    """One `SIGNALS` record per row of pooled features: the not-a-pet score (NaN without a detector) and the
    open-set signals (pet = known = -1 without them)."""
    rows = np.zeros(len(feats), SIGNALS)
    rows["score"] = detector(feats)[0] if detector is not None else np.nan
    rows["pet"] = rows["known"] = -1
    rows["species_prob"] = rows["pet_mass"] = rows["coverage"] = np.nan
    if open_set is not None:
        sig = open_set(feats, top)  # `top`: a sure breed must be near the class it names (SURE_RULE)
        rows["pet"], rows["known"], rows["species"], rows["agrees"] = sig.pet, sig.known, sig.species, sig.agrees
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
        # below this top-class probability the answer lists the likely classes; the bundle's own, else the
        # default
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
        """Logits -> probabilities: `softmax(logits / temperature)` (the manifest's calibrated
        temperature)."""
        return softmax(np.asarray(logits, np.float64) / self.temperature, axis=1)

    def probs(self, x: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities for a preprocessed batch; with `tta`, averaged with the flipped batch's."""
        return self._flip_averaged(self.softmax(self.logits(x)), x, tta)

    def _flip_averaged(self, p: np.ndarray, x: np.ndarray, tta: bool) -> np.ndarray:
        """`p` (the batch `x`'s probabilities), or with `tta` its mean with the horizontally flipped
        batch's."""
        if not tta:
            return p
        return (p + self.softmax(self.logits(np.ascontiguousarray(x[..., ::-1])))) / 2

    def outputs(self, x: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, each row's signals (`signal_rows`) or None without a detector or open-set signals)
        for a preprocessed batch."""
        if (self.detector is None and self.open_set is None) or not hasattr(self.net, "outputs"):
            return self.probs(x, tta), None
        logits, feats = self.net.outputs(x)  # one forward pass for both
        p = self._flip_averaged(self.softmax(logits), x, tta)
        if feats is None:  # an ONNX graph exported before it gave the features
            return p, None
        return p, signal_rows(feats, self.detector, self.open_set, p.argmax(1))

    def verdict(self, p: np.ndarray, signals: np.void | float | None = None,
                unsure_below: float | None = None) -> Verdict:
        """The answers for one row of probabilities and its signals (a `signal_rows` row, or a not-a-pet
        score)."""
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

        Images are decoded and preprocessed by a thread pool (Pillow and scipy release the GIL) a few batches
        ahead of the forward pass.
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


class Batcher:
    """Groups concurrent `outputs` calls from server threads into one forward pass (dynamic batching).

    Callers decode and preprocess in their own threads, then wait here; one worker thread takes whatever has
    queued up (at most `max_batch`), runs the network once, and hands each caller its row. Gradio's own
    `batch=True` waits for a batch to fill (`max_batch_size`, `batch_wait`) and batches the whole request,
    decoding included; this batches only the forward pass, which is where batching pays (bench_predict.py).
    """

    def __init__(self, predictor: Predictor, max_batch: int = 8, timeout: float = 60.0):
        self.predictor, self.max_batch, self.timeout = predictor, max_batch, timeout
        self._q: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="petclf-batcher", daemon=True)
        self._worker.start()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (1 x n_classes) for one preprocessed image (1 x 3 x H x W)."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities 1 x n_classes, its signals (1,) or None) for one preprocessed image."""
        fut: Future = Future()
        self._q.put((x, fut))
        return fut.result(self.timeout)

    def _take(self) -> list[tuple[np.ndarray, Future] | None]:
        """The next request (waiting for one), and whatever else has queued up, up to `max_batch`."""
        items = [self._q.get()]
        while len(items) < self.max_batch:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        """The worker: one forward pass per batch taken, until `close` queues its None."""
        while True:
            items = self._take()
            live = [it for it in items if it is not None]
            if live:
                self._forward(live)
            if len(live) < len(items):
                return

    def _forward(self, items: list[tuple[np.ndarray, Future]]) -> None:
        """Run one batch and hand each caller its row (or the batch's error)."""
        try:
            p, s = self.predictor.outputs(np.concatenate([x for x, _ in items]))
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting caller
            for _, f in items:
                f.set_exception(e)
            return
        for i, (_, f) in enumerate(items):
            f.set_result((p[i:i + 1], None if s is None else s[i:i + 1]))

    def close(self) -> None:
        """Stop the worker thread once the queue drains."""
        self._q.put(None)
        self._worker.join(5)


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
    # auto gets None off the CPU or without a verified model.onnx, and falls back to torch
    if backend != "torch":
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
