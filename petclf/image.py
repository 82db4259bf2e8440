"""Decode any image a user or the Pets dataset throws at us into sane 8-bit RGB, or fail with one clear line.

    from petclf.image import load_rgb
    img = load_rgb("photo.jpg")          # EXIF orientation applied, first frame of a GIF, alpha on white

Shared by the data layer (training), the predictor and the Gradio demo, so all three see identical pixels.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from petclf.errors import ImageError

MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (~9459 x 9459); larger ones are refused, not decoded
MAX_BYTES = 20 * 1024 * 1024  # files above this are refused before decoding
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as a browser shows them
# ISO-BMFF brands of HEIF images (iPhone photos); decoded by pi-heif (pillow-heif's decode-only build)
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})

ImageSource = str | Path | bytes | Image.Image | np.ndarray

# Pillow's own bomb check raises at 2x MAX_IMAGE_PIXELS; ours refuses at 1x before decoding a single pixel.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS


def _why(e: BaseException) -> str:
    """An exception as a short single line for an error row."""
    return " ".join(str(e).split())[:200] or type(e).__name__


def _is_heif(src: str | Path | bytes) -> bool:
    """True when the file starts like a HEIF/HEIC container (an ISO-BMFF `ftyp` box with a HEIF brand)."""
    try:
        if isinstance(src, bytes):
            head = src[:12]
        else:
            with open(src, "rb") as f:
                head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


@functools.cache
def _heif_registered() -> bool:
    """The HEIF/HEIC decoder, registered with Pillow on the first HEIF file (not at import: it costs every
    other start): pi-heif, the decode-only build petclf depends on (pillow-heif's wheel also bundles a GPL
    encoder), else pillow-heif if that is what is installed; False when neither is."""
    try:
        from pi_heif import register_heif_opener
    except ImportError:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            return False
    register_heif_opener()
    return True


def _open_any(src: str | Path | bytes, name: str) -> Image.Image:
    """`Image.open`, with HEIF/HEIC through pi-heif."""
    try:
        return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    except UnidentifiedImageError:
        if not _is_heif(src):
            raise
        if not _heif_registered():
            raise ImageError(f"{name}: HEIC is not supported (install pi-heif)") from None
        return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)


def _open(src: str | Path | bytes, max_bytes: int) -> Image.Image:
    """Open (header only) a path or raw bytes, after the cheap size checks. Whatever goes wrong with one file
    is an `ImageError` naming it: Pillow's plugins raise a dozen exception types on malformed files."""
    if isinstance(src, bytes):
        n, name = len(src), "upload"
    else:
        name = Path(src).name
        try:
            n = Path(src).stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{name}: file not found") from None
        except OSError as e:  # a symlink loop, a name too long, an unreadable folder
            raise ImageError(f"{name}: cannot read ({e.strerror or _why(e)})") from None
    if n == 0:
        raise ImageError(f"{name}: not an image (empty file)")
    if n > max_bytes:
        raise ImageError(f"{name}: file is {n / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    try:
        return _open_any(src, name)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unrecognised format)") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image too large (decompression bomb)") from None
    except MemoryError:
        raise ImageError(f"{name}: image too large to decode (out of memory)") from None
    except Exception as e:  # noqa: BLE001 - ValueError, IndexError, NotImplementedError, struct.error, ...
        raise ImageError(f"{name}: corrupt or truncated image ({_why(e)})") from None


def _check_pixels(im: Image.Image, name: str, max_pixels: int) -> None:
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} pixels is over the {max_pixels:,}-pixel limit")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has no pixels")


def _high_bit_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float grayscale -> 8-bit, scaled rather than clipped."""
    a = np.asarray(im, dtype=np.float64)
    top = a.max(initial=0)
    if im.mode.startswith("I;16") or (im.mode == "I" and 255 < top <= 65535):
        a = a / 257.0
    elif im.mode == "F" or top > 255:
        lo, hi = a.min(initial=0), a.max(initial=0)
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha on white, 16-bit scaled, CMYK and palettes converted properly."""
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
    opened = im if im is not src else None  # a file Pillow holds open: closed when decoding fails
    try:
        im.seek(0)  # animated GIF/WebP/PNG: always the first frame
        if im.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # most photos are upright: no copy for them
            im = ImageOps.exif_transpose(im)
        im.load()
        return to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image too large (decompression bomb)") from None
    except MemoryError:
        raise ImageError(f"{name}: image too large to decode (out of memory)") from None
    except Exception as e:  # noqa: BLE001 - a malformed file fails in any plugin, in any way: this file's error
        if opened is not None:
            opened.close()
        raise ImageError(f"{name}: corrupt or truncated image ({_why(e)})") from None
