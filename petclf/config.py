"""The one source of training defaults, and how they are layered.

Defaults live in `TrainConfig`; a YAML file (`--config FILE`) overrides them; command-line flags override
both.
Unknown or mistyped keys are an error, never silently ignored:

    cfg = resolve_config("my.yaml", epochs=2)   # defaults < my.yaml < epochs=2
    save_config(cfg, "exports/run/config.yaml")
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from petclf.errors import PetclfError

EXPORTS = Path("exports")  # default parent of run directories
# what predict, serve and report load: `petclf train` points it at its newest run
DEFAULT_MODEL = EXPORTS / "latest"

# Defaults of the commands that use a trained model (the training defaults are TrainConfig's fields, below).
TOPK = 5  # breeds listed per image by predict and the demo
PREDICT_BS = 32  # images per forward pass in `petclf predict`
REPORT_BS = 64  # images per forward pass in `petclf report`
REPORT_TOP_LOSSES = 9  # top-loss images the report shows, each with its Grad-CAM
REPORT_MIN_VAL = 1  # most_confused: smallest off-diagonal count the report lists (fastai's `min_val`)
# below this top-class probability the breed answer lists the likely ones (a bundle may set its own)
UNSURE_BELOW = 0.5
LIKELY_MAX = 3  # an unsure answer lists at most this many: the top two, and a third when it is likely enough
LIKELY_MIN_PROB = 0.1  # the third breed is listed only from this probability up
SERVE_HOST = "127.0.0.1"  # the demo listens on this machine only unless told otherwise
SERVE_PORT = 7860  # Gradio's usual port
DEFAULT_BS = 32  # training batch (per process) when --bs is not given, and the training part has room for it
MIN_STEPS = 4  # a batch size not given shrinks so that every epoch has at least this many steps
SYNTH_SET = (4, 20, 64, 0)  # `data synth`'s classes, images per class, px, seed: learnt in a minute
MIN_BS = 2  # fastai's head normalises each training batch (BatchNorm1d): one image is not a batch


class ConfigError(PetclfError):
    """A config file or flag that petclf cannot use."""


# ---------------------------------------------------------------------------------------------------- choices
# The command line lists these in --help; settings files are checked against the same lists.


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
    """How --data is read: auto detects; pets (<breed>_<n>.jpg), folders (DIR/<label>/), csv (--labels)."""

    auto = "auto"
    pets = "pets"
    folders = "folders"
    csv = "csv"


class Backend(str, Enum):
    """What runs the network to predict: auto is onnxruntime on CPU when model.onnx verifies, else torch."""

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
MAX_CONFIG_BYTES = 64 * 1024  # a settings file is a few hundred bytes; anything this big is not one
# settings that once did something: files (and old runs' config.yaml) that set them still load, with a warning
RETIRED = {"probe_c": "C is chosen by cross-validation",
           "probe_lr_scale": "the probe recipe no longer fine-tunes"}


def check_device(value: str) -> str:
    """`value` if it names a device petclf knows (auto, cpu, mps, cuda, cuda:N), else a one-line error."""
    if not DEVICE_RE.match(value):
        raise ConfigError(f"device must be one of {'|'.join(DEVICES)}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------ settings
# Each TrainConfig field carries all that is known about it in its metadata: the CLI flags, --help, the checks
# and the resume rule are all generated from it, so a new setting is one field here.


class Range(NamedTuple):
    """Allowed values of a numeric setting; None: unbounded at that end."""

    lo: float | None
    hi: float | None
    lo_ok: bool = True  # the bound itself is allowed
    hi_ok: bool = True

    def __str__(self) -> str:
        left = "(-inf" if self.lo is None else ("[" if self.lo_ok else "(") + f"{self.lo:g}"
        right = "inf)" if self.hi is None else f"{self.hi:g}" + ("]" if self.hi_ok else ")")
        return f"{left}, {right}"


DATA, MODEL, TRAINING, MACHINE, RUN = "Data", "Model", "Training", "Machine", "Run"  # --help's option panels


def setting(default: Any, doc: str, panel: str, *, short: str | None = None,
            choices: type[Enum] | None = None, bounds: Range | None = None,
            check: Callable[[Any], Any] | None = None, resume: bool = False, lr_find: bool = True,
            shown: str | None = None, metavar: str | None = None, path: bool = False) -> Any:
    """A TrainConfig field with its metadata: `doc` (its --help), `short` flag, allowed `choices` or `bounds`,
    a `check` of its value, whether `--resume` may change it, whether `petclf lr-find` takes it, the default
    `shown` in --help when it is not the value itself, and whether it names a `path`."""
    meta = dict(doc=doc, panel=panel, short=short, choices=choices, bounds=bounds, check=check, resume=resume,
                lr_find=lr_find, shown=shown, metavar=metavar, path=path)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as `config.yaml` beside every export."""

    data: str | None = setting(
        None, "Pets folder (DIR/images), a folder per class (DIR/<label>/, DIR/train|valid/<label>/) or the "
        "CSV's base folder.", DATA, short="-d", path=True,
        shown="data/oxford-iiit-pet, downloaded when missing")
    layout: str = setting("auto", "How --data is read: auto detects it; pets (<breed>_<n>.jpg), folders "
                          "(DIR/<label>/), csv (--labels).", DATA, choices=Layout)
    labels: str | None = setting(None, "CSV of file,label (optional split or is_valid), files relative to "
                                 "--data: the csv layout.", DATA, path=True)
    groups: str | None = setting(None, "CSV of label,<group name>: a second level (Pets: cat/dog built in).",
                                 DATA, path=True, lr_find=False)
    arch: str = setting("resnet34", "timm model name (resnet34: the fastbook anchor).", MODEL, short="-a")
    weights: str | None = setting(None, "Local timm state dict (.pth/.safetensors) instead of the hub, for "
                                  "air-gapped machines.", MODEL, path=True, shown="from the hub")
    pretrained: bool = setting(True, "Start from ImageNet weights (hub, hub cache or --weights).", MODEL)
    epochs: int = setting(4, "Epochs after unfreezing (fastai's fine_tune(epochs)).", TRAINING, short="-e",
                          bounds=Range(0, 10_000), lr_find=False)
    freeze_epochs: int = setting(1, "Epochs on the head alone before unfreezing.", TRAINING,
                                 bounds=Range(0, 10_000), lr_find=False)
    lr: float | None = setting(None, "Base learning rate.", TRAINING, bounds=Range(0, 10, lo_ok=False),
                               lr_find=False, shown="lr_find's suggestion")
    bs: int | None = setting(None, "Batch size (per process when distributed).", TRAINING,
                             bounds=Range(1, 65_536), shown=f"{DEFAULT_BS}, fewer on a small training part")
    size: int = setting(224, "Training crop size in px (aug_transforms size).", TRAINING,
                        bounds=Range(8, 4096))
    presize: int = setting(460, "Item resize before batch augmentation (fastbook presizing).", TRAINING,
                           bounds=Range(8, 8192))
    min_scale: float = setting(0.75, "Smallest crop scale of RandomResizedCrop in aug_transforms.", TRAINING,
                               bounds=Range(0, 1, lo_ok=False))
    split: str = setting("random", "Validation split: random (--valid-pct, --seed), official "
                         "(annotations/test.txt) or a FILE naming the validation images.", DATA,
                         metavar=f"[{'|'.join(SPLITS)}]")
    valid_pct: float = setting(0.2, "Validation share of the random split.", DATA,
                               bounds=Range(0, 1, lo_ok=False, hi_ok=False))
    seed: int = setting(42, "Seed of the split and the run.", DATA)
    device: str = setting("auto", "auto picks cuda > mps > cpu; cuda:N a GPU by its index.", MACHINE,
                          check=check_device, resume=True, metavar=f"[{'|'.join(DEVICES)}]")
    workers: int | None = setting(None, "DataLoader workers.", MACHINE, bounds=Range(0, 256), resume=True,
                                  shown="from the device and cores")
    out: str | None = setting(None, "Run folder; `latest` is updated only under exports/.", RUN, short="-o",
                              path=True, lr_find=False, shown="exports/<date>-<arch>")
    resume: str | None = setting(None, "Continue the run in this folder from its last checkpoint.", RUN,
                                 path=True, lr_find=False)
    recipe: str = setting("auto", "auto: probe below --small-data training images per class, fastbook "
                          "otherwise.", TRAINING, choices=Recipe)
    small_data: int = setting(50, "Median training images per class under which recipe auto trains the "
                              "probe.", TRAINING, bounds=Range(1, None))
    lr_mult: float = setting(100.0, "Head LR / lowest body LR after unfreezing (fastai fine_tune's lr_mult).",
                             TRAINING, bounds=Range(1, None), lr_find=False)
    probe_size: int = setting(384, "Probe recipe: feature resolution in px (the centre square resized to "
                              "it).", TRAINING, bounds=Range(8, 2048), lr_find=False)
    bn_freeze: str = setting("auto", "Fastbook recipe: keep the backbone's BatchNorm statistics frozen "
                             "(auto: off).", TRAINING, choices=Switch)
    lr_find_steps: int = setting(100, "Fastbook recipe: at most this many lr_find steps (fewer on small "
                                 "data).", TRAINING, bounds=Range(5, 10_000))
    precision: str = setting("auto", "auto: bf16 > fp16 on a GPU, fp32 on CPU and MPS.", MACHINE,
                             choices=Precision)
    threads: int | None = setting(None, "Torch CPU threads.", MACHINE, bounds=Range(1, 1024), resume=True,
                                  shown="every core this process may use")
    channels_last: str = setting("auto", "Train in the channels_last layout (auto: on for CUDA and CPU, off "
                                 "for MPS).", MACHINE, choices=Switch)
    log: str = setting("none", "Also log losses and metrics for TensorBoard (RUN/tb/; needs pip install "
                       "tensorboard).", RUN, choices=LogTo, resume=True, lr_find=False)
    cache: bool = setting(True, "Reuse cached image checks and probe features (`petclf cache info`); "
                          "--no-cache recomputes them all and writes none.", MACHINE, resume=True)
    keep_checkpoints: bool = setting(True, "Keep RUN/checkpoints/ (last.pt, best.safetensors) once the model is "
                                     "exported; --no-keep-checkpoints frees their disk.", RUN, resume=True,
                                     lr_find=False)

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] is not None:
                value = value.value if isinstance(value, Enum) else value
                if value not in {c.value for c in meta["choices"]}:
                    raise ConfigError(f"{f.name} must be one of {choices_text(f.name)}, got {value!r}")
                setattr(self, f.name, value)
            if meta["check"] is not None and value is not None:
                meta["check"](value)
            if meta["bounds"] is not None:
                check_range(f.name, value, meta["bounds"])
        if self.epochs + self.freeze_epochs < 1:
            raise ConfigError("epochs + freeze_epochs must be at least 1: a run that trains nothing exports "
                              "nothing")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all settings, in declaration order."""
        return dataclasses.asdict(self)


def settings() -> tuple[dataclasses.Field, ...]:
    """TrainConfig's fields, each with its metadata (see `setting`)."""
    return fields(TrainConfig)


def meta(name: str) -> Mapping[str, Any]:
    """What is known about the setting `name` (see `setting`)."""
    return next(f.metadata for f in settings() if f.name == name)


def choices_text(name: str) -> str:
    """The values a choice setting takes, as --help writes them: `auto|fastbook|probe`."""
    return "|".join(c.value for c in meta(name)["choices"])


def resumable() -> tuple[str, ...]:
    """The settings `--resume` may change: this machine's, never the recipe's."""
    return tuple(f.name for f in settings() if f.metadata["resume"])


def check_range(name: str, value: float | None, bounds: Range) -> None:
    """A one-line error unless `value` (when set) is a finite number within `bounds`."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # unset, or the type check names the problem
    lo, hi, lo_ok, hi_ok = bounds
    low = lo is None or (value >= lo if lo_ok else value > lo)
    high = hi is None or (value <= hi if hi_ok else value < hi)
    if not math.isfinite(value) or not (low and high):
        raise ConfigError(f"setting {name!r} must be a number in {bounds}, got {value!r}")


CHOICES = {f.name: f.metadata["choices"] for f in settings() if f.metadata["choices"]}  # setting -> its Enum
RANGES = {f.name: f.metadata["bounds"] for f in settings() if f.metadata["bounds"]}  # setting -> its Range


def fit_bs(bs: int | None, n_train: int, processes: int = 1) -> tuple[int, str | None]:
    """The training batch per process for `n_train` images over `processes`, and a line saying why it is not
    DEFAULT_BS (None when it is, or was set). The training loop drops a last partial batch, so a batch
    larger than a process's share would leave an epoch with no step: a set `bs` is refused then; one not set
    shrinks to the largest that gives MIN_STEPS steps an epoch."""
    share = n_train // processes
    each = f"{n_train} training images"
    if processes > 1:
        each += f" ({share} per process, {processes} processes)"
    if share < MIN_BS:
        raise ConfigError(f"the {each} are too few for one training batch of {MIN_BS} (BatchNorm needs two "
                          "images); add training photos"
                          + (" or use fewer processes" if processes > 1 else ""))
    fitted = min(DEFAULT_BS, max(MIN_BS, share // MIN_STEPS))
    if bs is not None and not MIN_BS <= bs <= share:
        why = ("one image is not a batch: fastai's head normalises over the batch" if bs < MIN_BS else
               "the last partial batch is dropped, so an epoch would have no step")
        raise ConfigError(f"--bs {bs} does not fit the {each}: {why}; pass --bs {fitted} or leave --bs out")
    if bs is not None or fitted == DEFAULT_BS:
        return bs or fitted, None
    return fitted, (f"batch size {fitted} instead of {DEFAULT_BS}: the {each} give {share // fitted} steps "
                    "an epoch (--bs sets it)")


def config_keys() -> list[str]:
    """Names of all settings."""
    return [f.name for f in fields(TrainConfig)]


def _check_keys(overrides: dict[str, Any], where: str) -> None:
    unknown = sorted(set(overrides) - set(config_keys()))
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(unknown)} "
                          f"(known: {', '.join(config_keys())})")


def setting_type(name: str) -> type:
    """The non-None type a setting is declared with (`float | None` -> float)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _coerce(name: str, value: Any) -> Any:
    """Check a value against the setting's declared type; ints are accepted where floats are expected."""
    kind = setting_type(name)
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
            raise ConfigError(f"config file {path} uses an explicit YAML tag ({event.tag}); write plain "
                              "values")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of settings; unknown keys are an error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is over {MAX_CONFIG_BYTES // 1024} KB; a settings file is a "
                          "few lines")
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
    _check_keys(_drop_retired(raw, path), str(path))
    return raw


def _drop_retired(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """`raw` without the RETIRED settings, saying in one line that they are ignored (old runs still load)."""
    old = [k for k in RETIRED if k in raw]
    if old and os.environ.get("RANK", "0") == "0":  # one line per run, not one per distributed process
        why = "; ".join(f"{k}: {RETIRED[k]}" for k in old)
        print(f"warning: {path} sets {', '.join(old)}, no longer used and ignored ({why})", file=sys.stderr)
    for k in old:
        del raw[k]
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
