"""fastai callbacks of a petclf run: checkpoints after every epoch, progress, frozen BatchNorm, interruption.

    learn.fit_one_cycle(n, lr, cbs=[EpochEnd(state, phase, run_dir), EpochProgress(phase, total_epochs)])
"""

from __future__ import annotations

import time
from pathlib import Path

from fastai.callback.core import Callback, TrainEvalCallback
from fastai.learner import Recorder
from torch import nn

from petclf import distributed
from petclf.config import TrainConfig
from petclf.errors import PetclfError
from petclf.progress import Stage
from petclf.run import Phase, RunState, on_main, save_checkpoint, save_weights
from petclf.runfiles import RunDir


class FreezeBN(Callback):
    """Keep the backbone's BatchNorm layers in eval mode: small batches of few images would overwrite
    ImageNet stats."""

    run_after = TrainEvalCallback

    def before_train(self):
        for m in distributed.unwrap(self.learn.model)[0].modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class EpochEnd(Callback):
    """After each real epoch: append to the history, write the last (and maybe best) checkpoint."""

    order = Recorder.order + 1

    def __init__(self, state: RunState, phase: Phase, run_dir: Path, start_epoch: int = 0,
                 global_start: int = 0):
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
        st.history.append({"epoch": self.global_start + self.epoch + 1, "phase": self.phase.name,
                           "train_loss": train_loss, "valid_loss": valid_loss, "error_rate": err,
                           "accuracy": acc, "seconds": round(seconds, 3)})
        st.train_seconds += seconds
        st.train_images += len(self.learn.dls.train.dataset)
        st.epoch = self.epoch + 1
        if st.epoch >= self.phase.epochs:
            st.phase, st.epoch = st.phase + 1, 0
        if st.best_error is None or err < st.best_error:
            st.best_error = err
            on_main(save_weights, self.learn.model, RunDir(self.run_dir).best)
        on_main(save_checkpoint, self.learn, st, self.run_dir)


class BatchProgress(Callback):
    """Advance a progress `Stage` after every batch, with fastai's running (smoothed) loss while training."""

    order = Recorder.order + 2

    def __init__(self, stage: Stage | None):
        self.stage = stage

    def after_batch(self):
        if self.stage is not None:
            self.stage.advance(info=f"loss {float(self.learn.smooth_loss):.4f}" if self.training else None)


class LRFindWatch(BatchProgress):
    """lr_find's progress, and each batch's own loss (fastai records only the smoothed one): the noise they
    show tells a real curve from a flat one."""

    def __init__(self, stage: Stage | None):
        super().__init__(stage)
        self.raw: list[float] = []

    def after_batch(self):
        if self.training:
            self.raw.append(float(self.learn.loss.detach()))
            super().after_batch()


class EpochProgress(Callback):
    """fastprogress's replacement: per epoch a stage "epoch k/N phase" (a rich bar with the running loss on
    a terminal) ending in one line of metrics; every batch feeds the run clock (train and valid batches
    apart)."""

    order = Recorder.order + 2

    def __init__(self, phase: Phase, total_epochs: int, start_epoch: int = 0, global_start: int = 0,
                 terminal: bool | None = None):
        self.phase, self.total_epochs = phase, total_epochs
        self.start_epoch, self.global_start = start_epoch, global_start
        self.terminal, self.stage = terminal, None

    def title(self) -> str:
        """'epoch 3/5 unfrozen': 1-based, counted over the whole run (the numbers metrics.json records)."""
        return f"epoch {self.global_start + self.epoch + 1}/{self.total_epochs} {self.phase.name}"

    def before_epoch(self):
        if self.epoch >= self.start_epoch:
            n = len(self.learn.dls.train) + len(self.learn.dls.valid)
            self.stage = Stage(self.title(), n, "train", quiet=not distributed.is_main(),
                               terminal=self.terminal).start()

    def before_validate(self):
        if self.stage is not None:
            self.stage.switch(f"{self.title()} validating", "valid")

    def after_batch(self):
        if self.stage is not None:
            self.stage.advance(info=f"loss {float(self.learn.smooth_loss):.4f}" if self.training else None)

    def after_epoch(self):
        if self.stage is None:
            return
        st, self.stage = self.stage, None
        if not self.learn.recorder.values:
            st.drop()
            return
        train_loss, valid_loss, err, acc = (float(v) for v in self.learn.recorder.values[-1][:4])
        st.name = self.title()
        st.info = (f"train_loss {train_loss:.4f} valid_loss {valid_loss:.4f} error_rate {err:.4f} "
                   f"accuracy {acc:.4f}")
        st.stop()

    def close(self):
        """Take the bar off the screen after an interruption (fastai calls no after_fit then)."""
        if self.stage is not None:
            self.stage.drop()
            self.stage = None


def check_logging(cfg: TrainConfig) -> None:
    """One line naming the package to install when `--log tensorboard` cannot work here."""
    if cfg.log == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise PetclfError("--log tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'petclf[tensorboard]')")


def log_callbacks(cfg: TrainConfig, run_dir: Path) -> list:
    """fastai's TensorBoardCallback writing losses, LRs and metrics to the run folder's tb/ (rank 0 writes).
    """
    if cfg.log != "tensorboard":
        return []
    from fastai.callback.tensorboard import TensorBoardCallback

    return [TensorBoardCallback(log_dir=str(RunDir(run_dir).tb), trace_model=False, log_preds=False)]
