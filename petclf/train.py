"""Fine-tune a pretrained timm backbone on Pets with fastai: lr_find, fit_one_cycle, a linear probe, export.

    petclf train --data data/oxford-iiit-pet                  # or `make train`; resnet34, lr_find, fine-tune
    petclf train --data data/synth --arch resnet18 --size 64 --no-pretrained --epochs 3
    petclf train --resume exports/20250101-120000-resnet34    # continue an interrupted run
    petclf lr-find --data data/oxford-iiit-pet                # plot + suggestion only

    from petclf.config import TrainConfig
    from petclf.train import train
    result = train(TrainConfig(data="data/synth", arch="resnet18", size=64, presize=80, pretrained=False))
    result.learn, result.run_dir, result.metrics

Recipes. `fastbook`: fastai's head, lr_find's valley, `fine_tune` semantics (head alone with fit_one_cycle, then
unfreeze and fit_one_cycle with discriminative LRs). `probe` (small data): a logistic regression on the frozen
backbone's pooled features initialises a linear head, the backbone's BatchNorm statistics stay frozen, the whole
network is fine-tuned gently, and whichever of probe and fine-tune has the lower validation error is kept.
`auto` picks `probe` when there are fewer than `small_data` training images per class.

Every file lands in the run directory; `exports/latest` (beside it) is switched to the run only once it is complete.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from statistics import median
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch import nn

from petclf import distributed
from petclf.bundle import atomic_path, save_state_dict, write_atomic
from petclf.config import EXPORTS, TrainConfig, load_config_file, resolve_config, save_config
from petclf.errors import PetclfError

T = TypeVar("T")
CKPT_DIR = "checkpoints"  # inside the run directory: last.pt (resumable), best.safetensors, probe.safetensors
FALLBACK_LR = 2e-3  # fastai fine_tune's base_lr, used when lr_find cannot suggest one
RUN_FILES = ("model.safetensors", "model.json", "config.yaml", "metrics.json", "lr_find.png", "export.pkl",
             "data_report.json")


# ---------------------------------------------------------------------------------------------------- device


def pick_device(requested: str, cuda: bool, mps: bool) -> str:
    """`auto` -> cuda > mps > cpu; an explicit choice is checked against what exists."""
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested.startswith("cuda") and not cuda:
        raise PetclfError(f"--device {requested}: no CUDA GPU is available (use --device cpu or auto)")
    if requested == "mps" and not mps:
        raise PetclfError("--device mps: Apple MPS is not available (use --device cpu or auto)")
    if requested != "cpu" and not requested.startswith(("cuda", "mps")):
        raise PetclfError(f"--device must be auto, cpu, mps, cuda or cuda:N, got {requested!r}")
    return requested


def machine_device(requested: str = "auto") -> str:
    """`pick_device` against what this machine has (training, and the report's evaluation)."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return pick_device(requested, torch.cuda.is_available(), mps)


def pick_precision(device: str, requested: str, bf16_ok: bool) -> str:
    """`auto`: bf16 on a GPU that has it, else fp16 on GPU; fp32 on CPU and MPS."""
    if requested not in ("auto", "fp32", "fp16", "bf16"):
        raise PetclfError(f"--precision must be auto, fp32, fp16 or bf16, got {requested!r}")
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "fp32"
    return "bf16" if bf16_ok else "fp16"


def pick_channels_last(device: str, requested: str) -> bool:
    """`auto`: channels_last on CUDA (tensor cores) and CPU (oneDNN: resnet34 trained 1.2-1.4 x, EfficientNet-Lite0
    1.7 x faster on 2 cores, BENCHMARKS.md); not on MPS, where its support is uneven."""
    if requested not in ("auto", "on", "off"):
        raise PetclfError(f"--channels-last must be auto, on or off, got {requested!r}")
    return requested == "on" or (requested == "auto" and not device.startswith("mps"))


def pick_threads(cores: int, requested: int | None = None) -> int:
    """Torch intra-op threads: `requested`, else every core this process may use (at least 1)."""
    return max(1, requested if requested else cores)


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Compute(NamedTuple):
    """Where and how the network runs: resolved once per run from the config and this machine."""

    device: str
    precision: str
    channels_last: bool


def resolve_device(cfg: TrainConfig) -> Compute:
    """Device, precision and layout for this machine, threads set on CPU; printed by the caller."""
    device = machine_device(cfg.device)
    if device == "cuda" and distributed.is_distributed():
        device = f"cuda:{distributed.local_rank()}"  # one GPU per process
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    precision = pick_precision(device, cfg.precision, bf16)
    channels_last = pick_channels_last(device, cfg.channels_last)
    if device == "cpu":  # processes on one machine share its cores
        torch.set_num_threads(pick_threads(available_cores() // distributed.local_world_size(), cfg.threads))
    return Compute(device, precision, channels_last)


# ---------------------------------------------------------------------------------------------------- rank 0


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run `fn` only on rank 0: every file a run writes goes through here."""
    return fn(*args, **kwargs) if distributed.is_main() else None


def log(msg: str) -> None:
    """One line to stderr, rank 0 only."""
    if distributed.is_main():
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- the plan


@dataclass
class Phase:
    """One fit_one_cycle call of the schedule."""

    name: str  # frozen | unfrozen
    epochs: int
    lr: tuple[float, float]  # (lowest body group, head group); equal for the frozen phase
    pct_start: float
    div: float


def plan_schedule(cfg: TrainConfig, lr: float, recipe: str, pretrained: bool = True) -> list[Phase]:
    """fastai's fine_tune as data: head alone (skipped after a probe), then unfrozen with discriminative LRs.

    From random weights there is nothing to protect: one plain fit_one_cycle of `freeze_epochs + epochs` at `lr`.
    """
    if not pretrained:
        n = cfg.freeze_epochs + cfg.epochs
        return [Phase("unfrozen", n, (lr, lr), pct_start=0.25, div=25.0)] if n > 0 else []
    phases = []
    if cfg.freeze_epochs > 0 and recipe != "probe":
        phases.append(Phase("frozen", cfg.freeze_epochs, (lr, lr), pct_start=0.99, div=25.0))
    if cfg.epochs > 0:
        top = lr / 2 if recipe != "probe" else lr * cfg.probe_lr_scale
        phases.append(Phase("unfrozen", cfg.epochs, (top / cfg.lr_mult, top), pct_start=0.3, div=5.0))
    return phases


def choose_recipe(cfg: TrainConfig, class_counts: dict[str, int], pretrained: bool) -> str:
    """`fastbook` or `probe`: `auto` probes below `small_data` training images per class (pretrained only)."""
    if cfg.recipe not in ("auto", "fastbook", "probe"):
        raise PetclfError(f"--recipe must be auto, fastbook or probe, got {cfg.recipe!r}")
    if cfg.recipe != "auto":
        return cfg.recipe
    small = bool(class_counts) and median(class_counts.values()) < cfg.small_data
    return "probe" if small and pretrained else "fastbook"


def train_class_counts(labels: list[str], train_idx: list[int]) -> dict[str, int]:
    """Training images per class."""
    from collections import Counter

    return dict(Counter(labels[i] for i in train_idx))


# ---------------------------------------------------------------------------------------------------- state


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint so `--resume` continues exactly there."""

    recipe: str = "fastbook"
    lr: float | None = None
    lr_find: dict | None = None  # {suggestion, seconds} or None when --lr was given
    probe: dict | None = None  # {error_rate, valid_loss, seconds} after a probe
    phase: int = 0  # index of the phase to run next
    epoch: int = 0  # next epoch within that phase
    history: list[dict] = field(default_factory=list)
    best_error: float | None = None
    train_seconds: float = 0.0
    train_images: int = 0
    done: bool = False


def _plain(obj: Any) -> Any:
    """Numpy scalars and fastai L's -> Python types, so `torch.load(weights_only=True)` reads them back."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "L":
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_checkpoint(learn, state: RunState, run_dir: Path) -> None:
    """Model, optimizer and RunState in one file, written atomically (temp file, then rename)."""
    import io

    buf = io.BytesIO()
    opt = _plain(learn.opt.state_dict()) if learn.opt is not None else None
    torch.save({"model": distributed.unwrap(learn.model).state_dict(), "opt": opt, "state": asdict(state)}, buf)
    write_atomic(run_dir / CKPT_DIR / "last.pt", buf.getvalue())


def load_checkpoint(run_dir: Path) -> dict:
    """The last checkpoint of a run (tensors and plain data only; no code is unpickled)."""
    path = run_dir / CKPT_DIR / "last.pt"
    if not path.is_file():
        raise PetclfError(f"nothing to resume in {run_dir}: {CKPT_DIR}/last.pt not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint is a user-facing problem
        raise PetclfError(f"cannot read checkpoint {path}: {type(e).__name__}") from None


def save_weights(model: nn.Module, path: Path) -> None:
    """Model weights as safetensors, atomically."""
    save_state_dict(distributed.unwrap(model).state_dict(), path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into `model` in place."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))


# ---------------------------------------------------------------------------------------------------- callbacks


def _callbacks():
    """fastai's Callback base and the events order, imported late (fastai is slow to import)."""
    from fastai.callback.core import Callback, TrainEvalCallback
    from fastai.learner import Recorder

    return Callback, TrainEvalCallback, Recorder


Callback, TrainEvalCallback, Recorder = _callbacks()


class FreezeBN(Callback):
    """Keep the backbone's BatchNorm layers in eval mode: small batches of few images would overwrite ImageNet stats."""

    run_after = TrainEvalCallback

    def before_train(self):
        for m in distributed.unwrap(self.learn.model)[0].modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class EpochEnd(Callback):
    """After each real epoch: append to the history, write the last (and maybe best) checkpoint."""

    order = Recorder.order + 1

    def __init__(self, state: RunState, phase: Phase, run_dir: Path, start_epoch: int = 0, global_start: int = 0):
        self.state, self.phase, self.run_dir = state, phase, run_dir
        self.start_epoch, self.global_start = start_epoch, global_start

    def before_epoch(self):
        self.t0 = time.monotonic()

    def after_epoch(self):
        if self.epoch < self.start_epoch or not self.learn.recorder.values:
            return  # fastai's SkipToEpoch still fires after_epoch for skipped epochs
        train_loss, valid_loss, err, acc = (float(v) for v in self.learn.recorder.values[-1][:4])
        seconds = time.monotonic() - self.t0
        st = self.state
        st.history.append({"epoch": self.global_start + self.epoch, "phase": self.phase.name,
                           "train_loss": train_loss, "valid_loss": valid_loss, "error_rate": err, "accuracy": acc,
                           "seconds": round(seconds, 3)})
        st.train_seconds += seconds
        st.train_images += len(self.learn.dls.train.dataset)
        st.epoch = self.epoch + 1
        if st.epoch >= self.phase.epochs:
            st.phase, st.epoch = st.phase + 1, 0
        if st.best_error is None or err < st.best_error:
            st.best_error = err
            on_main(save_weights, self.learn.model, self.run_dir / CKPT_DIR / "best.safetensors")
        on_main(save_checkpoint, self.learn, st, self.run_dir)


class StopAfter(Callback):
    """Raise KeyboardInterrupt after `n` training batches, as Ctrl-C would (tests use it to interrupt a run)."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def after_batch(self):
        if self.learn.training:
            self.seen += 1
            if self.seen >= self.n:
                raise KeyboardInterrupt


def _fmt_secs(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


class EpochProgress(Callback):
    """fastprogress's replacement: a rich bar per epoch + a row per epoch on a terminal, one plain line when piped.

    After the first few batches it prints the estimated time per epoch and for the rest of the run.
    """

    order = Recorder.order + 2
    ESTIMATE_AFTER = 3  # batches timed before estimating (the first one is warm-up)

    def __init__(self, phase: Phase, epochs_left: int, start_epoch: int = 0, global_start: int = 0,
                 terminal: bool | None = None):
        from petclf.progress import is_terminal

        self.phase, self.epochs_left = phase, epochs_left
        self.start_epoch, self.global_start = start_epoch, global_start
        self.terminal = is_terminal() if terminal is None else terminal
        self.estimated, self.bar = False, None

    def before_fit(self):
        if self.terminal and distributed.is_main():
            from petclf.progress import rich_bar

            self.bar = rich_bar()
            self.bar.start()

    def before_epoch(self):
        self.n_batches, self.t_first = 0, None
        if self.bar is not None and self.epoch >= self.start_epoch:
            n = len(self.learn.dls.train) + len(self.learn.dls.valid)
            self.task = self.bar.add_task(f"{self.phase.name} epoch {self.global_start + self.epoch}", total=n)

    def after_batch(self):
        self.n_batches += 1
        if self.bar is not None:
            self.bar.advance(self.task)
        if not self.training or self.estimated:
            return
        k = max(1, min(self.ESTIMATE_AFTER, len(self.learn.dls.train) - 1))  # tiny data: fewer timed batches
        if self.n_batches == 1:
            self.t_first = time.monotonic()
        elif self.n_batches == k + 1 or len(self.learn.dls.train) == 1:
            per_batch = (time.monotonic() - self.t_first) / k
            self.estimate(per_batch * (len(self.learn.dls.train) + len(self.learn.dls.valid) / 3))

    def estimate(self, per_epoch: float) -> None:
        """Print the estimated time per epoch and for the rest of the run, once."""
        log(f"estimated {_fmt_secs(per_epoch)} per epoch, about {_fmt_secs(per_epoch * self.epochs_left)} "
            f"for the {self.epochs_left} epoch(s) left")
        self.estimated = True

    def after_epoch(self):
        if self.epoch < self.start_epoch or not self.learn.recorder.values:
            return
        if self.bar is not None:
            self.bar.remove_task(self.task)
        train_loss, valid_loss, err, acc = (float(v) for v in self.learn.recorder.values[-1][:4])
        line = (f"epoch {self.global_start + self.epoch:>3} {self.phase.name:<8} train_loss {train_loss:.4f} "
                f"valid_loss {valid_loss:.4f} error_rate {err:.4f} accuracy {acc:.4f} "
                f"{self.learn.recorder.log[-1] if self.learn.recorder.log else ''}")
        if self.bar is not None:
            self.bar.console.print(line)
        else:
            log(line)

    def after_fit(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ---------------------------------------------------------------------------------------------------- learner


def build_dataloaders(cfg: TrainConfig, pets, device: str):
    """fastbook's presizing DataLoaders with the backbone's normalisation stats put in explicitly."""
    from petclf.data import make_dataloaders
    from petclf.model import norm_stats

    mean, std = norm_stats(cfg.arch)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    return make_dataloaders(pets, bs=cfg.bs, size=cfg.size, presize=cfg.presize, min_scale=cfg.min_scale,
                            mean=mean, std=std, device=torch.device(device), workers=workers, seed=cfg.seed)


def default_workers(device: str, cores: int | None = None) -> int:
    """DataLoader workers: on CPU none (a worker steals cores from compute: benchmarks/bench_train.py measured the
    loop slower with 1 worker than with 0 on 2 cores); on GPU every core up to 8."""
    cores = cores or available_cores()
    return 0 if device == "cpu" else min(8, cores)


def head_spec(recipe: str) -> dict[str, Any]:
    """The head recorded in the manifest: a linear head for the probe recipe, fastai's otherwise."""
    from petclf.model import FASTAI_HEAD

    return {"kind": "linear"} if recipe == "probe" else dict(FASTAI_HEAD)


def build_learner(cfg: TrainConfig, dls, recipe: str, compute: Compute, path: Path | None = None):
    """A fastai Learner over `make_network` (as vision_learner builds it), with petclf's progress instead of
    fastprogress; `path` is where fastai may put temporary files (lr_find's weights), never the current folder."""
    import fastai.callback.all  # noqa: F401 - patches Learner with fit_one_cycle, lr_find, to_fp16, ...
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy, error_rate
    from fastai.vision.learner import default_split
    from fastcore.basics import noop

    from petclf.model import make_network

    pretrained = cfg.pretrained or cfg.weights is not None
    net = make_network(cfg.arch, dls.c, head=head_spec(recipe), pretrained=cfg.pretrained, weights=cfg.weights)
    learn = Learner(dls, net, loss_func=CrossEntropyLossFlat(), splitter=default_split,
                    metrics=[error_rate, accuracy], path=path, model_dir=".")
    learn.remove_cb(ProgressCallback)
    learn.logger = noop
    if pretrained:
        learn.freeze()
    if compute.channels_last:
        learn.add_cb(ChannelsLast())
    if compute.precision in ("fp16", "bf16"):
        learn.to_bf16() if compute.precision == "bf16" else learn.to_fp16()
    return learn


# ---------------------------------------------------------------------------------------------------- lr_find


@dataclass
class LRFind:
    """What lr_find found: the suggestion (valley), the curve, and the seconds it took."""

    suggestion: float
    lrs: list[float]
    losses: list[float]
    seconds: float
    fallback: bool = False


def lr_find_steps(n_batches: int, max_steps: int = 100) -> int:
    """Fewer steps on small data (two passes over the training set, at least 20), at most `max_steps`."""
    return int(min(max_steps, max(20, 2 * n_batches)))


def lr_find(learn, max_steps: int = 100) -> LRFind:
    """fastai's lr_find (stops on divergence), bounded in steps; falls back to 2e-3 if no valley can be read."""
    t0 = time.monotonic()
    num_it = lr_find_steps(len(learn.dls.train), max_steps)
    with learn.no_logging():
        try:
            sugg = learn.lr_find(num_it=num_it, show_plot=False)
            lr, fallback = float(sugg.valley), False
        except (IndexError, ValueError, RuntimeError):
            lr, fallback = FALLBACK_LR, True
    if not math.isfinite(lr) or lr <= 0:
        lr, fallback = FALLBACK_LR, True
    lrs = [float(x) for x in learn.recorder.lrs]
    losses = [float(x) for x in learn.recorder.losses]
    return LRFind(lr, lrs, losses, time.monotonic() - t0, fallback)


def plot_lr_find(res: LRFind, path: Path) -> Path:
    """Loss vs learning rate (log scale) with the suggestion marked, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = len(res.lrs)
    keep = slice(0, n - 5 if n > 15 else n)  # fastai's plot drops the diverging tail too
    ax.plot(res.lrs[keep], res.losses[keep])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.axvline(res.suggestion, color="tab:red", linestyle="--")
    ax.set_title(f"lr_find: suggestion {res.suggestion:.2e}" + (" (fallback)" if res.fallback else ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- probe


@torch.no_grad()
def pooled_features(learn, dl, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels): the input of the linear head's last layer, for every item of `dl` (eval mode)."""
    model = learn.model.eval()
    feats, ys = [], []
    for xb, yb in dl:
        if flip:
            xb = torch.flip(xb, dims=[3])
        feats.append(model[1][:-1](model[0](xb)).float().cpu())
        ys.append(yb.cpu())
    return torch.cat(feats).numpy(), torch.cat(ys).numpy()


def fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features; returns (weight, bias) for the raw features."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=3000).fit((x - mu) / sd, y)
    w = np.zeros((n_classes, x.shape[1]), np.float32)
    b = np.full(n_classes, -1e4, np.float32)  # classes absent from training are never predicted
    coef, icpt = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # sklearn stores one row for a binary problem
        coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    w[clf.classes_] = coef / sd
    b[clf.classes_] = icpt - (coef / sd) @ mu
    return w, b


def run_probe(learn, c: float = 1.0) -> dict:
    """Initialise the linear head by a logistic regression on pooled features (train set, + flips, no augmentation)."""
    t0 = time.monotonic()
    dls = learn.dls
    train_dl = dls.test_dl(dls.train.items, with_labels=True)
    x1, y = pooled_features(learn, train_dl)
    x2, _ = pooled_features(learn, train_dl, flip=True)
    w, b = fit_probe(np.concatenate([x1, x2]), np.concatenate([y, y]), dls.c, c)
    lin = learn.model[1][-1]
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    valid_loss, err, _ = (float(v) for v in learn.validate())
    return {"error_rate": err, "valid_loss": valid_loss, "seconds": round(time.monotonic() - t0, 2)}


# ---------------------------------------------------------------------------------------------------- the schedule


def fit_phase(learn, phase: Phase, state: RunState, run_dir: Path, epochs_left: int, cbs: list | None = None):
    """One fit_one_cycle, from `state.epoch` on (resume), with checkpoints and progress per epoch."""
    start = state.epoch
    global_start = sum(1 for h in state.history if h["phase"] != phase.name)
    extra = [EpochEnd(state, phase, run_dir, start, global_start),
             EpochProgress(phase, epochs_left, start, global_start), *(cbs or [])]
    with distributed.distrib_ctx(learn):
        learn.fit_one_cycle(phase.epochs, slice(*phase.lr) if phase.lr[0] != phase.lr[1] else phase.lr[1],
                            pct_start=phase.pct_start, div=phase.div, cbs=extra, start_epoch=start)


def set_phase_trainable(learn, phase: Phase) -> None:
    """Freeze the body for the frozen phase, unfreeze everything otherwise (fastai clears optimizer state here)."""
    learn.freeze() if phase.name == "frozen" else learn.unfreeze()


def run_schedule(learn, phases: list[Phase], state: RunState, run_dir: Path, bn_freeze: bool,
                 opt_state: dict | None = None, cbs: list | None = None) -> None:
    """Run the phases from `state.phase`/`state.epoch` on; `opt_state` restores the optimizer mid-phase."""
    extra = [FreezeBN(), *(cbs or [])] if bn_freeze else list(cbs or [])
    while state.phase < len(phases):
        phase = phases[state.phase]
        set_phase_trainable(learn, phase)
        if opt_state is not None:
            learn.opt.load_state_dict(opt_state)
            opt_state = None
        left = phase.epochs - state.epoch + sum(p.epochs for p in phases[state.phase + 1:])
        fit_phase(learn, phase, state, run_dir, left, extra)


# ---------------------------------------------------------------------------------------------------- run dir


def default_out(arch: str, now: datetime | None = None) -> Path:
    """exports/<date-time>-<arch>, unique."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    out = EXPORTS / f"{stamp}-{arch.replace('/', '_')}"
    n = 2
    while out.exists():
        out, n = EXPORTS / f"{stamp}-{arch.replace('/', '_')}-{n}", n + 1
    return out


MACHINE_KEYS = ("device", "workers", "threads")  # what `--resume` may change: this machine's, not the recipe's


def prepare_run_dir(cfg: TrainConfig) -> Path:
    """The run directory for a fresh run: created; refused if it already holds a run."""
    out = Path(cfg.out) if cfg.out else default_out(cfg.arch)
    if (out / CKPT_DIR / "last.pt").exists() and not (out / "metrics.json").exists():
        raise PetclfError(f"{out} holds an unfinished run: continue it with --resume {out}, or pass another --out")
    if (out / "model.json").exists():
        raise PetclfError(f"{out} already holds a trained model; pass another --out")
    if out.exists() and not out.is_dir():
        raise PetclfError(f"--out must be a folder, not a file: {out}")
    on_main(lambda: (out / CKPT_DIR).mkdir(parents=True, exist_ok=True))
    return out


def resume_config(run_dir: Path, cfg: TrainConfig) -> TrainConfig:
    """The saved config of `run_dir`, with this machine's `MACHINE_KEYS`; other settings in `cfg` that are not
    defaults must agree with the saved run, or it is refused (a silently ignored `--epochs` would be a surprise)."""
    if not (run_dir / "config.yaml").is_file():
        raise PetclfError(f"--resume {run_dir}: not a petclf run directory (config.yaml missing)")
    if (run_dir / "metrics.json").is_file() and (run_dir / "model.json").is_file():
        raise PetclfError(f"--resume {run_dir}: that run is already complete")
    saved = resolve_config(None, **load_config_file(run_dir / "config.yaml"))
    resumed = replace(saved, resume=str(run_dir), out=str(run_dir), **{k: getattr(cfg, k) for k in MACHINE_KEYS})
    default = TrainConfig()
    clash = [f"--{k.replace('_', '-')} {v} (the run has {getattr(resumed, k)})" for k, v in cfg.to_dict().items()
             if k not in ("resume", "out") and v != getattr(default, k) and v != getattr(resumed, k)]
    if cfg.out is not None and Path(cfg.out).resolve() != run_dir.resolve():
        clash.append(f"--out {cfg.out} (the run is in {run_dir})")
    if clash:
        raise PetclfError(f"--resume {run_dir} continues the run as it was set up; it cannot take "
                          f"{', '.join(clash)}. Only {', '.join('--' + k for k in MACHINE_KEYS)} may change")
    return resumed


def update_latest(run_dir: Path) -> Path:
    """Point `<parent>/latest` at `run_dir` atomically (a symlink; a file naming it where symlinks fail)."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(run_dir.name, tmp, target_is_directory=True)
    except OSError:
        tmp.write_text(run_dir.name + "\n")
    if latest.is_dir() and not latest.is_symlink():
        tmp.unlink()
        raise PetclfError(f"{latest} is a real folder; cannot point it at the new run")
    os.replace(tmp, latest)
    return latest


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What `train` returns: the trained Learner, where its files are, and its metrics.json content."""

    learn: Any
    run_dir: Path
    metrics: dict


def final_metrics(learn, state: RunState) -> dict:
    """metrics.json: final validation numbers, per-epoch history, LR, lr_find and timing."""
    valid_loss, err, acc = (float(v) for v in learn.validate())
    return {"error_rate": err, "accuracy": acc, "valid_loss": valid_loss, "history": state.history,
            "lr": state.lr, "lr_find": state.lr_find, "recipe": state.recipe, "probe": state.probe,
            "train_seconds": round(state.train_seconds, 2),
            "images_per_second": round(state.train_images / state.train_seconds, 2) if state.train_seconds else None}


def keep_better(learn, state: RunState, run_dir: Path) -> str:
    """Probe recipe: if the probe alone beat the fine-tuned network on validation, restore it. Returns the winner."""
    probe_file = run_dir / CKPT_DIR / "probe.safetensors"
    if state.recipe != "probe" or state.probe is None or not probe_file.is_file():
        return "fine-tune"
    _, err, _ = (float(v) for v in learn.validate())
    if state.probe["error_rate"] < err or not state.history:
        load_weights(learn.model, probe_file)
        return "probe"
    return "fine-tune"


def export_run(learn, cfg: TrainConfig, pets, run_dir: Path, metrics: dict) -> None:
    """Bundle (weights + manifest), export.pkl and metrics.json; then the run is complete."""
    from petclf.bundle import make_manifest, write_bundle
    from petclf.model import norm_stats

    mean, std = norm_stats(cfg.arch)
    extra = {"metrics": {k: metrics[k] for k in ("error_rate", "accuracy", "valid_loss")},
             "trained_at": datetime.now().astimezone().isoformat(timespec="seconds"),
             "data": {"root": str(pets.root), "split": cfg.split,
                      "sizes": {"train": len(pets.train_idx), "valid": len(pets.valid_idx)}},
             "temperature": 1.0, "recipe": metrics["recipe"]}
    manifest = make_manifest(cfg.arch, head_spec(metrics["recipe"]["name"]), list(learn.dls.vocab), cfg.size,
                             cfg.presize, mean, std, **extra)
    write_bundle(learn.model, run_dir, manifest)
    export_onnx_quietly(run_dir)
    with atomic_path(run_dir / "export.pkl") as tmp:  # absolute: fastai joins a relative name onto learn.path
        learn.export(tmp)
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=1))


def export_onnx_quietly(run_dir: Path) -> None:
    """model.onnx + its checksum file beside the bundle (`load_model` prefers it on CPU); a failure only logs."""
    from petclf.onnx import export_onnx, match_summary

    try:
        info = export_onnx(run_dir)
    except Exception as e:  # noqa: BLE001 - the run is good without ONNX; torch serves it
        log(f"ONNX export skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "predict/serve will use torch")
        return
    log(f"wrote {info['file']} ({match_summary(info)})")


# ---------------------------------------------------------------------------------------------------- train


def start_state(learn, cfg: TrainConfig, recipe: str, run_dir: Path) -> RunState:
    """A fresh run: probe (small data), then lr_find unless --lr, plot saved; a first checkpoint."""
    state = RunState(recipe=recipe)
    if recipe == "probe":
        state.probe = run_probe(learn, cfg.probe_c)
        on_main(save_weights, learn.model, run_dir / CKPT_DIR / "probe.safetensors")
        log(f"linear probe: valid error {state.probe['error_rate']:.4f} in {state.probe['seconds']:.0f} s")
    if cfg.lr is None:
        found = lr_find(learn, cfg.lr_find_steps)
        state.lr = found.suggestion
        state.lr_find = {"suggestion": found.suggestion, "seconds": round(found.seconds, 2),
                         "fallback": found.fallback}
        on_main(plot_lr_find, found, run_dir / "lr_find.png")
        log(f"lr_find: suggestion {found.suggestion:.2e} ({found.seconds:.0f} s, {len(found.lrs)} steps)")
    else:
        state.lr = cfg.lr
    on_main(save_checkpoint, learn, state, run_dir)
    return state


def restore(learn, ckpt: dict) -> tuple[RunState, dict | None]:
    """Model weights and RunState from a checkpoint; the optimizer state is returned for `run_schedule`."""
    learn.model.load_state_dict(ckpt["model"])
    return RunState(**ckpt["state"]), ckpt.get("opt")


def describe(cfg: TrainConfig, compute: Compute, recipe: str, pets) -> str:
    """The one line printed before training starts."""
    device, precision = compute.device, compute.precision
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    layout = ", channels_last" if compute.channels_last else ""
    weights = cfg.weights or ("ImageNet (timm hub)" if cfg.pretrained else "random init")
    n = distributed.world_size()
    procs = (f"; {n} processes, batch {cfg.bs} per process = {n * cfg.bs} global, LR not scaled"
             if n > 1 else "")
    return (f"device {device} ({precision}{layout}{threads}); {cfg.arch} from {weights}; recipe {recipe}; "
            f"{len(pets.train_idx)} train / {len(pets.valid_idx)} valid images, {len(pets.vocab)} classes{procs}")


def train(cfg: TrainConfig, cbs: list | None = None) -> TrainResult:
    """Run (or, with `cfg.resume`, continue) a training run and write the whole run directory."""
    from petclf.data import load_pets

    distributed.init_process_group()  # only when launched as several processes (accelerate launch, torchrun)
    if cfg.resume:
        run_dir = Path(cfg.resume)
        cfg = resume_config(run_dir, cfg)
    compute = resolve_device(cfg)
    # rank 0 downloads and verifies first; the others then find the data and the verification cache ready
    pets = distributed.main_first(
        lambda: load_pets(cfg.data, split=cfg.split, valid_pct=cfg.valid_pct, seed=cfg.seed))
    if not cfg.resume:
        # rank 0 names (and checks) the run directory; every rank then uses that name
        run_dir = Path(distributed.broadcast(str(prepare_run_dir(cfg)) if distributed.is_main() else None))
        cfg = replace(cfg, out=str(run_dir))
        on_main(save_config, cfg, run_dir / "config.yaml")
    on_main(pets.report.save, run_dir)
    pretrained = cfg.pretrained or cfg.weights is not None
    ckpt = load_checkpoint(run_dir) if cfg.resume else None
    recipe = ckpt["state"]["recipe"] if ckpt else choose_recipe(
        cfg, train_class_counts(pets.labels, pets.train_idx), pretrained)
    log(describe(cfg, compute, recipe, pets))
    dls = build_dataloaders(cfg, pets, compute.device)
    learn = distributed.main_first(  # rank 0 fills the hub cache before the others read it
        lambda: build_learner(cfg, dls, recipe, compute, path=run_dir / CKPT_DIR))
    if ckpt:
        state, opt_state = restore(learn, ckpt)
        log(f"resuming {run_dir} at phase {state.phase}, epoch {state.epoch} ({len(state.history)} epochs done)")
    else:
        # probe and lr_find run once, on rank 0; its weights reach the others when DDP wraps the model
        state = None
        if distributed.is_main():
            with distributed.this_process_only():
                state = start_state(learn, cfg, recipe, run_dir)
        state, opt_state = distributed.broadcast(state), None
    phases = plan_schedule(cfg, state.lr, recipe, pretrained)
    bn_freeze = cfg.bn_freeze == "on" or (cfg.bn_freeze == "auto" and recipe == "probe")
    try:
        run_schedule(learn, phases, state, run_dir, bn_freeze, opt_state, cbs)
    except KeyboardInterrupt:
        log(f"interrupted; the last complete epoch is saved: petclf train --resume {run_dir}")
        raise
    return finish(learn, cfg, pets, run_dir, state)


def finish(learn, cfg: TrainConfig, pets, run_dir: Path, state: RunState) -> TrainResult:
    """Pick the better of probe and fine-tune, export, and point `latest` at the run (rank 0; others get metrics)."""
    state.done = True
    if not distributed.is_main():
        return TrainResult(learn, run_dir, distributed.broadcast(None))
    n = distributed.world_size()
    with distributed.this_process_only():
        winner = keep_better(learn, state, run_dir)
        metrics = final_metrics(learn, state)
        metrics["recipe"] = {"name": state.recipe, "kept": winner}
        metrics["processes"] = {"count": n, "bs_per_process": cfg.bs, "global_bs": n * cfg.bs}
        export_run(learn, cfg, pets, run_dir, metrics)
        update_latest(run_dir)
    log(f"valid error_rate {metrics['error_rate']:.4f} (kept {winner}); run directory {run_dir}")
    return TrainResult(learn, run_dir, distributed.broadcast(metrics))


def run_lr_find(cfg: TrainConfig, out: Path | None = None) -> tuple[LRFind, Path]:
    """`petclf lr-find`: build data and learner as `train` would, run lr_find, save the plot."""
    from petclf.data import load_pets

    compute = resolve_device(cfg)
    pets = load_pets(cfg.data, split=cfg.split, valid_pct=cfg.valid_pct, seed=cfg.seed)
    recipe = choose_recipe(cfg, train_class_counts(pets.labels, pets.train_idx),
                           cfg.pretrained or cfg.weights is not None)
    log(describe(cfg, compute, recipe, pets))
    with tempfile.TemporaryDirectory() as tmp:
        dls = build_dataloaders(cfg, pets, compute.device)
        learn = build_learner(cfg, dls, recipe, compute, path=Path(tmp))
        found = lr_find(learn, cfg.lr_find_steps)
    out = Path(out or cfg.out or EXPORTS)
    return found, plot_lr_find(found, out / "lr_find.png")
