"""A training run on disk: its folder, its checkpoints and where it stands, so `--resume` continues exactly
there.

    from petclf.run import RunState, load_checkpoint, prepare_run_dir, update_latest
    run_dir = prepare_run_dir(cfg)                     # exports/<date-time>-<arch>, refused if it holds a run
    ckpt = load_checkpoint(run_dir)                    # {"model", "opt", "state"}: tensors and plain data

Rank 0 writes every file (`on_main`); the other processes of a distributed run only read.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from petclf import distributed
from petclf.config import EXPORTS, TrainConfig, load_config_file, resolve_config, resumable
from petclf.errors import PetclfError
from petclf.io import save_state_dict, write_atomic
from petclf.progress import say as show
from petclf.runfiles import CKPT_DIR, RunDir

T = TypeVar("T")
MACHINE_KEYS = resumable()  # what `--resume` may change (marked on each TrainConfig field): not the recipe


# ---------------------------------------------------------------------------------------------------- rank 0


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run `fn` only on rank 0: every file a run writes goes through here."""
    return fn(*args, **kwargs) if distributed.is_main() else None


def say(msg: str) -> None:
    """The training side's one output channel: a line to stderr on rank 0, above any progress bar on screen.
    """
    if distributed.is_main():
        show(msg)


# ---------------------------------------------------------------------------------------------------- state


@dataclass
class Phase:
    """One fit_one_cycle call of the schedule."""

    name: str  # frozen | unfrozen
    epochs: int
    lr: tuple[float, float]  # (lowest body group, head group); equal for the frozen phase
    pct_start: float
    div: float


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint so `--resume` continues exactly there."""

    recipe: str = "fastbook"
    lr: float | None = None
    lr_find: dict | None = None  # {suggestion, seconds} or None when --lr was given
    probe: dict | None = None  # the probe recipe's result (CV estimate, C, timings): metrics.json's `probe`
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
    buf = io.BytesIO()
    opt = _plain(learn.opt.state_dict()) if learn.opt is not None else None
    model = distributed.unwrap(learn.model).state_dict()
    torch.save({"model": model, "opt": opt, "state": asdict(state)}, buf)
    write_atomic(RunDir(run_dir).last, buf.getvalue())


def load_checkpoint(run_dir: Path) -> dict:
    """The last checkpoint of a run (tensors and plain data only; no code is unpickled)."""
    path = RunDir(run_dir).last
    if not has_checkpoint(run_dir):
        raise PetclfError(f"nothing to resume in {run_dir}: {CKPT_DIR}/last.pt not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint is a user-facing problem
        raise PetclfError(f"cannot read checkpoint {path}: {type(e).__name__}") from None


def save_weights(model: nn.Module, path: Path) -> None:
    """Model weights as safetensors, atomically."""
    save_state_dict(distributed.unwrap(model).state_dict(), path)


# ---------------------------------------------------------------------------------------------------- run dir


def default_out(arch: str, now: datetime | None = None) -> Path:
    """exports/<date-time>-<arch>, unique."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    out = EXPORTS / f"{stamp}-{arch.replace('/', '_')}"
    n = 2
    while out.exists():
        out, n = EXPORTS / f"{stamp}-{arch.replace('/', '_')}-{n}", n + 1
    return out


def prepare_run_dir(cfg: TrainConfig) -> tuple[Path, bool]:
    """The run directory for a fresh run, created, and whether it existed before (empty). A folder that
    holds anything is refused: a run (finished or not) is never overwritten, and neither is anything of the
    user's."""
    out = Path(cfg.out) if cfg.out else default_out(cfg.arch)
    if out.exists() and not out.is_dir():
        raise PetclfError(f"--out must be a folder, not a file: {out}")
    existed = out.is_dir()
    if existed and any(out.iterdir()):
        if unstarted_run(out):
            say(f"{out} holds a run stopped before its first checkpoint; starting it again")
            return out, True
        if has_checkpoint(out) and not RunDir(out).metrics.exists():
            raise PetclfError(f"{out} holds an unfinished run: continue it with --resume {out}, or pass "
                              "another --out")
        if RunDir(out).manifest.exists():
            raise PetclfError(f"{out} already holds a trained model; pass another --out")
        raise PetclfError(f"--out {out} is a folder that already holds files; pass a new or empty folder "
                          f"(petclf never writes over files it did not make)")
    # the folder alone: config.yaml, written next, is what marks it as petclf's (`unstarted_run`)
    on_main(lambda: out.mkdir(parents=True, exist_ok=True))
    return out, existed


def has_checkpoint(run_dir: Path) -> bool:
    """True when the run saved a checkpoint `--resume` can continue from."""
    return RunDir(run_dir).last.is_file()


def unstarted_run(out: Path) -> bool:
    """True when `out` holds a run petclf set up that was stopped (SIGTERM, kill -9, a power cut) before its
    first checkpoint: its config.yaml names this very folder and there is no checkpoint. Nothing in it is
    worth keeping, and none of it is the user's (the config is the first file a run writes)."""
    if has_checkpoint(out) or not RunDir(out).config.is_file():
        return False
    try:
        saved = load_config_file(RunDir(out).config).get("out")
    except PetclfError:
        return False
    return isinstance(saved, str) and Path(saved).resolve() == out.resolve()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a job scheduler's stop, a container's shutdown) handled like Ctrl-C inside the
    block: the run keeps its last checkpoint and says how to continue. Only the main thread may set a
    handler; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def discarded_on_failure(run_dir: Path, fresh: bool, existed: bool = False) -> Iterator[None]:
    """If the block fails before a fresh run saved its first checkpoint, take back what the run wrote (the
    folder itself, or its contents when the user had made it empty), so a failed start leaves nothing
    half-made behind."""
    try:
        yield
    except BaseException:
        if fresh and distributed.is_main() and not has_checkpoint(run_dir):
            for child in run_dir.iterdir() if existed else []:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
        raise


def settings_given(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of `cfg` that differ from the defaults: what a caller of `train` chose."""
    default = TrainConfig()
    return {k: v for k, v in cfg.to_dict().items() if v != getattr(default, k)}


def resume_config(run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    """The saved config of `run_dir`, with this machine's `MACHINE_KEYS` from `given` (the settings the user
    typed: flags and config file). Any other setting in `given` must agree with the saved run, or it is
    refused: a silently ignored `--epochs` (or `--arch resnet34`, the default) would be a surprise."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        raise PetclfError(f"nothing to resume in {run_dir}: a run interrupted before its first checkpoint "
                          "keeps nothing; start it again with the same command, without --resume")
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise PetclfError(f"--resume {run_dir}: not a petclf run directory (config.yaml missing)")
    if run.metrics.is_file() and run.manifest.is_file():
        raise PetclfError(f"--resume {run_dir}: that run is already complete")
    saved = resolve_config(None, **load_config_file(run.config))
    machine = {k: given[k] for k in MACHINE_KEYS if k in given}
    resumed = replace(saved, resume=str(run_dir), out=str(run_dir), **machine)
    clash = [f"--{k.replace('_', '-')} {v} (the run has {getattr(resumed, k)})" for k, v in given.items()
             if k not in ("resume", "out", *MACHINE_KEYS) and v != getattr(resumed, k)]
    if given.get("out") is not None and Path(given["out"]).resolve() != run_dir.resolve():
        clash.append(f"--out {given['out']} (the run is in {run_dir})")
    if clash:
        raise PetclfError(f"--resume {run_dir} continues the run as it was set up; it cannot take "
                          f"{', '.join(clash)}. Only {', '.join('--' + k for k in MACHINE_KEYS)} may change")
    return resumed


LATEST_MAX_BYTES = 1024  # a `latest` file petclf writes (where symlinks fail) names one folder


def is_latest_pointer(latest: Path) -> bool:
    """True when `latest` is petclf's: a symlink, or a small file naming a sibling run folder (with
    model.json)."""
    if latest.is_symlink():
        return True
    if not latest.is_file() or latest.stat().st_size > LATEST_MAX_BYTES:
        return False
    try:
        name = latest.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    rel = Path(name)
    return (bool(name) and not rel.is_absolute() and ".." not in rel.parts
            and RunDir(latest.parent / rel).manifest.is_file())


def update_latest(run_dir: Path, where: Path | None = None) -> Path | None:
    """Point `<where>/latest` (default: beside the run) at `run_dir` atomically, by a relative symlink (a
    file naming it where symlinks fail). Anything named `latest` there that petclf did not make is left
    alone (None is returned, and a line says so)."""
    where = where or run_dir.parent
    latest = where / "latest"
    if (latest.exists() or latest.is_symlink()) and not is_latest_pointer(latest):
        say(f"left {latest} alone (it is not petclf's); the run is in {run_dir}")
        return None
    target = os.path.relpath(run_dir.resolve(), where.resolve())
    tmp = where / f".latest.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target, tmp, target_is_directory=True)
    except OSError:
        tmp.write_text(target + "\n")
    os.replace(tmp, latest)
    return latest
