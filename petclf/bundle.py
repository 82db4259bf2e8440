"""The exported model: `model.safetensors` (weights) + `model.json` (manifest). No pickle on the load path.

    from petclf.bundle import write_bundle, load_network
    write_bundle(model, "exports/run", manifest)       # atomic: temp files, then rename
    net, manifest = load_network("exports/run")        # checksum verified before a single tensor is read

The manifest (`petclf.manifest.Manifest`, re-exported here) says everything needed to rebuild the network and
preprocess an image the way validation did: arch, head, classes (id, display name, group), input size and
normalisation, temperature, metrics, library versions.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petclf.config import DEFAULT_MODEL
from petclf.errors import BundleError
from petclf.io import save_state_dict, verify_sha256, write_atomic
from petclf.manifest import (  # noqa: F401 - re-exported: the bundle's record and its checks
    FORMAT,
    FORMAT_VERSION,
    HEADS,
    MAX_MANIFEST_BYTES,
    Manifest,
    brief,
    class_entries,
    class_groups,
    display_names,
    make_manifest,
    manifest_problem,
)
from petclf.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "model.json"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on."""
    import fastai
    import timm
    import torch

    return {"petclf": __version__, "fastai": fastai.__version__, "timm": timm.__version__,
            "torch": torch.__version__.split("+")[0]}


def write_bundle(model: nn.Module, out_dir: str | Path, manifest: Manifest) -> Path:
    """Save `model`'s weights and `manifest` (plus checksum, versions, date) into `out_dir`; returns the
    manifest path.

    The manifest must be within the ranges `manifest_problem` checks (else ValueError, and nothing is
    written).
    """
    # new weights: no graph is made from them yet (onnx), and the record says who wrote them and when
    manifest = replace(manifest, onnx=None, format_version=FORMAT_VERSION, versions=library_versions(),
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       weights={"file": WEIGHTS_NAME, "sha256": "0" * 64})
    why = manifest_problem(manifest.to_json())  # what a reader would refuse is never written
    if why:
        raise ValueError(f"bad manifest: {why}")
    out_dir = Path(out_dir)
    manifest.weights["sha256"] = save_state_dict(model.state_dict(), out_dir / WEIGHTS_NAME,
                                                 metadata={"format": FORMAT})
    return write_atomic(out_dir / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=1))


def resolve_bundle_dir(path: str | Path) -> Path:
    """The folder `path` names: itself, the folder of a `model.json` named directly, `exports/latest` for a
    bare `latest`, or the run named inside a `latest` file (written where symlinks fail)."""
    path = Path(path)
    if path.name == MANIFEST_NAME and path.is_file():
        path = path.parent
    if str(path) == "latest" and not path.exists():
        path = DEFAULT_MODEL
    if path.is_file() and path.name == "latest":
        return path.parent / path.read_text().strip()
    return path


def _parse(path: Path) -> Any:
    """model.json's JSON, bounded in size and depth; a one-line `BundleError` when it is not JSON."""
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"corrupt model file: {path} is over {MAX_MANIFEST_BYTES // 2**20} MB")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise BundleError(f"corrupt model file: {path} is not valid JSON") from None


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Parse `model.json` into a `Manifest`, every field the loaders use checked; `BundleError` with one clear
    line otherwise."""
    bundle_dir = resolve_bundle_dir(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.exists():
        raise BundleError(f"no model at {bundle_dir} (train one with `petclf train`, or pass --model DIR)")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a petclf model folder ({MANIFEST_NAME} missing)")
    manifest = _parse(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"corrupt model file: {path} is not a petclf manifest")
    _check_version(manifest, path)
    return Manifest.from_json(manifest, str(path))


def _check_version(manifest: dict, path: Path) -> None:
    """Refuse a format_version that is not a positive integer, or newer than this petclf reads."""
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"corrupt model file: {path}: format_version must be a positive integer, "
                          f"not {brief(version)}")
    if version > FORMAT_VERSION:
        versions = manifest.get("versions")
        made_by = versions.get("petclf", "?") if isinstance(versions, dict) else "?"
        raise BundleError(f"{path} is bundle format {version}, made by petclf {made_by}; this petclf "
                          f"{__version__} reads format {FORMAT_VERSION} or older: upgrade petclf")


def pin_onnx(bundle_dir: str | Path, file: str, sha256: str) -> None:
    """Record the ONNX graph's name and SHA-256 in model.json, beside the weights' checksum: only a graph the
    manifest names is ever run (its own `model.onnx.json` cannot vouch for it)."""
    path = resolve_bundle_dir(bundle_dir) / MANIFEST_NAME
    manifest = _parse(path)
    manifest["onnx"] = {"file": file, "sha256": sha256}
    write_atomic(path, json.dumps(manifest, indent=1))


def weights_path(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """The weights file a manifest names."""
    return resolve_bundle_dir(bundle_dir) / (manifest.weights or {}).get("file", WEIGHTS_NAME)


def verify_weights(path: Path, manifest: Manifest) -> None:
    """Refuse weights whose SHA-256 differs from the manifest's (changed after export)."""
    verify_sha256(path, (manifest.weights or {}).get("sha256"))


def read_weights(bundle_dir: str | Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    """Verify the weights file's SHA-256 against the manifest, then read it (safetensors: no code runs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = weights_path(bundle_dir, manifest)
    if not path.is_file():
        raise BundleError(f"corrupt model file: {path.name} missing from {bundle_dir}")
    verify_weights(path, manifest)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"corrupt model file: {path} ({e})") from None


def load_network(bundle_dir: str | Path, device: str | torch.device = "cpu",
                 manifest: Manifest | None = None) -> tuple[nn.Module, Manifest]:
    """Rebuild the network from the manifest (read here unless given), load verified weights, and return
    (model in eval mode, manifest)."""
    import timm

    from petclf.model import build_model

    manifest = manifest or read_manifest(bundle_dir)
    state = read_weights(bundle_dir, manifest)
    arch, made_with = manifest.arch, manifest.versions.get("timm", "?")
    if not timm.is_model(arch):
        raise BundleError(f"architecture {arch!r} is not in the installed timm {timm.__version__}; "
                          f"the model was made with timm {made_with}")
    model = build_model(arch, manifest.n_classes, head=manifest.head, pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BundleError(f"weights do not fit {arch} as built by this timm {timm.__version__} (model made "
                          f"with timm {made_with}): {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), manifest
