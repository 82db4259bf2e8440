"""The exported model: `model.safetensors` (weights) + `model.json` (manifest). No pickle on the load path.

    from petclf.bundle import write_bundle, load_network
    write_bundle(model, "exports/run", manifest)       # atomic: temp files, then rename
    net, manifest = load_network("exports/run")        # checksum verified before a single tensor is read

The manifest says everything needed to rebuild the network and preprocess an image the way validation did:
arch, head, classes (id, display name, group), input size and normalisation, temperature, metrics, library versions.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petclf.config import DEFAULT_MODEL
from petclf.errors import BundleError
from petclf.io import save_state_dict, verify_sha256, write_atomic
from petclf.labels import PETS_GROUP_NAME, display_name, pets_groups
from petclf.notapet import METHOD as NOT_A_PET_METHOD
from petclf.openset import METHOD as OPEN_SET_METHOD
from petclf.version import __version__

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "model.json"
FORMAT = "petclf-bundle"
FORMAT_VERSION = 1  # bump when the manifest changes incompatibly; readers refuse newer versions


# ---------------------------------------------------------------------------------------------------- the schema
# What a manifest may hold, checked before anything is built from it. A bundle is input like any other file: a
# temperature of -1 would invert the ranking, a std of 0 gives NaN probabilities, a presize of 10^6 a 12 TB array.

MAX_MANIFEST_BYTES = 16 * 2**20  # model.json of 100,000 classes is ~6 MB
N_CLASSES = (2, 100_000)  # classes a bundle may have
SIZE = (8, 2048)  # input.size, px: the network's input side
MAX_PRESIZE = 4096  # input.presize, px: size <= presize <= this (the item resize before the crop)
STD = (1e-3, 1e3)  # input.std, per channel; input.mean within +-MAX_MEAN
MAX_MEAN = 1e3
TEMPERATURE = (1e-3, 1e3)  # softmax(logits / T): T outside this range is a broken calibration, not a choice
MAX_NAME = 256  # characters in a class name, architecture name or file name
HEADS = {  # head kinds `model.build_model` builds, with the keys each may carry (fastai's create_head arguments)
    "fastai": {"concat_pool", "lin_ftrs", "ps", "first_bn", "bn_final", "lin_first"},
    "linear": {"l2norm", "gem_p"},  # l2norm: pooled features scaled to unit length before the Linear (the probe
}                                   # recipe); gem_p: GeM pooling's exponent (absent: average pooling)
HEAD_FLAGS = ("concat_pool", "first_bn", "bn_final", "lin_first", "l2norm")
GEM_P = (1.0, 16.0)  # head.gem_p: 1 is average pooling, 16 is already close to max pooling
MAX_LIN_FTRS = (16, 65_536)  # fastai head: at most 16 hidden layers of at most 65,536 features


class _Bad(Exception):
    """Why a manifest is refused (one line)."""


def _show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise _Bad(why)


def _get(d: dict, key: str, where: str = "") -> Any:
    _need(key in d, f"{where}{key} missing")
    return d[key]


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be an integer, not {_show(v)}")
    _need(lo <= v <= hi, f"{name} must be in {lo}..{hi}, not {v}")
    return v


def _num(v: Any, name: str, lo: float, hi: float) -> float:
    _need(isinstance(v, (int, float)) and not isinstance(v, bool), f"{name} must be a number, not {_show(v)}")
    _need(math.isfinite(v) and lo <= v <= hi, f"{name} must be in [{lo:g}, {hi:g}], not {v}")
    return float(v)


def _dict(v: Any, name: str) -> dict:
    _need(isinstance(v, dict), f"{name} must be an object, not {_show(v)}")
    return v


def _str(v: Any, name: str, max_len: int = MAX_NAME) -> str:
    _need(isinstance(v, str) and 0 < len(v) <= max_len, f"{name} must be a string of 1..{max_len} characters, "
                                                         f"not {_show(v)}")
    return v


def _file_pin(v: Any, name: str) -> None:
    """{file: a plain name in the bundle folder, sha256: 64 hex digits}."""
    d = _dict(v, name)
    f = _str(_get(d, "file", f"{name}."), f"{name}.file")
    _need(not any(c in f for c in "/\\\0") and f not in (".", ".."), f"{name}.file must be a plain file name, "
                                                                    f"not {_show(f)}")
    sha = _get(d, "sha256", f"{name}.")
    _need(isinstance(sha, str) and re.fullmatch("[0-9a-f]{64}", sha) is not None,
          f"{name}.sha256 must be 64 hex digits, not {_show(sha)}")


def _check_classes(m: dict) -> None:
    classes = _get(m, "classes")
    _need(isinstance(classes, list), f"classes must be a list, not {_show(classes)}")
    n = _int(_get(m, "n_classes"), "n_classes", *N_CLASSES)
    _need(len(classes) == n, f"{len(classes)} classes listed for n_classes {n}")
    for i, c in enumerate(classes):
        c = _dict(c, f"classes[{i}]")
        _str(_get(c, "name", f"classes[{i}]."), f"classes[{i}].name")
        for key in ("display", "group", "species"):  # `species`: bundles written before groups had a name
            if key in c:
                _str(c[key], f"classes[{i}].{key}")
    if "group_name" in m:
        _str(m["group_name"], "group_name")
    seen: set[str] = set()
    for c in classes:
        _need(c["name"] not in seen, f"class name {_show(c['name'])} is listed twice")
        seen.add(c["name"])


def _check_input(m: dict) -> None:
    inp = _dict(_get(m, "input"), "input")
    size = _int(_get(inp, "size", "input."), "input.size", *SIZE)
    _int(_get(inp, "presize", "input."), "input.presize", size, MAX_PRESIZE)
    for key, lo, hi in (("mean", -MAX_MEAN, MAX_MEAN), ("std", *STD)):
        v = _get(inp, key, "input.")
        _need(isinstance(v, list) and len(v) == 3, f"input.{key} must be a list of 3 numbers, not {_show(v)}")
        for i, x in enumerate(v):
            _num(x, f"input.{key}[{i}]", lo, hi)
    for key in ("resize_method", "resample"):
        if key in inp:
            _str(inp[key], f"input.{key}")


def _check_head(m: dict) -> None:
    head = _dict(_get(m, "head"), "head")
    kind = head.get("kind", "fastai")
    _need(kind in HEADS, f"head.kind must be one of {', '.join(HEADS)}, not {_show(kind)}")
    extra = set(head) - HEADS[kind] - {"kind"}
    _need(not extra, f"head has unknown keys for a {kind} head: {', '.join(sorted(map(str, extra)))}")
    for key in HEAD_FLAGS:
        if key in head:
            _need(isinstance(head[key], bool), f"head.{key} must be true or false, not {_show(head[key])}")
    if head.get("lin_ftrs") is not None:
        ftrs = head["lin_ftrs"]
        _need(isinstance(ftrs, list) and len(ftrs) <= MAX_LIN_FTRS[0],
              f"head.lin_ftrs must be null or a list of at most {MAX_LIN_FTRS[0]} sizes, not {_show(ftrs)}")
        for i, f in enumerate(ftrs):
            _int(f, f"head.lin_ftrs[{i}]", 1, MAX_LIN_FTRS[1])
    if "gem_p" in head:
        _num(head["gem_p"], "head.gem_p", *GEM_P)
    ps = head.get("ps", 0.5)
    for i, p in enumerate(ps if isinstance(ps, list) else [ps]):
        _num(p, f"head.ps[{i}]" if isinstance(ps, list) else "head.ps", 0.0, 1.0)


def _check_answers(m: dict) -> None:
    """`unsure_below` (a probability) and `not_a_pet` (off, or the detector's threshold and pinned means file)."""
    if m.get("unsure_below") is not None:
        _num(m["unsure_below"], "unsure_below", 0.0, 1.0)
    if m.get("not_a_pet") is None:
        return
    d = _dict(m["not_a_pet"], "not_a_pet")
    method = _get(d, "method", "not_a_pet.")
    _need(method in ("off", NOT_A_PET_METHOD), f"not_a_pet.method must be off or {NOT_A_PET_METHOD!r}, "
                                                f"not {_show(method)}")
    if method != "off":
        _num(_get(d, "threshold", "not_a_pet."), "not_a_pet.threshold", -1.0, 1.0)
        _file_pin(d, "not_a_pet")
    _check_open_set(m)


def _check_open_set(m: dict) -> None:
    """`open_set`: off, or (its version) the thresholds and the pinned ImageNet head file; an entry of another
    version or method is left alone (the predictor then has no open-set signals)."""
    if m.get("open_set") is None:
        return
    d = _dict(m["open_set"], "open_set")
    if d.get("method") != OPEN_SET_METHOD:
        return
    _int(_get(d, "version", "open_set."), "open_set.version", 1, 1_000)
    for key in ("pet_threshold", "known_threshold", "sure_below"):
        _num(_get(d, key, "open_set."), f"open_set.{key}", 0.0, 1.0)
    _num(_get(d, "cosine_threshold", "open_set."), "open_set.cosine_threshold", -1.0, 1.0)
    _file_pin(d, "open_set")


def manifest_problem(m: Any) -> str | None:
    """Why the parsed `model.json` cannot be used (one line), or None when every field the loaders read is sane."""
    try:
        _dict(m, "the manifest")
        _need(m.get("format") == FORMAT, "not a petclf manifest")
        _str(_get(m, "arch"), "arch")
        _check_head(m)
        _check_classes(m)
        _check_input(m)
        _file_pin(_get(m, "weights"), "weights")
        if "onnx" in m:
            _file_pin(m["onnx"], "onnx")
        if m.get("temperature") is not None:
            _num(m["temperature"], "temperature", *TEMPERATURE)
        _check_answers(m)
        for key in ("versions", "metrics"):
            if m.get(key) is not None:
                _dict(m[key], key)
    except _Bad as e:
        return str(e)
    return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on."""
    import fastai
    import timm
    import torch

    return {"petclf": __version__, "fastai": fastai.__version__, "timm": timm.__version__,
            "torch": torch.__version__.split("+")[0]}


def write_bundle(model: nn.Module, out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Save `model`'s weights and `manifest` (plus checksum, versions, date) into `out_dir`; returns the manifest path.

    `manifest` needs at least `arch`, `head`, `classes` (list of {name, display, group}) and `input`, within the
    ranges `manifest_problem` checks (else ValueError, and nothing is written).
    """
    manifest = {k: v for k, v in manifest.items() if k != "onnx"}  # new weights: no graph is made from them yet
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
            "n_classes": len(manifest.get("classes") or []), "temperature": manifest.get("temperature", 1.0),
            "versions": library_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "weights": {"file": WEIGHTS_NAME, "sha256": "0" * 64}}
    why = manifest_problem(full)  # what a reader would refuse is never written
    if why:
        raise ValueError(f"bad manifest: {why}")
    out_dir = Path(out_dir)
    full["weights"]["sha256"] = save_state_dict(model.state_dict(), out_dir / WEIGHTS_NAME,
                                                metadata={"format": FORMAT})
    return write_atomic(out_dir / MANIFEST_NAME, json.dumps(full, indent=1))


def resolve_bundle_dir(path: str | Path) -> Path:
    """The folder `path` names: itself, the folder of a `model.json` named directly, `exports/latest` for a bare
    `latest`, or the run named inside a `latest` file (written where symlinks fail)."""
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


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """Parse `model.json` and check every field the loaders use (`manifest_problem`); raise `BundleError` with
    one clear line otherwise."""
    bundle_dir = resolve_bundle_dir(bundle_dir)
    path = bundle_dir / MANIFEST_NAME
    if not bundle_dir.exists():
        raise BundleError(f"no model at {bundle_dir} (train one with `petclf train`, or pass --model DIR)")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a petclf model folder ({MANIFEST_NAME} missing)")
    manifest = _parse(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"corrupt model file: {path} is not a petclf manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"corrupt model file: {path}: format_version must be a positive integer, "
                          f"not {_show(version)}")
    if version > FORMAT_VERSION:
        versions = manifest.get("versions")
        made_by = versions.get("petclf", "?") if isinstance(versions, dict) else "?"
        raise BundleError(f"{path} is bundle format {version}, made by petclf {made_by}; this petclf "
                          f"{__version__} reads format {FORMAT_VERSION} or older: upgrade petclf")
    why = manifest_problem(manifest)
    if why:
        raise BundleError(f"corrupt model file: {path}: {why}")
    return manifest


def pin_onnx(bundle_dir: str | Path, file: str, sha256: str) -> None:
    """Record the ONNX graph's name and SHA-256 in model.json, beside the weights' checksum: only a graph the
    manifest names is ever run (its own `model.onnx.json` cannot vouch for it)."""
    path = resolve_bundle_dir(bundle_dir) / MANIFEST_NAME
    manifest = _parse(path)
    manifest["onnx"] = {"file": file, "sha256": sha256}
    write_atomic(path, json.dumps(manifest, indent=1))


def weights_path(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """The weights file a manifest names."""
    return resolve_bundle_dir(bundle_dir) / manifest["weights"].get("file", WEIGHTS_NAME)


def verify_weights(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse weights whose SHA-256 differs from the manifest's (changed after export)."""
    verify_sha256(path, manifest["weights"].get("sha256"))


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


def class_entries(vocab: list[str], groups: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The manifest's classes: {name (the machine key), display (for people), group (when there are groups)}."""
    return [{"name": c, "display": display_name(c), **({"group": groups[c]} if groups else {})} for c in vocab]


def class_groups(manifest: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """(what the groups are called, {class: group}); (None, {}) for a model without groups. Reads the `species`
    key of bundles written before groups had a name."""
    classes = manifest["classes"]
    if classes and all("group" in c for c in classes):
        return manifest.get("group_name") or "group", {c["name"]: c["group"] for c in classes}
    if classes and all("species" in c for c in classes):
        return PETS_GROUP_NAME, {c["name"]: c["species"] for c in classes}
    return None, {}


def manifest_number(manifest: dict[str, Any], key: str, default: float) -> float:
    """`manifest[key]` as a float, `default` when the bundle has none: a recorded 0 stays 0."""
    value = manifest.get(key)
    return default if value is None else float(value)


def display_names(manifest: dict[str, Any]) -> dict[str, str]:
    """{class: the name people see}."""
    return {c["name"]: c.get("display") or display_name(c["name"]) for c in manifest["classes"]}


def make_manifest(arch: str, head: dict[str, Any], vocab: list[str], size: int, presize: int,
                  mean: list[float], std: list[float], groups: dict[str, str] | None = None,
                  group_name: str | None = None, **extra: Any) -> dict[str, Any]:
    """The manifest fields `write_bundle` needs, with the validation preprocessing spelled out.

    Validation preprocessing (fastbook presizing, as fastai applies it to the validation set): centre-crop to a
    square and resize to `presize` (PIL, bilinear), scale to [0, 1], resize to `size` (bilinear), normalise.
    Without `groups`, Pets breeds get their species (cat/dog) and other labels no groups.
    """
    if groups is None and (groups := pets_groups(list(vocab))) is not None:
        group_name = PETS_GROUP_NAME
    return {"arch": arch, "head": head, "classes": class_entries(list(vocab), groups),
            **({"group_name": group_name or "group"} if groups else {}),
            "input": {"size": size, "presize": presize, "resize_method": "crop", "resample": "bilinear",
                      "mean": list(mean), "std": list(std)},
            **extra}
