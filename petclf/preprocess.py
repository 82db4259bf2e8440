"""fastai's validation transforms for inference: the one place that knows them, pinned to fastai's by tests.

    from petclf.preprocess import Preprocess
    pre = Preprocess.from_manifest(manifest)   # the `input` a bundle recorded
    x = pre.one("cat.jpg")                     # 1 x 3 x size x size float32, exactly what validation fed the network
Validation preprocessing, as fastai applies it (fastbook presizing): `Resize(presize)` per item (centre square
crop, PIL bilinear), then per batch `IntToFloatTensor` (/255), `RandomResizedCropGPU` (which on the validation
set is a resize to `size`) and `Normalize`. It runs in numpy and scipy, with no torch and no DataLoader: a
cold `petclf predict` on the ONNX path never imports torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
from PIL import Image

from petclf.errors import BundleError
from petclf.image import ImageSource, load_rgb


def crop_box(w: int, h: int, presize: int) -> tuple[int, int, int, int]:
    """The centre square fastai's `Resize(presize)` (ResizeMethod.Crop) cuts from a `w` x `h` validation
    image.

    The integer arithmetic follows fastai's `Resize.encodes` and `crop_pad` exactly, quirks included
    (`int(m * presize)` can round a side down by one pixel), so the pixels match training's.
    """
    m = w / presize if w / presize < h / presize else h / presize
    cw, ch = int(m * presize), int(m * presize)
    left, top = int(0.5 * (w - cw)), int(0.5 * (h - ch))
    return max(left, 0), max(top, 0), min(left + cw, w), min(top + ch, h)


def valid_resize(img: Image.Image, presize: int) -> Image.Image:
    """fastai's `Resize(presize)` on the validation set: centre crop to a square (`crop_box`), PIL
    bilinear."""
    return img.crop(crop_box(*img.size, presize)).resize((presize, presize), Image.BILINEAR)


def _grid(size: int) -> np.ndarray:
    """The x coordinates of fastai's identity `affine_grid` (`torch.linspace(-1, 1, size)`), bit for bit:
    torch evaluates each half from its own end with a fused multiply-add, which float64 reproduces for float32
    inputs."""
    step = np.float64(np.float32(2) / np.float32(size - 1))
    i = np.arange(size)
    return np.where(i < size // 2, -1.0 + step * i, 1.0 - step * (size - 1 - i)).astype(np.float32)


def _area_matrix(n: int, m: int) -> np.ndarray:
    """`F.adaptive_avg_pool` from `n` to `m` samples as an m x n matrix (bin i averages [i n/m, (i+1)
    n/m))."""
    a = np.zeros((m, n), np.float32)
    for i in range(m):
        lo, hi = (i * n) // m, -(-(i + 1) * n // m)
        a[i, lo:hi] = np.float32(1) / np.float32(hi - lo)
    return a


@functools.lru_cache(maxsize=16)
def resize_matrix(n: int, size: int, d: float, scale: float = 1.0) -> scipy.sparse.csr_matrix:
    """fastai's validation resize along one axis of length `n`, as a sparse `size` x `n` matrix (times
    `scale`).

    fastai's `RandomResizedCropGPU` on the validation set samples an identity grid, so its 2-D resample is
    separable: one linear map per axis. First area-downsampling by `d` when `d` > 1
    (`F.interpolate(mode="area")`), then bilinear `grid_sample` with `align_corners=True`, whose sample points
    stay inside the image (reflection padding never acts). float32 as torch computes it; tests pin the result
    to fastai's own pipeline.
    """
    m = math.floor(n * (1 / d)) if d > 1 else n
    pos = (_grid(size) + np.float32(1)) * np.float32((m - 1) / 2)  # grid_sample's unnormalise, align_corners=True
    left = np.floor(pos).astype(int)
    frac = pos - left.astype(np.float32)
    rows = np.arange(size)
    b = np.zeros((size, m), np.float32)
    b[rows, left] = np.float32(1) - frac
    inside = left + 1 < m
    b[rows[inside], left[inside] + 1] += frac[inside]
    mat = b @ _area_matrix(n, m) if d > 1 else b
    return scipy.sparse.csr_matrix(mat * np.float32(scale))


def valid_batch_resize(x: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """fastai's `RandomResizedCropGPU` on the validation set: N x H x W x C -> N x C x `size` x `size`
    float32, times `scale`.

    Two sparse matrix products (`resize_matrix`), 10x faster on a CPU than sampling the grid as fastai does;
    they run on the calling thread (torch's OpenMP workers would spin afterwards and slow the forward pass
    that follows).
    """
    n, h, w, c = x.shape
    d = min(h / size, w / size) / 2  # fastai downsamples both axes by the same factor first
    rows = x.transpose(1, 0, 2, 3).reshape(h, -1)  # H x (N W C)
    y = (resize_matrix(h, size, d, scale) @ rows).reshape(size, n, w, c)  # rows resized
    cols = np.ascontiguousarray(y.transpose(2, 1, 0, 3)).reshape(w, -1)  # W x (N size C)
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
        m = manifest
        if m.resize_method != "crop" or m.resample != "bilinear":
            raise BundleError(f"unsupported preprocessing in model.json: {m.resize_method}/{m.resample} (this "
                              "petclf reproduces crop/bilinear)")
        return cls(m.size, m.presize, tuple(m.mean), tuple(m.std))

    def batch(self, x: np.ndarray) -> np.ndarray:
        """uint8 N x presize x presize x 3 -> normalised float32 N x 3 x size x size (fastai's batch
        transforms)."""
        y = valid_batch_resize(x, self.size, scale=1 / 255)  # fastai's IntToFloatTensor (/255), folded in
        y -= np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        y /= np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return y

    def one(self, src: ImageSource) -> np.ndarray:
        """One image (path, bytes, PIL image or array) -> its 1 x 3 x size x size input.

        Per image rather than per batch: the batch step is ~4x cheaper per image on one image's cache-sized
        arrays.
        """
        return self.batch(np.asarray(valid_resize(load_rgb(src), self.presize))[None])

    def __call__(self, srcs: Sequence[ImageSource]) -> np.ndarray:
        """Images -> the model's input batch."""
        return np.concatenate([self.one(s) for s in srcs])
