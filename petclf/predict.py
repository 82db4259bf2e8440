"""Fast inference from an exported bundle: one image, or folders of them in overlapped batches.

    petclf predict photos/ cat.jpg 'more/*.png' --model exports/latest --topk 5 --format csv --out preds.csv

    from petclf import load_model
    p = load_model("exports/latest")                   # pickle-free: safetensors + model.json, checksum verified
    p.predict("cat.jpg")                               # {breed: prob}, most likely first
    for row in p.predict_paths(["photos/"], bs=32):    # decoding in threads, overlapped with the forward pass
        print(row.file, row.top(3), row.species)

Preprocessing is fastai's validation preprocessing, step for step, as the manifest's `input` records it (see
`valid_resize` and `valid_batch_resize`); no fastai DataLoader is built. Probabilities are
`softmax(logits / temperature)`.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from PIL import Image

from petclf.config import DEFAULT_MODEL
from petclf.errors import BundleError, ImageError, PetclfError
from petclf.image import ImageSource, load_rgb

ONNX_NAME = "model.onnx"  # written beside the bundle by `petclf export --onnx`
ONNX_INFO_NAME = "model.onnx.json"  # checksum of model.onnx and of the weights it was made from
RESIZE_BANDS = 4  # most threads one image's item resize is split over in `Predictor.predict` (a power of 2)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}  # what a folder search picks up

log = logging.getLogger("petclf.predict")


# ---------------------------------------------------------------------------------------------------- preprocessing


def crop_box(w: int, h: int, presize: int) -> tuple[int, int, int, int]:
    """The centre square fastai's `Resize(presize)` (ResizeMethod.Crop) cuts from a `w` x `h` validation image.

    The integer arithmetic follows fastai's `Resize.encodes` and `crop_pad` exactly, quirks included
    (`int(m * presize)` can round a side down by one pixel), so the pixels match training's.
    """
    m = w / presize if w / presize < h / presize else h / presize
    cw, ch = int(m * presize), int(m * presize)
    left, top = int(0.5 * (w - cw)), int(0.5 * (h - ch))
    return max(left, 0), max(top, 0), min(left + cw, w), min(top + ch, h)


def valid_resize(img: Image.Image, presize: int) -> Image.Image:
    """fastai's `Resize(presize)` on the validation set: centre crop to a square (`crop_box`), PIL bilinear."""
    return img.crop(crop_box(*img.size, presize)).resize((presize, presize), Image.BILINEAR)


def resize_bands(presize: int, threads: int) -> int:
    """How many bands `valid_resize_bands` may split a `presize` resize into on `threads` threads: the largest
    power of two up to `threads` (and `RESIZE_BANDS`) that divides `presize`."""
    parts = 1
    while parts * 2 <= min(threads, RESIZE_BANDS) and presize % (parts * 2) == 0:
        parts *= 2
    return parts


def valid_resize_bands(img: Image.Image, presize: int, pool: Executor, parts: int) -> np.ndarray:
    """`valid_resize` as a presize x presize x 3 uint8 array, its rows resized in `parts` bands at once on `pool`
    (the calling thread does the first band); `parts` from `resize_bands`.

    Pillow releases the GIL while it resamples. It reads `resize`'s box as float32 and derives every output row's
    filter from the box, so a band is bit for bit those rows of the whole resize only when the band's edges are
    exact: at h/2, h/4, ... of the crop, hence a power-of-two `parts` that divides `presize` (checked on 1,580
    random sizes, up- and downscaling; a test keeps checking). One Pets photo: ~1 ms of its ~4 ms of preprocessing
    saved on 2 cores; more on phone-sized photos.
    """
    if presize % parts or parts & (parts - 1):
        raise ValueError(f"{parts} bands cannot split a {presize}-pixel resize exactly (see `resize_bands`)")
    img = img.crop(crop_box(*img.size, presize))
    w, h = img.size
    rows = presize // parts
    out = np.empty((presize, presize, 3), np.uint8)

    def band(i: int) -> None:
        box = (0, h * i / parts, w, h * (i + 1) / parts)
        out[i * rows:(i + 1) * rows] = np.asarray(img.resize((presize, rows), Image.BILINEAR, box=box))

    rest = [pool.submit(band, i) for i in range(1, parts)]
    band(0)
    for f in rest:
        f.result()
    return out


def _identity_grid(size: int) -> torch.Tensor:
    """fastai's `affine_grid` of the identity matrix at `size` (1 x size x size x 2)."""
    theta = torch.eye(3)[None, :2]
    return F.affine_grid(theta, [1, 3, size, size], align_corners=True)


@functools.lru_cache(maxsize=16)
def resize_matrix(n: int, size: int, d: float, scale: float = 1.0) -> scipy.sparse.csr_matrix:
    """fastai's validation resize along one axis of length `n`, as a sparse `size` x `n` matrix (times `scale`).

    fastai's `RandomResizedCropGPU` on the validation set samples an identity grid, so its 2-D resample is
    separable: one linear map per axis. The map is found by running fastai's own steps (area-downsampling by `d`
    when `d` > 1, then bilinear `grid_sample` with reflection padding, `align_corners=True`) on the `n` unit
    impulses, in float32 as fastai does; results match fastai's to ~1e-7.
    """
    x = torch.eye(n).view(n, 1, 1, n)
    if d > 1:  # fastai's 'smoother downwards resampling': F.interpolate(mode="area", scale_factor=1/d)
        x = F.adaptive_avg_pool2d(x, (1, math.floor(n * (1 / d))))
    grid = _identity_grid(size)[:, :1].expand(n, -1, -1, -1)
    m = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)[:, 0, 0, :].T
    return scipy.sparse.csr_matrix(m.numpy() * np.float32(scale))


def valid_batch_resize(x: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """fastai's `RandomResizedCropGPU` on the validation set: N x H x W x C -> N x C x `size` x `size` float32,
    times `scale`.

    Two sparse matrix products (`resize_matrix`), 10x faster on a CPU than sampling the grid as fastai does. They
    run in scipy, on the calling thread: torch would spread them over its OpenMP threads, which then spin for a few
    milliseconds afterwards and take a core from the forward pass that follows (measured: 4 ms of a 40 ms forward).
    """
    n, h, w, c = x.shape
    d = min(h / size, w / size) / 2  # fastai downsamples both axes by the same factor first
    rows = x.transpose(1, 0, 2, 3).reshape(h, -1)  # H x (N W C): no copy for one image
    y = (resize_matrix(h, size, d, scale) @ rows).reshape(size, n, w, c)  # rows resized (float32)
    # then columns: W first. Each pixel's C floats move as one opaque item, half the time of a float-wise transpose
    pixels = y.view(np.dtype((np.void, y.itemsize * c)))[..., 0]  # size x N x W
    cols = np.ascontiguousarray(pixels.transpose(2, 1, 0)).view(np.float32).reshape(w, -1)  # W x (N size C)
    z = resize_matrix(w, size, d) @ cols
    return np.ascontiguousarray(z.reshape(size, n, size, c).transpose(1, 3, 2, 0))


@dataclass(frozen=True)
class Preprocess:
    """The validation preprocessing recorded in a manifest's `input`."""

    size: int
    presize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Preprocess:
        """Read `input` from a bundle manifest; refuse recipes this predictor does not reproduce."""
        inp = manifest["input"]
        if inp.get("resize_method", "crop") != "crop" or inp.get("resample", "bilinear") != "bilinear":
            raise BundleError(f"unsupported preprocessing in model.json: {inp.get('resize_method')}/"
                              f"{inp.get('resample')} (this petclf reproduces crop/bilinear)")
        return cls(int(inp["size"]), int(inp["presize"]), tuple(inp["mean"]), tuple(inp["std"]))

    def batch(self, x: np.ndarray) -> torch.Tensor:
        """uint8 N x presize x presize x 3 -> normalised float N x 3 x size x size (fastai's batch transforms)."""
        y = valid_batch_resize(x, self.size, scale=1 / 255)  # fastai's IntToFloatTensor (/255), folded in
        y -= np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        y /= np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return torch.from_numpy(y)

    def __call__(self, srcs: Sequence[ImageSource]) -> torch.Tensor:
        """Images -> the model's input batch, preprocessed one by one (the batch step is ~4x cheaper per image on
        one image's cache-sized arrays than on 32 at once)."""
        return torch.cat([self.one(s) for s in srcs])

    def one(self, src: ImageSource, pool: Executor | None = None, parts: int = 1) -> torch.Tensor:
        """One image -> its 1 x 3 x size x size input; with `pool`, the item resize runs in `parts` bands at once."""
        img = load_rgb(src)
        a = np.asarray(valid_resize(img, self.presize)) if pool is None else \
            valid_resize_bands(img, self.presize, pool, parts)
        return self.batch(a[None])


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class Prediction:
    """One image's result: probabilities over all breeds (most likely first), or the error that stopped it."""

    file: str
    probs: dict[str, float] = field(default_factory=dict)
    species_probs: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was predicted."""
        return self.error is None

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most likely breeds with their probabilities."""
        return list(self.probs.items())[:k]

    @property
    def species(self) -> str | None:
        """`cat` or `dog`, whichever has more probability summed over its breeds."""
        return max(self.species_probs, key=self.species_probs.get) if self.species_probs else None


# ---------------------------------------------------------------------------------------------------- paths


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _folder_images(root: Path) -> list[Path]:
    """Image files below `root`, recursively and sorted; hidden files and folders are left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in filenames
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTS]
    return sorted(found)


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """Files, folders (recursive) and globs -> (image files, error rows for arguments that name no image)."""
    files: list[Path] = []
    errors: list[Prediction] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = _folder_images(p)
            files += found
            if not found:
                errors.append(Prediction(str(p), error=f"{p}: no images in this folder"))
        elif p.exists():
            files.append(p)
        elif _is_glob(str(arg)):
            matched = sorted(Path(m) for m in glob.glob(str(arg), recursive=True))
            for m in matched:
                files += _folder_images(m) if m.is_dir() else [m]
            if not matched:
                errors.append(Prediction(str(arg), error=f"{arg}: no files match"))
        else:
            errors.append(Prediction(str(arg), error=f"{p.name}: file not found"))
    return list(dict.fromkeys(files)), errors


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


class OnnxNet:
    """An onnxruntime session that looks like the network to the predictor: float tensor in, logits out."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # conv+BN+ReLU fusion etc.
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a CNN is one chain: no branches to run in parallel
        opts.intra_op_num_threads = threads or torch.get_num_threads()  # one thread per core, as torch uses
        opts.inter_op_num_threads = 1
        # idle pool threads sleep instead of spinning: on a few shared cores the spinning steals the cycles that
        # decode threads and the web server need (measured: one image faster, batches the same)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a preprocessed batch (onnxruntime releases the GIL while it runs)."""
        x = x.detach().cpu().contiguous()
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])


class Predictor:
    """A loaded model and its preprocessing: `predict(image)`, `predict_paths(paths)`, `topk(image)`."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], manifest: dict[str, Any],
                 device: str | torch.device = "cpu", backend: str = "torch",
                 model: torch.nn.Module | Callable[[], torch.nn.Module] | None = None):
        self.net, self.manifest, self.backend = net, manifest, backend
        # the torch network for Grad-CAM: `net` itself, or (ONNX backend) a loader called on first use
        self._model = model if model is not None or not isinstance(net, torch.nn.Module) else net
        self._model_lock = threading.Lock()
        self.device = torch.device(device)
        self.pre = Preprocess.from_manifest(manifest)
        self.classes = [c["name"] for c in manifest["classes"]]
        self.species = {c["name"]: c.get("species", "?") for c in manifest["classes"]}
        self.temperature = float(manifest.get("temperature") or 1.0)
        self._species_idx = {s: torch.tensor([i for i, c in enumerate(self.classes) if self.species[c] == s])
                             for s in sorted(set(self.species.values()))}
        # `predict` (one image) resizes in bands on these threads, one per spare core (threads start on first use)
        self._resize_parts = resize_bands(self.pre.presize, torch.get_num_threads())
        self._resize_pool = ThreadPoolExecutor(self._resize_parts - 1, thread_name_prefix="petclf-resize") \
            if self._resize_parts > 1 else None

    @property
    def has_model(self) -> bool:
        """True when a torch network (for Grad-CAM) is at hand or can be loaded."""
        return self._model is not None

    @property
    def model(self) -> torch.nn.Module:
        """The torch network (for Grad-CAM); on the ONNX backend it is loaded from the bundle on first use."""
        with self._model_lock:
            if self._model is None:
                raise PetclfError("this predictor has no torch network; load the model with backend='torch'")
            if not isinstance(self._model, torch.nn.Module):
                self._model = self._model()
            return self._model

    def preprocess(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """Images (paths, bytes, PIL, arrays) -> normalised input batch on the predictor's device."""
        return self.pre(images).to(self.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw network outputs for a preprocessed batch."""
        with torch.inference_mode():
            return self.net(x.to(self.device)).float().cpu()

    def softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities: `softmax(logits / temperature)` (the calibrated temperature from the manifest)."""
        return torch.softmax(logits / self.temperature, dim=1)

    def probs(self, x: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Probabilities for a preprocessed batch; with `tta`, averaged with the horizontally flipped batch."""
        p = self.softmax(self.logits(x))
        if tta:
            p = (p + self.softmax(self.logits(x.flip(-1)))) / 2
        return p

    def to_dict(self, p: torch.Tensor) -> dict[str, float]:
        """One row of probabilities -> {breed: prob}, most likely first."""
        order = torch.argsort(p, descending=True).tolist()
        return {self.classes[i]: float(p[i]) for i in order}

    def species_probs(self, p: torch.Tensor) -> dict[str, float]:
        """One row of breed probabilities -> {species: summed prob}."""
        return {s: float(p[idx].sum()) for s, idx in self._species_idx.items()}

    def predict(self, image: ImageSource, tta: bool = False) -> dict[str, float]:
        """{breed: prob} for one image (path, bytes, PIL image or array), most likely first."""
        x = self.pre.one(image, self._resize_pool, self._resize_parts).to(self.device)
        return self.to_dict(self.probs(x, tta)[0])

    def topk(self, image: ImageSource, k: int = 5, tta: bool = False) -> list[tuple[str, float]]:
        """The `k` most likely (breed, prob) pairs for one image."""
        return list(self.predict(image, tta).items())[:k]

    def _decode(self, path: Path) -> torch.Tensor | ImageError:
        try:  # the whole preprocessing, per image: 4x cheaper than the batch step on 32 at once (cache-sized arrays)
            return self.pre.one(path)
        except ImageError as e:
            return e

    def _rows(self, files: Sequence[Path], xs: list[torch.Tensor | ImageError], tta: bool) -> list[Prediction]:
        good = [i for i, x in enumerate(xs) if not isinstance(x, ImageError)]
        rows = [Prediction(str(f), error=str(x)) if isinstance(x, ImageError) else None
                for f, x in zip(files, xs, strict=True)]
        if good:
            p = self.probs(torch.cat([xs[i] for i in good]).to(self.device), tta)
            for j, i in enumerate(good):
                rows[i] = Prediction(str(files[i]), self.to_dict(p[j]), self.species_probs(p[j]))
        return rows

    def predict_paths(self, paths: Iterable[str | Path], bs: int = 32, tta: bool = False,
                      workers: int | None = None) -> Iterator[Prediction]:
        """One `Prediction` per image under `paths` (files, folders, globs), in order; bad files get error rows.

        Images are decoded and preprocessed by a thread pool (Pillow and scipy release the GIL) a few batches ahead
        of the forward pass.
        """
        files, errors = expand_paths(paths)
        yield from errors
        workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="petclf-decode") as pool:
            batch_files: list[Path] = []
            batch_xs: list[torch.Tensor | ImageError] = []
            for f, fut in zip(files, _bounded_map(self._decode, files, pool, ahead=2 * bs), strict=True):
                batch_files.append(f)
                batch_xs.append(fut.result())
                if len(batch_files) == bs:
                    yield from self._rows(batch_files, batch_xs, tta)
                    batch_files, batch_xs = [], []
            if batch_files:
                yield from self._rows(batch_files, batch_xs, tta)


# ---------------------------------------------------------------------------------------------------- loading


def onnx_path(model_dir: str | Path) -> Path:
    """Where `petclf export --onnx` puts the ONNX graph of a bundle."""
    return Path(model_dir) / ONNX_NAME


def _check_onnx(model_dir: Path, manifest: dict[str, Any]) -> Path:
    """The bundle's model.onnx, after checking it is intact and made from these very weights."""
    import json

    from petclf.bundle import sha256_file, verify_weights, weights_path

    path, info_path = onnx_path(model_dir), model_dir / ONNX_INFO_NAME
    if not path.is_file() or not info_path.is_file():
        raise BundleError(f"no {ONNX_NAME} in {model_dir}: run `petclf export --onnx --model {model_dir}`")
    try:
        info = json.loads(info_path.read_text())
    except ValueError:
        raise BundleError(f"corrupt model file: {info_path} is not valid JSON") from None
    if info.get("weights_sha256") != manifest["weights"].get("sha256"):
        raise BundleError(f"{ONNX_NAME} in {model_dir} was made from other weights: run `petclf export --onnx` again")
    if sha256_file(path) != info.get("sha256"):
        raise BundleError(f"checksum mismatch: {path} differs from the one exported; refusing to load it")
    weights = weights_path(model_dir, manifest)
    if weights.is_file():  # the graph is intact, but a bundle with tampered weights is refused whole, whatever runs it
        verify_weights(weights, manifest)
    return path


BACKENDS = ("auto", "torch", "onnx")  # what `load_model(backend=...)` and `--backend` accept


def auto_onnx(model_dir: str | Path, manifest: dict[str, Any], device: str = "cpu") -> Path | None:
    """What `backend="auto"` runs with onnxruntime: the verified model.onnx on CPU (faster there), else None."""
    if torch.device(device).type != "cpu" or not onnx_path(model_dir).is_file():
        return None
    try:
        import onnxruntime  # noqa: F401
        return _check_onnx(Path(model_dir), manifest)
    except ImportError:
        return None
    except BundleError as e:
        log.warning("using torch, not onnxruntime: %s", e)
        return None


def load_model(model_dir: str | Path = DEFAULT_MODEL, device: str = "cpu", backend: str = "auto") -> Predictor:
    """A `Predictor` for the bundle in `model_dir`.

    `backend`: `torch`; `onnx` (onnxruntime on model.onnx, which must exist and verify); `auto` (the default):
    onnx on CPU when a verified model.onnx is there, torch otherwise. The ONNX backend still has `.model`, the
    torch network, loaded on first use (Grad-CAM needs its gradients).
    """
    from petclf.bundle import load_network, read_manifest, resolve_bundle_dir

    model_dir = resolve_bundle_dir(model_dir)
    if backend not in BACKENDS:
        raise PetclfError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
    path, manifest = None, None
    if backend != "torch":  # auto gets None off the CPU or without a verified model.onnx, and falls back to torch
        manifest = read_manifest(model_dir)
        path = _check_onnx(model_dir, manifest) if backend == "onnx" else auto_onnx(model_dir, manifest, device)
    if path is None:
        net, manifest = load_network(model_dir, device=device)
        return Predictor(net, manifest, device, "torch")
    return Predictor(OnnxNet(path), manifest, "cpu", "onnx", model=lambda: load_network(model_dir)[0])


# ---------------------------------------------------------------------------------------------------- serving


class Batcher:
    """Groups concurrent `probs` calls from server threads into one forward pass (dynamic batching).

    Callers decode and preprocess in their own threads, then wait here; one worker thread takes whatever has
    queued up (at most `max_batch`), runs the network once, and hands each caller its row.
    """

    def __init__(self, predictor: Predictor, max_batch: int = 8, timeout: float = 60.0):
        self.predictor, self.max_batch, self.timeout = predictor, max_batch, timeout
        self._q: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="petclf-batcher", daemon=True)
        self._worker.start()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities (1 x n_classes) for one preprocessed image (1 x 3 x H x W)."""
        fut: Future = Future()
        self._q.put((x, fut))
        return fut.result(self.timeout)

    def _take(self) -> list[tuple[torch.Tensor, Future]]:
        items = [self._q.get()]
        while len(items) < self.max_batch:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        while True:
            items = self._take()
            live = [it for it in items if it is not None]
            if live:
                self._forward(live)
            if len(live) < len(items):  # close() was called
                return

    def _forward(self, items: list[tuple[torch.Tensor, Future]]) -> None:
        try:
            p = self.predictor.probs(torch.cat([x for x, _ in items]))
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting caller
            for _, f in items:
                f.set_exception(e)
            return
        for i, (_, f) in enumerate(items):
            f.set_result(p[i:i + 1])

    def close(self) -> None:
        """Stop the worker thread once the queue drains."""
        self._q.put(None)
        self._worker.join(5)


# ---------------------------------------------------------------------------------------------------- output

FORMATS = ("table", "csv", "json")  # what `petclf predict --format` writes


def row_dict(row: Prediction, k: int = 5) -> dict[str, Any]:
    """A result as plain data: file, top-k [{breed, prob}], species, species_prob, error."""
    return {"file": row.file, "top": [{"breed": b, "prob": round(p, 6)} for b, p in row.top(k)],
            "species": row.species,
            "species_prob": round(row.species_probs[row.species], 6) if row.species else None, "error": row.error}


def to_json(rows: Sequence[Prediction], k: int = 5) -> str:
    """Results as a JSON list, one object per image."""
    import json

    return json.dumps([row_dict(r, k) for r in rows], indent=1) + "\n"


def to_csv(rows: Sequence[Prediction], k: int = 5) -> str:
    """Results as CSV: file, breed_1, prob_1, ..., breed_k, prob_k, species, species_prob, error."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("breed", "prob")], "species",
                "species_prob", "error"])
    for r in rows:
        d = row_dict(r, k)
        top = [v for t in d["top"] for v in (t["breed"], f"{t['prob']:.6f}")]
        top += [""] * (2 * k - len(top))
        sp = "" if d["species_prob"] is None else f"{d['species_prob']:.6f}"
        w.writerow([r.file, *top, d["species"] or "", sp, r.error or ""])
    return buf.getvalue()


def to_table(rows: Sequence[Prediction], k: int = 5, width: int = 160) -> str:
    """Results as an aligned text table (rich), errors in their own column."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table("file", "top breeds", "species", "error", box=None, pad_edge=False)
    for r in rows:
        top = ", ".join(f"{b} {p:.1%}" for b, p in r.top(k))
        sp = f"{r.species} {r.species_probs[r.species]:.0%}" if r.species else ""
        table.add_row(r.file, top, sp, r.error or "")
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(table)
    return buf.getvalue()


def format_rows(rows: Sequence[Prediction], fmt: str = "table", k: int = 5) -> str:
    """Results in one of `FORMATS`."""
    writers = {"table": to_table, "csv": to_csv, "json": to_json}
    if fmt not in writers:
        raise PetclfError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    return writers[fmt](rows, k)
