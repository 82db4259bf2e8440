"""Files, the ground floor every other module stands on: atomic writes, checksums, image listing, the network
probe.

    from petclf.io import write_atomic, sha256_file, list_images
    write_atomic("exports/run/metrics.json", text)     # temp file, fsync, rename: never half-written
    list_images("photos/")                             # image files below a folder, sorted, hidden ones left out

Nothing here imports torch; `save_state_dict` loads safetensors' torch support only when it is called.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from petclf.errors import BundleError, PetclfError

if TYPE_CHECKING:
    import torch

# what counts as an image (HEIC/HEIF: iPhone photos, decoded through pi-heif)
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"})
NETWORK_TIMEOUT = 8.0  # seconds to decide that a download host is unreachable


def cache_dir() -> Path:
    """Where petclf caches what it can recompute: image verdicts, features (`PETCLF_CACHE_DIR`, else
    ~/.cache/petclf)."""
    return Path(os.environ.get("PETCLF_CACHE_DIR", Path.home() / ".cache" / "petclf"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, sha256: str | None) -> None:
    """Refuse a bundle file whose SHA-256 differs from the one model.json pinned when it was written."""
    if sha256_file(path) != sha256:
        raise BundleError(f"checksum mismatch: {path} differs from the one exported; refusing to load it")


def umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux), else by setting it
    back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield an absolute temp path beside `path` to write to; it replaces `path` only if the block succeeds.

    A crash, a full disk or an exception mid-write leaves the previous `path` intact and no temp file behind.
    The file gets the permissions a plain `open(path, "w")` would (0666 less the umask), whatever made the
    temp file: safetensors and tempfile create theirs 0600, which kept other users from loading a model.
    """
    path = Path(path).absolute()
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if tmp.is_file() and not tmp.is_symlink():
            os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError from its zip writer, Python as ENOSPC without a
        # name
        if getattr(e, "errno", None) == errno.ENOSPC or _disk_full(path.parent):
            raise OSError(errno.ENOSPC, "disk full", str(path)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def check_replaceable(path: Path) -> None:
    """Refuse in one line to write over anything at `path` but a regular file (a folder, a FIFO, a device, a
    socket, or a link to one): a rename would replace it."""
    if (path.exists() or path.is_symlink()) and not path.is_file():
        kind = file_kind(path) if path.exists() else "a link to nothing"
        raise PetclfError(f"cannot write {path}: it is {kind}, not a regular file; name a file")


def file_kind(path: Path) -> str:
    """What `path` is, in words: 'a folder', 'a FIFO', 'a device' ..."""
    mode = path.stat().st_mode
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def is_stream(path: Path) -> bool:
    """True for a FIFO or a character device (/dev/stdout, /dev/null, a named pipe): written as a stream."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


@contextmanager
def stream_errors(name: str) -> Iterator[None]:
    """A failed write to a stream (stdout, a FIFO, a device) as one line: a full disk is OSError(ENOSPC)
    naming `name` (exit 1), any other failure a PetclfError. A reader that went away (`| head`) is left as it
    is."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, "disk full", name) from None
        raise PetclfError(f"cannot write {name}: {e.strerror or e}") from None


def write_output(path: str | Path, data: bytes) -> Path:
    """`data` where the user asked: a FIFO or a character device as a stream (never replaced), otherwise a
    file written atomically (`write_atomic`); a failed write is one line."""
    path = Path(path)
    if not is_stream(path):  # a link to the user's file: that file is replaced, the link kept
        return write_atomic(path.resolve() if path.is_symlink() else path, data)
    with stream_errors(str(path)), open(path, "wb") as f:  # a FIFO: waits for its reader, as `> fifo` does
        f.write(data)
    return path


def _disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """True when `folder`'s file system has less than `margin` bytes free."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def check_writable(folder: str | Path) -> Path:
    """`folder`, created if needed, after proving a file can be written there (before any long work is
    done)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PetclfError(f"cannot write to {folder}: {e.strerror or e}") from None
    _probe(folder, f"to {folder}")
    return folder


def _probe(folder: Path, what: str) -> None:
    """Create and delete a file in `folder`: the only sure test (root ignores permission bits, not read-only
    file systems); a one-line error naming `what` otherwise."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".petclf-probe"):
            pass
    except OSError as e:
        raise PetclfError(f"cannot write {what}: {e.strerror or e}") from None


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename over `path`.

    Text is written as UTF-8; file names that are not (`os.fsdecode` keeps their bytes as surrogates) are
    written as their own bytes rather than failing.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write tensors as safetensors atomically; returns the file's SHA-256."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    return digest


def check_file_writable(path: str | Path) -> None:
    """Raise `PetclfError` (one line) unless a file can be written at `path` now, in a folder that exists, or
    `path` is a stream (`write_output`): before the work, not after it."""
    path = Path(path)
    if is_stream(path):
        return  # written as a stream: nothing beside it is made
    path = path.resolve() if path.is_symlink() else path  # what `write_output` writes
    check_replaceable(path)
    folder = path.absolute().parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise PetclfError(f"cannot write {path}: {folder} {what}")
    _probe(folder, str(path))


def is_image_file(path: str | Path) -> bool:
    """True when the file's extension is one of `IMAGE_EXTS` (its content is checked when it is decoded)."""
    return Path(path).suffix.lower() in IMAGE_EXTS


def walk_files(root: str | Path) -> list[Path]:
    """Every file below `root`, recursively and sorted; hidden files and folders are left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / n for n in filenames if not n.startswith(".")]
    return sorted(found)


def list_images(root: str | Path) -> list[Path]:
    """Image files below `root` (by extension), recursively and sorted; hidden files and folders are left
    out."""
    return [p for p in walk_files(root) if is_image_file(p)]


def reachable(url: str, timeout: float = NETWORK_TIMEOUT) -> bool:
    """True if `url`'s host answers within `timeout` seconds (DNS included, which has no timeout of its
    own)."""
    import urllib.request

    result: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            result.append(True)
        except Exception as e:  # an HTTP error status still means the host is there
            result.append(hasattr(e, "code"))

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1)
    return bool(result and result[0])
