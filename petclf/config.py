"""The one source of training defaults, and how they are layered.

Defaults live in `TrainConfig`; a YAML file (`--config FILE`) overrides them; command-line flags override both.
Unknown or mistyped keys are an error, never silently ignored:

    cfg = resolve_config("my.yaml", epochs=2)   # defaults < my.yaml < epochs=2
    save_config(cfg, "exports/run/config.yaml")
"""

from __future__ import annotations

import dataclasses
import math
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
UNSURE_BELOW = 0.5  # below this top-class probability the breed answer lists the likely ones (a bundle may set its own)
LIKELY_MAX = 3  # an unsure answer lists at most this many breeds: the top two, and a third when it is likely enough
LIKELY_MIN_PROB = 0.1  # the third breed is listed only from this probability up
SERVE_HOST = "127.0.0.1"  # the demo listens on this machine only unless told otherwise
SERVE_PORT = 7860  # Gradio's usual port
DEFAULT_BS = 32  # training batch (per process) when --bs is not given, and the training part has room for it
MIN_STEPS = 4  # a batch size not given shrinks so that every epoch has at least this many steps
MIN_BS = 2  # fastai's head normalises each training batch (BatchNorm1d): one image is not a batch


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


class Layout(str, Enum):
    """How --data is read: auto detects; pets (<breed>_<n>.jpg), folders (DIR/<label>/), csv (--labels FILE)."""

    auto = "auto"
    pets = "pets"
    folders = "folders"
    csv = "csv"


class Backend(str, Enum):
    """What runs the network for prediction: auto is onnxruntime on CPU when model.onnx verifies, else torch."""

    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class LogTo(str, Enum):
    """Where a training run also logs its losses and metrics: none, or TensorBoard (the run folder's tb/)."""

    none = "none"
    tensorboard = "tensorboard"


class OutputFormat(str, Enum):
    """How `petclf predict` writes its results."""

    table = "table"
    csv = "csv"
    json = "json"


DEVICES = ("auto", "cpu", "mps", "cuda", "cuda:N")  # what --device takes (N: a GPU index)
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
SPLITS = ("random", "official", "FILE")  # what --split takes (FILE: a file naming the validation images)
CHOICES: dict[str, type[Enum]] = {"recipe": Recipe, "precision": Precision, "channels_last": Switch,
                                  "bn_freeze": Switch, "layout": Layout, "log": LogTo}
MAX_CONFIG_BYTES = 64 * 1024  # a settings file is a few hundred bytes; anything this big is not one
# (lowest, highest, lowest allowed itself, highest allowed itself) of every numeric setting; None: unbounded there
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (0, 10_000, True, True), "freeze_epochs": (0, 10_000, True, True), "lr": (0, 10, False, True),
    "bs": (1, 65_536, True, True), "size": (8, 4096, True, True), "presize": (8, 8192, True, True),
    "min_scale": (0, 1, False, True), "valid_pct": (0, 1, False, False), "workers": (0, 256, True, True),
    "small_data": (1, None, True, True), "lr_mult": (1, None, True, True), "probe_c": (0, None, False, True),
    "probe_lr_scale": (0, None, False, True), "probe_size": (8, 2048, True, True),
    "lr_find_steps": (5, 10_000, True, True),
    "threads": (1, 1024, True, True)}


def check_device(value: str) -> str:
    """`value` if it names a device petclf knows (auto, cpu, mps, cuda, cuda:N), else a one-line error."""
    if not DEVICE_RE.match(value):
        raise ConfigError(f"device must be one of {'|'.join(DEVICES)}, got {value!r}")
    return value


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.yaml` beside every export."""

    data: str | None = None  # Pets folder, a folder per class or a CSV's base; None: data/oxford-iiit-pet or download
    layout: str = "auto"  # auto | pets | folders | csv: how `data` is read (auto: detected; `labels` means csv)
    labels: str | None = None  # csv layout: a `file,label[,split|is_valid]` CSV, files relative to `data`
    groups: str | None = None  # a `label,<group name>` CSV: a second level (Pets has cat/dog built in)
    arch: str = "resnet34"  # any timm model name; resnet34 is the fastbook anchor
    weights: str | None = None  # local timm state dict (.pth/.safetensors) instead of the hub, for air-gapped machines
    pretrained: bool = True  # start from ImageNet weights (hub, hub cache or `weights`)
    epochs: int = 4  # epochs after unfreezing (fastai's fine_tune(epochs))
    freeze_epochs: int = 1  # epochs on the head alone before unfreezing
    lr: float | None = None  # base learning rate; None runs lr_find and uses its suggestion
    bs: int | None = None  # batch size (per process when distributed); None: DEFAULT_BS, fewer on small data
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
    probe_size: int = 384  # probe recipe: feature resolution (centre square resized to it; the bundle's input size)
    probe_c: float = 1.0  # unused since C is chosen by cross-validation; kept so settings files that set it load
    probe_lr_scale: float = 0.1  # unused: the probe recipe no longer fine-tunes; kept so settings files load
    bn_freeze: str = "auto"  # fastbook recipe: on | off | auto (off) keeps backbone BatchNorm statistics frozen
    lr_find_steps: int = 100  # fastbook recipe: at most this many lr_find steps (fewer on small data)
    precision: str = "auto"  # auto (bf16 > fp16 on GPU, fp32 on CPU) | fp32 | fp16 | bf16
    threads: int | None = None  # torch CPU threads; None: every core this process may use
    channels_last: str = "auto"  # auto (on for CUDA and CPU, off for MPS) | on | off: the layout the network trains in
    log: str = "none"  # none | tensorboard: also log losses and metrics for TensorBoard in the run folder's tb/
    cache: bool = True  # reuse cached image verdicts and probe features (petclf.featcache); False recomputes all

    def __post_init__(self) -> None:
        for name, kind in CHOICES.items():
            value = getattr(self, name)
            value = value.value if isinstance(value, Enum) else value
            if value not in {c.value for c in kind}:
                raise ConfigError(f"{name} must be one of {'|'.join(c.value for c in kind)}, got {value!r}")
            setattr(self, name, value)
        check_device(self.device)
        for name, bounds in RANGES.items():
            check_range(name, getattr(self, name), *bounds)
        if self.epochs + self.freeze_epochs < 1:
            raise ConfigError("epochs + freeze_epochs must be at least 1: a run that trains nothing exports nothing")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all settings, in declaration order."""
        return dataclasses.asdict(self)


def check_range(name: str, value: float | None, lo: float | None, hi: float | None, lo_ok: bool = True,
                hi_ok: bool = True) -> None:
    """A one-line error unless `value` (when set) is a finite number within [lo, hi] (or open at an end)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # unset, or the type check names the problem
    low = lo is None or (value >= lo if lo_ok else value > lo)
    high = hi is None or (value <= hi if hi_ok else value < hi)
    if not math.isfinite(value) or not (low and high):
        left = "(-inf" if lo is None else ("[" if lo_ok else "(") + f"{lo:g}"
        right = "inf)" if hi is None else f"{hi:g}" + ("]" if hi_ok else ")")
        raise ConfigError(f"setting {name!r} must be a number in {left}, {right}, got {value!r}")


def fit_bs(bs: int | None, n_train: int, processes: int = 1) -> tuple[int, str | None]:
    """The training batch per process for `n_train` images over `processes`, and a line saying why it is not
    DEFAULT_BS (None when it is, or was set). The training loop drops a last partial batch, so a batch larger than a
    process's share would leave an epoch with no step: a set `bs` is refused then; one not set shrinks to the
    largest that gives MIN_STEPS steps an epoch."""
    share = n_train // processes
    each = f"{n_train} training images" + (f" ({share} per process, {processes} processes)" if processes > 1 else "")
    if share < MIN_BS:
        raise ConfigError(f"the {each} are too few for one training batch of {MIN_BS} (BatchNorm needs two images); "
                          "add training photos" + (" or use fewer processes" if processes > 1 else ""))
    fitted = min(DEFAULT_BS, max(MIN_BS, share // MIN_STEPS))
    if bs is not None and not MIN_BS <= bs <= share:
        why = ("one image is not a batch: fastai's head normalises over the batch" if bs < MIN_BS else
               "the last partial batch is dropped, so an epoch would have no step")
        raise ConfigError(f"--bs {bs} does not fit the {each}: {why}; pass --bs {fitted} or leave --bs out")
    if bs is not None or fitted == DEFAULT_BS:
        return bs or fitted, None
    return fitted, (f"batch size {fitted} instead of {DEFAULT_BS}: the {each} give {share // fitted} steps an "
                    "epoch (--bs sets it)")


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
    if kind is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"setting {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _refuse_references(text: str, path: Path) -> None:
    """Settings are plain values: YAML anchors, aliases and explicit tags are refused before anything is built
    (aliases let 300 bytes expand to gigabytes: the "billion laughs")."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError(f"config file {path} uses YAML anchors or aliases; write plain values")
        implicit = getattr(event, "implicit", True)  # (plain, quoted) for scalars, a bool for collections
        if getattr(event, "tag", None) and not (implicit[0] if isinstance(implicit, tuple) else implicit):
            raise ConfigError(f"config file {path} uses an explicit YAML tag ({event.tag}); write plain values")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES // 1024} KB; a settings file is a few lines")
    try:
        text = path.read_text()
        _refuse_references(text, path)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text") from None
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


def read_run_config(path: str | Path) -> TrainConfig | None:
    """The settings a run saved (its config.yaml) as a TrainConfig, checked like any settings file; None when
    the run has none (no `petclf train`). Read typed, not as a raw dict: `seed: 0` is 0."""
    path = Path(path)
    return resolve_config(path) if path.is_file() else None


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML."""
    path = Path(path)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
