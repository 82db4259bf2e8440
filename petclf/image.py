"""Decode any image a user or the Pets dataset throws at us into sane 8-bit RGB, or fail with one clear line.

    from petclf.image import load_rgb
    img = load_rgb("photo.jpg")          # EXIF orientation applied, first frame of a GIF, alpha on white

Shared by the data layer (training), the predictor and the Gradio demo, so all three see identical pixels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from petclf.errors import ImageError

MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (~9459 x 9459); larger images are refused, not decoded
MAX_BYTES = 20 * 1024 * 1024  # files above this are refused before decoding
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as a browser shows them

ImageSource = str | Path | bytes | Image.Image | np.ndarray

# Pillow's own bomb check raises at 2x MAX_IMAGE_PIXELS; ours refuses at 1x before decoding a single pixel.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS


def _open(src: str | Path | bytes, max_bytes: int) -> Image.Image:
    """Open (header only) a path or raw bytes, after the cheap size checks."""
    if isinstance(src, bytes):
        n, name, fp = len(src), "upload", io.BytesIO(src)
    else:
        path = Path(src)
        name = path.name
        try:
            n = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{name}: file not found") from None
        fp = path
    if n == 0:
        raise ImageError(f"{name}: not an image (empty file)")
    if n > max_bytes:
        raise ImageError(f"{name}: file is {n / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    try:
        return Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unrecognised format)") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image too large (decompression bomb)") from None
    except OSError as e:
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from None


def _check_pixels(im: Image.Image, name: str, max_pixels: int) -> None:
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} pixels is over the {max_pixels:,}-pixel limit")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has no pixels")


def _high_bit_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float grayscale -> 8-bit, scaled rather than clipped."""
    a = np.asarray(im, dtype=np.float64)
    if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) <= 65535 and a.max(initial=0) > 255):
        a = a / 257.0
    elif im.mode == "F" or a.max(initial=0) > 255:
        lo, hi = a.min(initial=0), a.max(initial=0)
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled, CMYK and palettes converted properly."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _high_bit_to_rgb(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
    elif im.mode == "L" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        bg = Image.new("RGB", im.size, ALPHA_BACKGROUND)
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def _from_array(a: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays (uint8, or floats in [0, 1]) -> PIL image."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageError(f"array of shape {a.shape} is not an image (expected HxW, HxWx3 or HxWx4)")
    if a.dtype != np.uint8:
        a = np.asarray(a, dtype=np.float64)
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    """`im` saved in `fmt` (JPEG, PNG, ...) as bytes; `kw` goes to Pillow's `save`."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def load_rgb(src: ImageSource, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> Image.Image:
    """Decode `src` (path, bytes, PIL image or array) into an upright, fully loaded RGB image."""
    if isinstance(src, np.ndarray):
        im, name = _from_array(src), "array"
    elif isinstance(src, Image.Image):
        im, name = src, "image"
    else:
        im = _open(src, max_bytes)
        name = "upload" if isinstance(src, bytes) else Path(src).name
    _check_pixels(im, name, max_pixels)
    try:
        im.seek(0)  # animated GIF/WebP/PNG: always the first frame
        if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # most photos are upright: no copy for them
            im = ImageOps.exif_transpose(im)
        im.load()
        return to_rgb(im)
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image too large (decompression bomb)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: corrupt or truncated image ({e})") from None
