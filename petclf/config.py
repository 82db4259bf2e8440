"""The one source of training defaults, and how they are layered.

Defaults live in `TrainConfig`; a YAML file (`--config FILE`) overrides them; command-line flags override both.
Unknown or mistyped keys are an error, never silently ignored:

    cfg = resolve_config("my.yaml", epochs=2)   # defaults < my.yaml < epochs=2
    save_config(cfg, "exports/run/config.yaml")
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from petclf.errors import PetclfError

EXPORTS = Path("exports")  # default parent of run directories
DEFAULT_MODEL = EXPORTS / "latest"  # what predict, serve and report load: `petclf train` points it at its newest run

# Defaults of the commands that use a trained model (the training defaults are TrainConfig's fields, below).
TOPK = 5  # breeds listed per image by predict and the demo
PREDICT_BS = 32  # images per forward pass in `petclf predict`
REPORT_BS = 64  # images per forward pass in `petclf report`
REPORT_TOP_LOSSES = 9  # top-loss images the report shows, each with its Grad-CAM
REPORT_MIN_VAL = 1  # most_confused: smallest off-diagonal count the report lists (fastai's `min_val`)
SERVE_HOST = "127.0.0.1"  # the demo listens on this machine only unless told otherwise
SERVE_PORT = 7860  # Gradio's usual port


class ConfigError(PetclfError):
    """A config file or flag that petclf cannot use."""


# ---------------------------------------------------------------------------------------------------- choices
# The command line lists these in --help and completes them; settings files are checked against the same lists.


class Recipe(str, Enum):
    """Training recipe: auto picks probe below `small_data` training images per class."""

    auto = "auto"
    fastbook = "fastbook"
    probe = "probe"


class Precision(str, Enum):
    """Arithmetic the network trains in: auto is bf16 > fp16 on a GPU, fp32 on CPU and MPS."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Switch(str, Enum):
    """A setting that is on, off, or decided by the machine."""

    auto = "auto"
    on = "on"
    off = "off"


class Backend(str, Enum):
    """What runs the network for prediction: auto is onnxruntime on CPU when model.onnx verifies, else torch."""

    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class OutputFormat(str, Enum):
    """How `petclf predict` writes its results."""

    table = "table"
    csv = "csv"
    json = "json"


DEVICES = ("auto", "cpu", "mps", "cuda", "cuda:N")  # what --device takes (N: a GPU index)
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
SPLITS = ("random", "official", "FILE")  # what --split takes (FILE: a file naming the validation images)
CHOICES: dict[str, type[Enum]] = {"recipe": Recipe, "precision": Precision, "channels_last": Switch,
                                  "bn_freeze": Switch}


def check_device(value: str) -> str:
    """`value` if it names a device petclf knows (auto, cpu, mps, cuda, cuda:N), else a one-line error."""
    if not DEVICE_RE.match(value):
        raise ConfigError(f"device must be one of {'|'.join(DEVICES)}, got {value!r}")
    return value


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.yaml` beside every export."""

    data: str | None = None  # Pets folder (or any folder of `<breed>_<n>.jpg`); None: data/oxford-iiit-pet or download
    arch: str = "resnet34"  # any timm model name; resnet34 is the fastbook anchor
    weights: str | None = None  # local timm state dict (.pth/.safetensors) instead of the hub, for air-gapped machines
    pretrained: bool = True  # start from ImageNet weights (hub, hub cache or `weights`)
    epochs: int = 4  # epochs after unfreezing (fastai's fine_tune(epochs))
    freeze_epochs: int = 1  # epochs on the head alone before unfreezing
    lr: float | None = None  # base learning rate; None runs lr_find and uses its suggestion
    bs: int = 32  # batch size (per process when distributed)
    size: int = 224  # training crop size in pixels (aug_transforms size)
    presize: int = 460  # item-level resize before batch augmentation (fastbook presizing)
    min_scale: float = 0.75  # smallest crop scale of RandomResizedCrop in aug_transforms
    split: str = "random"  # random | official | path to a file naming the validation images
    valid_pct: float = 0.2  # validation share for the random split
    seed: int = 42  # seeds the split and the run
    device: str = "auto"  # auto (cuda > mps > cpu) | cuda | cuda:N | mps | cpu
    workers: int | None = None  # DataLoader workers; None picks from the core count
    out: str | None = None  # run directory; None: exports/<date>-<arch>
    resume: str | None = None  # run directory to continue from its last checkpoint
    recipe: str = "auto"  # auto | fastbook | probe; auto: probe below `small_data` training images per class
    small_data: int = 50  # median training images per class under which `auto` uses the probe recipe
    lr_mult: float = 100.0  # head LR / lowest body LR after unfreezing (fastai fine_tune's lr_mult)
    probe_c: float = 1.0  # inverse L2 strength of the probe's logistic regression (on standardised features)
    probe_lr_scale: float = 0.1  # probe recipe: fine-tune head LR = lr_find suggestion x this (gentle; head is trained)
    bn_freeze: str = "auto"  # auto (on for the probe recipe) | on | off: keep backbone BatchNorm statistics frozen
    lr_find_steps: int = 100  # at most this many lr_find steps (fewer on small data; stops on divergence)
    precision: str = "auto"  # auto (bf16 > fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16
    threads: int | None = None  # torch CPU threads; None: every core this process may use
    channels_last: str = "auto"  # auto (on for CUDA and CPU, off for MPS) | on | off: the layout the network trains in

    def __post_init__(self) -> None:
        for name, kind in CHOICES.items():
            value = getattr(self, name)
            value = value.value if isinstance(value, Enum) else value
            if value not in {c.value for c in kind}:
                raise ConfigError(f"{name} must be one of {'|'.join(c.value for c in kind)}, got {value!r}")
            setattr(self, name, value)
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all settings, in declaration order."""
        return dataclasses.asdict(self)


def config_keys() -> list[str]:
    """Names of all settings."""
    return [f.name for f in fields(TrainConfig)]


def _check_keys(overrides: dict[str, Any], where: str) -> None:
    unknown = sorted(set(overrides) - set(config_keys()))
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(unknown)} (known: {', '.join(config_keys())})")


def _field_type(name: str) -> type:
    """The non-None type a setting is declared with (`float | None` -> float)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _coerce(name: str, value: Any) -> Any:
    """Check a value against the setting's declared type; ints are accepted where floats are expected."""
    kind = _field_type(name)
    if value is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"setting {name!r} must be {kind.__name__}, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    _check_keys(raw, str(path))
    return raw


def resolve_config(config_file: str | Path | None = None, **flags: Any) -> TrainConfig:
    """Defaults, then `config_file`, then `flags` that are not None."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_config_file(config_file))
    given = {k: v for k, v in flags.items() if v is not None}
    _check_keys(given, "flags")
    values.update(given)
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
