"""The exported model: `model.safetensors` (weights) + `model.json` (manifest). No pickle on the load path.

    from petclf.bundle import write_bundle, load_network
    write_bundle(model, "exports/run", manifest)       # atomic: temp files, then rename
    net, manifest = load_network("exports/run")        # checksum verified before a single tensor is read

The manifest says everything needed to rebuild the network and preprocess an image the way validation did:
arch, head, classes (with species), input size and normalisation, temperature, metrics and library versions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petclf.errors import BundleError
from petclf.io import save_state_dict, sha256_file, write_atomic
from petclf.labels import species_of
from petclf.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "model.json"
FORMAT = "petclf-bundle"
FORMAT_VERSION = 1  # bump when the manifest changes incompatibly; readers refuse newer versions


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on."""
    import fastai
    import timm
    import torch

    return {"petclf": __version__, "fastai": fastai.__version__, "timm": timm.__version__,
            "torch": torch.__version__.split("+")[0]}


def write_bundle(model: nn.Module, out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Save `model`'s weights and `manifest` (plus checksum, versions, date) into `out_dir`; returns the manifest path.

    `manifest` needs at least `arch`, `head`, `classes` (list of {name, species}) and `input`.
    """
    missing = {"arch", "head", "classes", "input"} - set(manifest)
    if missing:
        raise ValueError(f"manifest lacks {sorted(missing)}")
    out_dir = Path(out_dir)
    digest = save_state_dict(model.state_dict(), out_dir / WEIGHTS_NAME, metadata={"format": FORMAT})
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
            "n_classes": len(manifest["classes"]), "temperature": manifest.get("temperature", 1.0),
            "versions": library_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "weights": {"file": WEIGHTS_NAME, "sha256": digest}}
    return write_atomic(out_dir / MANIFEST_NAME, json.dumps(full, indent=1))


def resolve_bundle_dir(path: str | Path) -> Path:
    """The folder `path` names: itself, or the run named inside a `latest` file (written where symlinks fail)."""
    path = Path(path)
    if path.is_file() and path.name == "latest":
        return path.parent / path.read_text().strip()
    return path


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Parse and sanity-check `model.json`; raise `BundleError` with one clear line otherwise."""
    bundle_dir = resolve_bundle_dir(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.exists():
        raise BundleError(f"no model at {bundle_dir} (train one with `petclf train`, or pass --model DIR)")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a petclf model folder ({MANIFEST_NAME} missing)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"corrupt model file: {path} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"corrupt model file: {path} is not a petclf manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        made_by = manifest.get("versions", {}).get("petclf", "?")
        raise BundleError(f"{path} is bundle format {version}, made by petclf {made_by}; this petclf "
                          f"{__version__} reads format {FORMAT_VERSION} or older: upgrade petclf")
    for key in ("arch", "head", "classes", "input", "weights"):
        if key not in manifest:
            raise BundleError(f"corrupt model file: {path} lacks {key!r}")
    return manifest


def weights_path(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """The weights file a manifest names."""
    return resolve_bundle_dir(bundle_dir) / manifest["weights"].get("file", WEIGHTS_NAME)


def verify_weights(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse weights whose SHA-256 differs from the manifest's (changed after export)."""
    if sha256_file(path) != manifest["weights"].get("sha256"):
        raise BundleError(f"checksum mismatch: {path} differs from the one exported; refusing to load it")


def read_weights(bundle_dir: str | Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
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


def load_network(bundle_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network from the manifest, load verified weights, and return (model in eval mode, manifest)."""
    import timm

    from petclf.model import build_model

    manifest = read_manifest(bundle_dir)
    state = read_weights(bundle_dir, manifest)
    arch = manifest["arch"]
    if not timm.is_model(arch):
        made_with = manifest.get("versions", {}).get("timm", "?")
        raise BundleError(f"architecture {arch!r} is not in the installed timm {timm.__version__}; "
                          f"the model was made with timm {made_with}")
    model = build_model(arch, manifest["n_classes"], head=manifest["head"], pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        made_with = manifest.get("versions", {})
        raise BundleError(f"weights do not fit {arch} as built by this timm {timm.__version__} (model made with "
                          f"timm {made_with.get('timm', '?')}): {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), manifest


def make_manifest(arch: str, head: dict[str, Any], vocab: list[str], size: int, presize: int,
                  mean: list[float], std: list[float], **extra: Any) -> dict[str, Any]:
    """The manifest fields `write_bundle` needs, with the validation preprocessing spelled out.

    Validation preprocessing (fastbook presizing, as fastai applies it to the validation set): centre-crop to a
    square and resize to `presize` (PIL, bilinear), scale to [0, 1], resize to `size` (bilinear), normalise.
    """
    return {"arch": arch, "head": head,
            "classes": [{"name": c, "species": species_of(c)} for c in vocab],
            "input": {"size": size, "presize": presize, "resize_method": "crop", "resample": "bilinear",
                      "mean": list(mean), "std": list(std)},
            **extra}
