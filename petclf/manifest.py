"""model.json as a typed record: `Manifest`, checked field by field before anything is built from it.

    from petclf.manifest import Manifest
    m = Manifest.from_json(json.loads(text), "run/model.json")   # BundleError naming the file and the key
    m.arch, m.size, m.class_names, m.temperature                 # attributes, with defaults for older files
    m.to_json()                                                          # the dict model.json holds

Plain JSON in, plain JSON out: no torch, no files (`petclf.bundle` reads and writes them). The nested entries
that have their own readers stay dicts: `not_a_pet` (`petclf.notapet`), `open_set` (`petclf.openset`),
`calibration`, `recipe`, `metrics`, `data`; and so do `head` (`model.build_model`'s spec) and each class
({name, display, group}).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from petclf.config import UNSURE_BELOW
from petclf.errors import BundleError
from petclf.labels import PETS_GROUP_NAME, display_name, pets_groups
from petclf.notapet import METHOD as NOT_A_PET_METHOD
from petclf.openset import METHOD as OPEN_SET_METHOD

FORMAT = "petclf-bundle"
FORMAT_VERSION = 1  # bump when the manifest changes incompatibly; readers refuse newer versions


# ---------------------------------------------------------------------------------------------------- the
# schema What a manifest may hold, checked before anything is built from it. A bundle is input like any other
# file: a temperature of -1 would invert the ranking, a std of 0 gives NaN probabilities, a presize of 10^6 a
# 12 TB array.

MAX_MANIFEST_BYTES = 16 * 2**20  # model.json of 100,000 classes is ~6 MB
N_CLASSES = (2, 100_000)  # classes a bundle may have
SIZE = (8, 2048)  # input.size, px: the network's input side
MAX_PRESIZE = 4096  # input.presize, px: size <= presize <= this (the item resize before the crop)
STD = (1e-3, 1e3)  # input.std, per channel; input.mean within +-MAX_MEAN
MAX_MEAN = 1e3
TEMPERATURE = (1e-3, 1e3)  # softmax(logits / T): T outside this range is a broken calibration, not a choice
MAX_NAME = 256  # characters in a class name, architecture name or file name
# head kinds `model.build_model` builds, with the keys each may carry (fastai's create_head arguments)
HEADS = {
    "fastai": {"concat_pool", "lin_ftrs", "ps", "first_bn", "bn_final", "lin_first"},
    # l2norm: pooled features scaled to unit length before the Linear (the probe recipe); gem_p: GeM pooling's
    # exponent (absent: average pooling)
    "linear": {"l2norm", "gem_p"},
}
HEAD_FLAGS = ("concat_pool", "first_bn", "bn_final", "lin_first", "l2norm")
GEM_P = (1.0, 16.0)  # head.gem_p: 1 is average pooling, 16 is already close to max pooling
MAX_LIN_FTRS = (16, 65_536)  # fastai head: at most 16 hidden layers of at most 65,536 features


class _Bad(Exception):
    """Why a manifest is refused (one line)."""


def brief(v: Any) -> str:
    """A value as a short quote for a one-line error."""
    text = json.dumps(v) if isinstance(v, (str, int, float, bool, type(None))) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _need(ok: bool, why: str) -> None:
    if not ok:
        raise _Bad(why)


def _get(d: dict, key: str, where: str = "") -> Any:
    _need(key in d, f"{where}{key} missing")
    return d[key]


def _int(v: Any, name: str, lo: int, hi: int) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be an integer, not {brief(v)}")
    _need(lo <= v <= hi, f"{name} must be in {lo}..{hi}, not {v}")
    return v


def _num(v: Any, name: str, lo: float, hi: float) -> float:
    _need(isinstance(v, (int, float)) and not isinstance(v, bool), f"{name} must be a number, not {brief(v)}")
    _need(math.isfinite(v) and lo <= v <= hi, f"{name} must be in [{lo:g}, {hi:g}], not {v}")
    return float(v)


def _dict(v: Any, name: str) -> dict:
    _need(isinstance(v, dict), f"{name} must be an object, not {brief(v)}")
    return v


def _str(v: Any, name: str, max_len: int = MAX_NAME) -> str:
    _need(isinstance(v, str) and 0 < len(v) <= max_len,
          f"{name} must be a string of 1..{max_len} characters, not {brief(v)}")
    return v


def _file_pin(v: Any, name: str) -> None:
    """{file: a plain name in the bundle folder, sha256: 64 hex digits}."""
    d = _dict(v, name)
    f = _str(_get(d, "file", f"{name}."), f"{name}.file")
    _need(not any(c in f for c in "/\\\0") and f not in (".", ".."),
          f"{name}.file must be a plain file name, not {brief(f)}")
    sha = _get(d, "sha256", f"{name}.")
    _need(isinstance(sha, str) and re.fullmatch("[0-9a-f]{64}", sha) is not None,
          f"{name}.sha256 must be 64 hex digits, not {brief(sha)}")


def _check_classes(m: dict) -> None:
    classes = _get(m, "classes")
    _need(isinstance(classes, list), f"classes must be a list, not {brief(classes)}")
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
        _need(c["name"] not in seen, f"class name {brief(c['name'])} is listed twice")
        seen.add(c["name"])


def _check_input(m: dict) -> None:
    inp = _dict(_get(m, "input"), "input")
    size = _int(_get(inp, "size", "input."), "input.size", *SIZE)
    _int(_get(inp, "presize", "input."), "input.presize", size, MAX_PRESIZE)
    for key, lo, hi in (("mean", -MAX_MEAN, MAX_MEAN), ("std", *STD)):
        v = _get(inp, key, "input.")
        _need(isinstance(v, list) and len(v) == 3, f"input.{key} must be a list of 3 numbers, not {brief(v)}")
        for i, x in enumerate(v):
            _num(x, f"input.{key}[{i}]", lo, hi)
    for key in ("resize_method", "resample"):
        if key in inp:
            _str(inp[key], f"input.{key}")


def _check_head(m: dict) -> None:
    head = _dict(_get(m, "head"), "head")
    kind = head.get("kind", "fastai")
    _need(kind in HEADS, f"head.kind must be one of {', '.join(HEADS)}, not {brief(kind)}")
    extra = set(head) - HEADS[kind] - {"kind"}
    _need(not extra, f"head has unknown keys for a {kind} head: {', '.join(sorted(map(str, extra)))}")
    for key in HEAD_FLAGS:
        if key in head:
            _need(isinstance(head[key], bool), f"head.{key} must be true or false, not {brief(head[key])}")
    if head.get("lin_ftrs") is not None:
        ftrs = head["lin_ftrs"]
        _need(isinstance(ftrs, list) and len(ftrs) <= MAX_LIN_FTRS[0],
              f"head.lin_ftrs must be null or a list of at most {MAX_LIN_FTRS[0]} sizes, not {brief(ftrs)}")
        for i, f in enumerate(ftrs):
            _int(f, f"head.lin_ftrs[{i}]", 1, MAX_LIN_FTRS[1])
    if "gem_p" in head:
        _num(head["gem_p"], "head.gem_p", *GEM_P)
    ps = head.get("ps", 0.5)
    for i, p in enumerate(ps if isinstance(ps, list) else [ps]):
        _num(p, f"head.ps[{i}]" if isinstance(ps, list) else "head.ps", 0.0, 1.0)


def _check_answers(m: dict) -> None:
    """`unsure_below` (a probability); `not_a_pet` (off, or the detector's threshold and pinned file)."""
    if m.get("unsure_below") is not None:
        _num(m["unsure_below"], "unsure_below", 0.0, 1.0)
    if m.get("not_a_pet") is None:
        return
    d = _dict(m["not_a_pet"], "not_a_pet")
    method = _get(d, "method", "not_a_pet.")
    _need(method in ("off", NOT_A_PET_METHOD), f"not_a_pet.method must be off or {NOT_A_PET_METHOD!r}, "
                                                f"not {brief(method)}")
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


def _check_optional(m: dict) -> None:
    """Optional keys, when present, have the type readers expect (absent or null: the record's default)."""
    for key in ("versions", "metrics", "calibration", "recipe"):
        if m.get(key) is not None:
            _dict(m[key], key)
    for key in ("trained_at", "created"):
        if m.get(key) is not None:
            _str(m[key], key, 64)
    if m.get("data") is not None:  # {root, layout, split, sizes}; a bare root in older bundles
        _need(isinstance(m["data"], (dict, str)), f"data must be an object, not {brief(m['data'])}")


def manifest_problem(m: Any) -> str | None:
    """Why the parsed `model.json` cannot be used (one line); None when every field loaders read is sane."""
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
        _check_optional(m)
    except _Bad as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------------- the
# record

_INPUT = ("size", "presize", "mean", "std", "resize_method", "resample")  # what model.json nests in `input`
_DERIVED = {"format", "n_classes", "input"}  # written by `to_json`, never stored


@dataclass
class Manifest:
    """All that rebuilds the network, preprocesses an image as validation did, and words its answers."""

    arch: str  # timm name
    head: dict[str, Any]  # {kind, ...}: the head `model.build_model` builds (see HEADS)
    classes: list[dict[str, str]]  # {name, display, group} in output order (older: `species` for group)
    size: int  # the network's input side, px
    presize: int  # the item resize before the crop, px
    mean: list[float]  # per-channel normalisation
    std: list[float]
    resize_method: str = "crop"
    resample: str = "bilinear"
    group_name: str | None = None  # what the groups are called (Pets: species); None without groups
    temperature: float = 1.0  # softmax(logits / T): the calibration
    unsure_below: float = UNSURE_BELOW  # a top probability below this lists the likely classes
    metrics: dict[str, Any] | None = None  # error_rate, accuracy, valid_loss at the end of training
    calibration: dict[str, Any] | None = None  # how the temperature was fitted
    recipe: dict[str, Any] | None = None  # {name, ...}: how the run trained
    not_a_pet: dict[str, Any] | None = None  # the detector's entry (petclf.notapet reads it)
    open_set: dict[str, Any] | None = None  # the open-set signals' entry (petclf.openset reads it)
    data: dict[str, Any] | str | None = None  # {root, layout, split, sizes}; a bare root in older bundles
    trained_at: str | None = None  # local time, ISO 8601
    created: str | None = None  # when the bundle was written (UTC, ISO 8601)
    versions: dict[str, str] = field(default_factory=dict)  # library versions that wrote it
    weights: dict[str, str] | None = None  # {file, sha256}: set by `write_bundle`
    onnx: dict[str, str] | None = None  # {file, sha256}: the pinned graph, set by `pin_onnx`
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys this petclf does not know: kept, never read

    @property
    def n_classes(self) -> int:
        """How many classes the network outputs."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Class ids in the network's output order."""
        return [c["name"] for c in self.classes]

    def to_json(self) -> dict[str, Any]:
        """The dict `model.json` holds (None-valued optional keys left out)."""
        d: dict[str, Any] = {"format": FORMAT}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in _INPUT and f.name != "extra" and v is not None:
                d[f.name] = v
        d["n_classes"] = self.n_classes
        d["input"] = {k: getattr(self, k) for k in _INPUT}
        return {**self.extra, **d}

    @classmethod
    def from_json(cls, d: Any, where: str = "model.json") -> Manifest:
        """The record of a parsed `model.json`; BundleError (one line naming `where` and the key) when a field
        the loaders read is missing, mistyped or out of range."""
        why = manifest_problem(d)
        if why:
            raise BundleError(f"corrupt model file: {where}: {why}")
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known and k not in _INPUT and v is not None}
        kw.update({k: d["input"][k] for k in _INPUT if k in d["input"]})
        extra = {k: v for k, v in d.items() if k not in known and k not in _DERIVED}
        return cls(**kw, extra=extra)


def class_entries(vocab: list[str], groups: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The manifest's classes: {name (the machine key), display (for people), group (if any)}."""
    return [{"name": c, "display": display_name(c), **({"group": groups[c]} if groups else {})}
            for c in vocab]


def class_groups(manifest: Manifest) -> tuple[str | None, dict[str, str]]:
    """(what the groups are called, {class: group}); (None, {}) for a model without groups. Reads the
    `species` key of bundles written before groups had a name."""
    classes = manifest.classes
    if classes and all("group" in c for c in classes):
        return manifest.group_name or "group", {c["name"]: c["group"] for c in classes}
    if classes and all("species" in c for c in classes):
        return PETS_GROUP_NAME, {c["name"]: c["species"] for c in classes}
    return None, {}


def display_names(manifest: Manifest) -> dict[str, str]:
    """{class: the name people see}."""
    return {c["name"]: c.get("display") or display_name(c["name"]) for c in manifest.classes}


def make_manifest(arch: str, head: dict[str, Any], vocab: list[str], size: int, presize: int,
                  mean: list[float], std: list[float], groups: dict[str, str] | None = None,
                  group_name: str | None = None, **extra: Any) -> Manifest:
    """The record `write_bundle` needs, with the validation preprocessing spelled out; `extra`: the optional
    fields (metrics, temperature, not_a_pet, ...). Not checked here: `write_bundle` refuses what readers
    would.

    Validation preprocessing (fastbook presizing, as fastai applies it to the validation set): centre-crop to
    a square and resize to `presize` (PIL, bilinear), scale to [0, 1], resize to `size` (bilinear), normalise.
    Without `groups`, Pets breeds get their species (cat/dog) and other labels no groups.
    """
    if groups is None and (groups := pets_groups(list(vocab))) is not None:
        group_name = PETS_GROUP_NAME
    return Manifest(arch, head, class_entries(list(vocab), groups), size, presize, list(mean), list(std),
                    group_name=(group_name or "group") if groups else None, **extra)
