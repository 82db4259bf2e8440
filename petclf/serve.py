"""Serving the demo: what a visitor may send and see, and the server's launch, from the address check to
the cleanup.

    from petclf.serve import launch_kwargs, run_server
    demo.launch(**launch_kwargs(port=7860, auth=("ann", "pw")))     # demo: petclf.app.build_demo(predictor)
    run_server(lambda: build_demo(load_model("exports/latest")))    # what `petclf serve` does

Uploads are decoded by `petclf.image.load_rgb` (size limits, bomb refusal, EXIF), never by Gradio's own
PIL call (`UploadedImage`); bad uploads and malformed API payloads get one friendly line, never a traceback
(`GuardedBlocks`, `rejected`). Request bodies over `MAX_REQUEST_BYTES` are refused (413) before they are
read, and the other ASGI guards of `petclf.guards` (login, upload budget, cache cap) stand in front of
Gradio's app. The server's uploads and images live in a private cache folder, removed when it stops
(SIGTERM and SIGHUP stop it as Ctrl-C does); `keep_memory_trimmed` hands the heap big requests freed back
to the system every few seconds.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import gc
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError
from PIL import Image
from pydantic import ValidationError

from petclf.address import ServeError, check_address, exposure_warning
from petclf.config import SERVE_HOST, SERVE_PORT
from petclf.errors import ImageError, PetclfError
from petclf.guards import Limits, middleware
from petclf.image import MAX_BYTES, load_rgb

MAX_FILE_SIZE = MAX_BYTES  # uploads above this are refused by the server before they reach petclf
MAX_DATA_URL = -(-MAX_BYTES // 3) * 4  # longest base64 text that decodes to at most MAX_BYTES (checked first)
# any request body above this is refused (413) before it is read: one image as a base64 data URL plus room for
# the JSON around it; Gradio's max_file_size covers only /upload's files
MAX_REQUEST_BYTES = MAX_DATA_URL + 2**20
LIMITS = Limits(max_request_bytes=MAX_REQUEST_BYTES)  # upload budget, cache cap, login throttle (guards.py)

log = logging.getLogger("petclf.serve")


class UploadedImage(gr.Image):
    """`gr.Image` that passes the uploaded file's path (or a pasted data URL's bytes) on undecoded.

    Gradio's own preprocessing opens every upload with PIL before our checks run; petclf decodes it itself.
    """

    is_template = True  # the browser renders it as a plain gr.Image

    def preprocess(self, payload: Any) -> str | bytes | None:
        """The upload's server-side path, or the bytes of a base64 data URL no longer than `MAX_DATA_URL`."""
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            b64 = payload.url.partition(",")[2]
            if len(b64) > MAX_DATA_URL:  # refuse by length: decoding it first is what held the memory
                raise rejected(f"Could not read this image: over the {MAX_BYTES // 2**20} MB limit. "
                               "Try a smaller JPEG or PNG photo.")
            try:
                return base64.b64decode(b64, validate=True)
            except ValueError:
                raise rejected("That upload is not an image.") from None
        if payload.path is None:
            raise rejected("Send the image as an upload (its path from /gradio_api/upload) or a base64 data URL.")
        if "\0" in payload.path:
            raise rejected("Malformed request: a file path holds a NUL byte.")
        path = Path(payload.path)
        if not (path.resolve().is_relative_to(Path(self.GRADIO_CACHE).resolve()) and path.is_file()):
            # without `meta`, Gradio hands any path through unchecked; never open server files for a visitor,
            # nor tell them what is where (a folder in the cache is not an upload)
            raise rejected("That file was not uploaded to this demo: upload it first (/gradio_api/upload).")
        return payload.path


class GuardedBlocks(gr.Blocks):
    """`gr.Blocks` whose malformed API requests get one line, and whose sessions do not keep data URLs.

    Gradio's own checks of a request's inputs raise ValueErrors (pydantic's, a path not uploaded, too few
    inputs) that reached the client as `{"error": null}` and the log as a traceback: here they are one line
    each. And Gradio keeps every session's last input in its session state (up to 10,000 sessions, with no
    time limit): for a base64 data URL that is the whole image, tens of MB per session, so it is dropped once
    the request is read."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        """Gradio's preprocessing, its input errors turned into one line each (see the class docstring)."""
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except ValidationError:
            raise rejected("Malformed request: send one image as an upload path or a base64 data URL "
                           '({"path": ..., "meta": {"_type": "gradio.FileData"}}).') from None
        except InvalidPathError:
            raise rejected("That file was not uploaded to this demo: upload it first (/gradio_api/upload).") from None
        except ValueError as e:
            if "null byte" in str(e):  # from Gradio's own path check, before ours
                raise rejected("Malformed request: a file path holds a NUL byte.") from None
            if len(inputs) >= len(block_fn.inputs):
                raise
            raise rejected(f"Malformed request: {block_fn.name} takes {len(block_fn.inputs)} input(s), "
                           f"got {len(inputs)}.") from None
        finally:
            if state is not None:
                forget_data_urls(state, block_fn.inputs)


def forget_data_urls(state: Any, blocks: list) -> None:
    """Drop base64 data URLs from the values a Gradio session keeps for `blocks`."""
    for block in blocks:
        props = state.config_values.get(block._id, {}).get("props", {})
        value = props.get("value")
        if isinstance(value, dict) and str(value.get("url") or "").startswith("data:"):
            props["value"] = None


def rejected(msg: str) -> gr.Error:
    """The error for an upload petclf cannot use: the visitor sees `msg`; the server log gets one line, not
    Gradio's traceback (a bad upload is an everyday event, not a server fault)."""
    log.warning("upload rejected: %s", msg)
    return gr.Error(msg, print_exception=False)


def friendly(e: Exception) -> str:
    """One line a visitor can act on."""
    if isinstance(e, ImageError):
        reason = str(e).split(": ", 1)[-1]
        return f"Could not read this image: {reason}. Try a JPEG or PNG photo."
    return "Something went wrong with this image. Try another photo."


def decode(image: str | bytes) -> Image.Image:
    """Decode one upload through `load_rgb`, turning any failure into a friendly `gr.Error`."""
    try:
        return load_rgb(image)
    except PetclfError as e:
        raise rejected(friendly(e)) from None
    except Exception:  # noqa: BLE001 - log it for us, show the visitor one line
        log.exception("unexpected error decoding an upload")
        raise rejected(friendly(RuntimeError())) from None


def safe_files(folder: Path, root: Path, suffixes: Iterable[str]) -> list[Path]:
    """The regular files in `folder` (not in its subfolders) with one of `suffixes`, whose real path is inside
    `root`'s: a symlink (to a file or folder anywhere, or a loop) is never followed, so never served."""
    real_root = root.resolve()
    if not folder.resolve().is_relative_to(real_root):
        return []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix.lower() in suffixes and stat.S_ISREG(p.lstat().st_mode)
            and p.resolve().parent == folder.resolve()]


_libc: Any = None
_trimmer: threading.Thread | None = None
TRIM_EVERY = 5.0  # seconds between two `malloc_trim` calls of the server process
MMAP_THRESHOLD = 2**20  # blocks of this many bytes and more get their own mapping, returned to the system on free
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def libc() -> Any:
    """glibc, for `mallopt` and `malloc_trim`; None elsewhere (musl, macOS)."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name) if name else None
        _libc = lib if lib is not None and hasattr(lib, "malloc_trim") else False
    return _libc or None


def keep_memory_trimmed(every: float = TRIM_EVERY) -> None:
    """Give the memory big requests freed back to the system (glibc; a no-op elsewhere): blocks of 1 MB and
    more get their own mapping, and a daemon thread (one per process) calls `malloc_trim` every `every`
    seconds.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MB), so after the first
    near-limit data URL the next ones (26 MB of text, 19 MB decoded, 20 MB of pixels) came from the threads'
    heaps, which kept them: +660 MB of RSS after 50 such requests (benchmarks/bench_serve.py)."""
    global _trimmer
    lib = libc()
    if lib is None or _trimmer is not None:
        return
    lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)  # a fixed threshold also turns glibc's raising of it off

    def loop() -> None:
        while True:
            time.sleep(every)
            lib.malloc_trim(0)  # ctypes releases the GIL for the call

    _trimmer = threading.Thread(target=loop, name="petclf-trim", daemon=True)
    _trimmer.start()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # `kill`, a closed terminal: stop as Ctrl-C does


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def stop_like_ctrl_c() -> None:
    """On SIGTERM or SIGHUP raise KeyboardInterrupt in the main thread, as Ctrl-C does: Gradio then closes the
    server and `petclf serve` removes its cache (Python's default for SIGTERM ends the process where it
    stands)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)


def private_cache() -> Path:
    """A fresh cache folder for this server's uploads and images (inside GRADIO_TEMP_DIR if set, else the temp
    folder), made Gradio's: the server removes it whole when it stops, whatever it holds."""
    parent = os.environ.get("GRADIO_TEMP_DIR") or None
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="petclf-serve-", dir=parent))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def launch_kwargs(host: str = SERVE_HOST, port: int = SERVE_PORT, share: bool = False,
                  auth: tuple[str, str] | None = None, limits: Limits = LIMITS) -> dict[str, Any]:
    """Safe `launch` settings: request and file size limits, `limits`' guards (petclf.guards), nothing served
    beyond the demo's own files."""
    return {"server_name": host, "server_port": port, "share": share, "auth": auth,
            "max_file_size": MAX_FILE_SIZE,
            "allowed_paths": [], "show_error": False, "ssr_mode": False,
            "app_kwargs": {"middleware": middleware(limits)}}


def run_server(build: Callable[[], gr.Blocks], host: str = SERVE_HOST, port: int = SERVE_PORT,
               share: bool = False, auth: tuple[str, str] | None = None) -> None:
    """Check where to listen, then build the demo (`build`, which loads the model) with a private cache
    and serve it until Ctrl-C, SIGTERM or SIGHUP; the cache goes when the server stops."""
    check_address(host, port)
    if warning := exposure_warning(host, share, auth):
        print(warning, file=sys.stderr)
    cache = private_cache()
    stop_like_ctrl_c()
    try:
        demo = build()
        # torch, fastai, Gradio and the model leave ~630,000 long-lived objects that every full collection
        # would walk (350-380 ms holding the GIL, measured on this demo); frozen, they keep those pauses out
        # of requests
        gc.freeze()
        demo.launch(**launch_kwargs(host, port, share, auth))
    except OSError as e:
        if "port" not in str(e).lower():
            raise
        raise ServeError(f"port {port} is in use on {host}: pass another with --port") from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # uploads, half-written ones too, and Grad-CAM images
