"""A run folder's files by name (`RunDir`) and its metrics.json as a typed record (`RunMetrics`), on the
ground floor so training, the report and the predictor all read them the same way.

    from petclf.runfiles import RunDir, RunMetrics
    run = RunDir(Path("exports/latest"))
    run.metrics, run.manifest, run.last            # metrics.json, model.json, checkpoints/last.pt
    m = RunMetrics.read(run.metrics)               # a bad key: one line naming the file
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from petclf.errors import PetclfError

CKPT_DIR = "checkpoints"  # inside the run directory: last.pt (resumable), best.safetensors


@dataclass(frozen=True)
class RunDir:
    """Where each file of a run lives: the one place their names are spelled."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.yaml", doc="the resolved settings, written first")
    checkpoints = property(lambda self: self.root / CKPT_DIR, doc="last.pt and best.safetensors")
    last = property(lambda self: self.root / CKPT_DIR / "last.pt", doc="the resumable checkpoint")
    best = property(lambda self: self.root / CKPT_DIR / "best.safetensors", doc="the best epoch's weights")
    metrics = property(lambda self: self.root / "metrics.json", doc="`RunMetrics`; written last")
    oof = property(lambda self: self.root / "oof.json", doc="the probe's out-of-fold predictions")
    lr_find = property(lambda self: self.root / "lr_find.png", doc="lr_find's plot")
    weights = property(lambda self: self.root / "model.safetensors", doc="the bundle's weights")
    manifest = property(lambda self: self.root / "model.json", doc="the bundle's manifest")
    onnx = property(lambda self: self.root / "model.onnx", doc="the ONNX graph beside the bundle")
    export_pkl = property(lambda self: self.root / "export.pkl", doc="fastai's Learner.export")
    examples = property(lambda self: self.root / "examples", doc="photos the demo offers")
    data_report = property(lambda self: self.root / "data_report.json", doc="what the data check found")
    tb = property(lambda self: self.root / "tb", doc="TensorBoard's event files (`--log tensorboard`)")


NUMBER = (int, float)


@dataclass
class RunMetrics:
    """metrics.json: the run's error (validation split or cross-validation estimate), loss, history, timing,
    and the entries the bundle's manifest repeats (recipe, calibration, not-a-pet detector, open set)."""

    error_rate: float
    accuracy: float
    valid_loss: float
    estimate: str | None = None  # how the error was measured, when not on a validation split (the probe)
    fold_errors: list | None = None
    fold_error_std: float | None = None
    log_loss: float | None = None
    history: list = field(default_factory=list)  # one entry per epoch
    lr: float | None = None
    lr_find: dict | None = None
    recipe: dict | str | None = None  # {"name": ...}: the bundle's `recipe` (a bare name in older runs)
    probe: dict | None = None  # the probe recipe's result
    train_seconds: float | None = None
    images_per_second: float | None = None
    calibration: dict | None = None
    processes: dict | None = None
    not_a_pet: dict | None = None
    open_set: dict | None = None

    def to_json(self) -> dict[str, Any]:
        """metrics.json's content: the keys runs have always written (the probe-only ones only when set)."""
        optional = ("estimate", "fold_errors", "fold_error_std", "log_loss")
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.name in optional and getattr(self, f.name) is None)}

    @classmethod
    def from_json(cls, data: Any, where: str = "metrics.json") -> RunMetrics:
        """The record from metrics.json's content, checked: a missing or wrong-typed key is one line naming
        `where`."""
        if not isinstance(data, dict):
            raise PetclfError(f"{where}: not a JSON object")
        kept = {}
        for f in fields(cls):
            value = data.get(f.name)
            required = f.name in ("error_rate", "accuracy", "valid_loss")
            if value is None:
                if required:
                    raise PetclfError(f"{where}: the key {f.name!r} is missing")
                continue
            if not isinstance(value, _TYPES[f.name]) or isinstance(value, bool):
                kind = _word(_TYPES[f.name])
                raise PetclfError(f"{where}: {f.name!r} is a {type(value).__name__}, not a {kind}")
            kept[f.name] = value
        return cls(**kept)

    @classmethod
    def read(cls, path: Path) -> RunMetrics:
        """A run's metrics.json, checked (`from_json`)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise PetclfError(f"cannot read {path}: {type(e).__name__}") from None
        return cls.from_json(data, str(path))


_TYPES: dict[str, tuple[type, ...]] = {
    "error_rate": NUMBER, "accuracy": NUMBER, "valid_loss": NUMBER, "estimate": (str,),
    "fold_errors": (list,), "fold_error_std": NUMBER, "log_loss": NUMBER, "history": (list,), "lr": NUMBER,
    "lr_find": (dict,),
    "recipe": (dict, str), "probe": (dict,), "train_seconds": NUMBER, "images_per_second": NUMBER,
    "calibration": (dict,), "processes": (dict,), "not_a_pet": (dict,), "open_set": (dict,)}


def _word(types: tuple[type, ...]) -> str:
    """A JSON type in words, for the error line."""
    names = {str: "string", list: "list", dict: "object"}
    return "number" if types == NUMBER else " or ".join(names[t] for t in types)
