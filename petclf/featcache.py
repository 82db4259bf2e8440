"""The feature cache: each photo's features, kept on disk under a key of everything that determines them
exactly, so a later run (on the same folder or another) computes features only for photos it has not seen.

    petclf cache info                    # where, entries, bytes, cap
    petclf cache clear
    petclf train --no-cache ...          # neither read nor written

    from petclf.featcache import FeatureCache, entry_key
    cache = FeatureCache.default()       # $PETCLF_CACHE_DIR/features (else ~/.cache/petclf), cap $PETCLF_CACHE_MAX
    key = entry_key(sha256_file(photo), spec)    # spec: weights digest, preprocessing, backend, ... (a dict)
    cache.get(key, ("x", "pooled"))      # {name: array} or None (missing, corrupt, partial or foreign)
    cache.put(key, {"x": x, "pooled": p}); cache.evict()
An entry is one safetensors file whose metadata holds its key and a SHA-256 of its tensors: a file that does
not parse, whose digest differs (a flipped bit, a truncated copy) or whose key is not the one asked for (a
file copied or renamed into place) is never used; the caller recomputes it and the entry is rewritten. Writes
are atomic (`io.atomic_path`). The cache's size is bounded: least recently used entries go first (a hit
refreshes the entry's modification time, which unlike the access time every file system keeps).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petclf.errors import PetclfError
from petclf.io import atomic_path, cache_dir

FEATURE_VERSION = 1  # petclf's feature code (decoding, preprocessing, pooling); bump when any of it changes
DEFAULT_MAX_BYTES = 2 * 2**30  # 2 GiB: ~5,600 photos with their 384 px feature maps, ~200,000 without
MAX_ENV = "PETCLF_CACHE_MAX"  # e.g. 500M, 4G, or bytes; 0 keeps nothing
STALE_TEMP_S = 3600  # a temp file this old is a write that was killed midway: removed on eviction
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'500M', '2G', '2GiB', '1048576' -> bytes; a one-line error otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise PetclfError(f"{MAX_ENV} must be a size such as 500M or 2G, got {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def max_bytes() -> int:
    """The cache's cap: `PETCLF_CACHE_MAX` when set, else `DEFAULT_MAX_BYTES`."""
    value = os.environ.get(MAX_ENV)
    return DEFAULT_MAX_BYTES if value is None else parse_size(value)


def entry_key(file_sha256: str, spec: Mapping) -> str:
    """The entry of one photo's file content under `spec` (weights digest, preprocessing, backend, ...)."""
    text = json.dumps({"file": file_sha256, "version": FEATURE_VERSION, **spec}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def tensors_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of named arrays: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.data)
    return h.hexdigest()


@dataclass
class CacheInfo:
    """What `petclf cache info` shows."""

    root: Path
    entries: int
    bytes: int
    max_bytes: int

    def summary(self) -> str:
        """The lines printed."""
        return (f"feature cache: {self.root}\nentries: {self.entries}\nsize: {human(self.bytes)} "
                f"of {human(self.max_bytes)} (cap: {MAX_ENV}; least recently used entries are evicted first)")


def human(n: float) -> str:
    """Bytes in binary units, three significant figures."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.0f} B" if unit == "B" else f"{n:.3g} {unit}"


class FeatureCache:
    """Entries below `root`, at most `max_bytes` of them after `evict`."""

    def __init__(self, root: str | Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes

    @classmethod
    def default(cls) -> FeatureCache:
        """`$PETCLF_CACHE_DIR/features` (else ~/.cache/petclf/features), capped at `max_bytes()`."""
        return cls(cache_dir() / "features", max_bytes())

    def path(self, key: str, suffix: str = ".safetensors") -> Path:
        """Where the entry `key` lives (two-character folders keep directories small)."""
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str, names: Iterable[str]) -> dict[str, np.ndarray] | None:
        """The arrays `names` of entry `key`, or None when it is missing, lacks one of them, or is not
        intact."""
        path = self.path(key)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no mapping
        except Exception:  # noqa: BLE001 - missing, or a file that does not parse: recomputed either way
            return None
        if meta.get("key") != key or meta.get("sha256") != tensors_digest(arrays) or not set(names) <= set(arrays):
            return None
        touch(path)
        return {k: arrays[k] for k in names}

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Write entry `key` atomically (a full disk or an unwritable cache only loses the entry)."""
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        try:
            with atomic_path(self.path(key)) as tmp:
                save_file(arrays, str(tmp), metadata={"key": key, "sha256": tensors_digest(arrays),
                                                      "petclf_features": str(FEATURE_VERSION)})
        except OSError:
            pass  # the run has its features; only a later run misses them

    def files(self) -> list[os.DirEntry]:
        """Every file below `root` (entries, exported bodies and their notes, temp files)."""
        found: list[os.DirEntry] = []
        stack = [self.root]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        elif e.is_file(follow_symlinks=False):
                            found.append(e)
            except OSError:
                continue
        return found

    def evict(self) -> int:
        """Delete least recently used files until the cache fits `max_bytes`, and temp files of killed writes;
        the number of files deleted."""
        now, kept, deleted = time.time(), [], 0
        for e in self.files():
            st = e.stat(follow_symlinks=False)
            if e.name.startswith(".") and now - st.st_mtime > STALE_TEMP_S:
                deleted += _unlink(e.path)
            else:
                kept.append((st.st_mtime, st.st_size, e.path))
        total = sum(size for _, size, _ in kept)
        for _, size, path in sorted(kept):
            if total <= self.max_bytes:
                break
            deleted += _unlink(path)
            total -= size
        return deleted

    def info(self) -> CacheInfo:
        """Where the cache is, its entries, its bytes and its cap."""
        files = self.files()
        entries = sum(e.name.endswith(".safetensors") and not e.name.startswith(".") for e in files)
        return CacheInfo(self.root, entries, sum(e.stat(follow_symlinks=False).st_size for e in files),
                         self.max_bytes)

    def clear(self) -> int:
        """Delete every entry; the number of files deleted."""
        n = len(self.files())
        shutil.rmtree(self.root, ignore_errors=True)
        return n


def touch(path: Path) -> None:
    """Mark `path` as just used (its modification time: the LRU clock)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _unlink(path: str) -> int:
    """1 when `path` was deleted, 0 when it could not be."""
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0
