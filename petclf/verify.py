"""Verify images before training: decode each one fully, once, and remember the verdict.

    from petclf.verify import verify_images
    checks = verify_images(paths, root)      # [FileCheck(path, "ok" | "converted" | "skipped", reason)]

A file is decoded again only when its size, modification time or permissions change (the verdicts are
cached per data folder under `io.cache_dir()`), so a second `petclf data check` or training run is quick.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from petclf.errors import ImageError
from petclf.image import load_rgb
from petclf.io import cache_dir, write_atomic

FORMAT_OF_EXT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".webp": "WEBP",
                 ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}
WORKERS = min(8, 2 * (os.cpu_count() or 1))  # decoding threads: Pillow releases the GIL, so more than cores


@dataclass
class FileCheck:
    """The verdict on one file: `ok`, `converted` (usable after a fix) or `skipped` (unusable)."""

    path: str
    status: str
    reason: str = ""


def check_image(path: Path) -> FileCheck:
    """Decode `path` fully and say whether it is usable as is, usable after conversion, or not at all."""
    try:
        load_rgb(path)
        with Image.open(path) as im:
            fmt, mode, frames = im.format, im.mode, getattr(im, "n_frames", 1)
    except ImageError as e:
        return FileCheck(str(path), "skipped", str(e).split(": ", 1)[-1])
    except Exception as e:  # noqa: BLE001 - anything Pillow raises on a bad file means 'skip it', never crash
        msg = "permission denied" if isinstance(e, PermissionError) else f"not an image ({type(e).__name__})"
        return FileCheck(str(path), "skipped", msg)
    notes = []
    expected = FORMAT_OF_EXT.get(path.suffix.lower())
    if expected and fmt != expected:
        notes.append(f"{fmt} data in a {path.suffix} file")
    if frames > 1:
        notes.append(f"{frames} frames, first used")
    if mode != "RGB":
        notes.append(f"mode {mode} converted to RGB")
    return FileCheck(str(path), "converted" if notes else "ok", "; ".join(notes))


def cache_file(root: Path) -> Path:
    """Where the verdicts on the files of data folder `root` are kept."""
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / f"verify-{key}.json"


def _stamp(path: Path) -> list[int] | None:
    """What makes a cached verdict stale: size, modification time and permissions (a `chmod 000` file that was
    readable when verified must be verified again, or training would fail on it after building the model)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_mode]


def _load_cache(file: Path) -> dict:
    """The cached verdicts, or none when the file is missing or unreadable."""
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def _decode_all(todo: list[Path], progress) -> dict[str, FileCheck]:
    """`check_image` on every file of `todo` in threads, reporting (done, total) to `progress`."""
    fresh: dict[str, FileCheck] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for i, chk in enumerate(pool.map(check_image, todo)):
            fresh[chk.path] = chk
            if progress:
                progress(i + 1, len(todo))
    return fresh


def verify_images(files: Sequence[Path], root: Path, use_cache: bool = True,
                  progress=None) -> list[FileCheck]:
    """`check_image` on every file, in parallel, reusing cached verdicts of files whose size, mtime and mode
    are unchanged."""
    where = cache_file(root)
    cache = _load_cache(where) if use_cache else {}
    stamps = {str(f): _stamp(f) for f in files}
    todo = [f for f in files
            if cache.get(str(f), {}).get("stamp") != stamps[str(f)] or stamps[str(f)] is None]
    fresh = _decode_all(todo, progress)
    for path, chk in fresh.items():
        cache[path] = {"stamp": stamps[path], "status": chk.status, "reason": chk.reason}
    if use_cache and fresh:
        write_atomic(where, json.dumps(cache))
    return [fresh.get(str(f)) or FileCheck(str(f), cache[str(f)]["status"], cache[str(f)]["reason"])
            for f in files]
