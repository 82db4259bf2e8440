"""fastai callbacks of a petclf run: checkpoints after every epoch, progress, frozen BatchNorm, interruption.

    learn.fit_one_cycle(n, lr, cbs=[EpochEnd(state, phase, run_dir), EpochProgress(phase, epochs_left)])
"""

from __future__ import annotations

import time
from pathlib import Path

from fastai.callback.core import Callback, TrainEvalCallback
from fastai.learner import Recorder
from torch import nn

from petclf import distributed
from petclf.progress import is_terminal, rich_bar
from petclf.run import CKPT_DIR, Phase, RunState, log, on_main, save_checkpoint, save_weights


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
        self.phase, self.epochs_left = phase, epochs_left
        self.start_epoch, self.global_start = start_epoch, global_start
        self.terminal = is_terminal() if terminal is None else terminal
        self.estimated, self.bar = False, None

    def before_fit(self):
        if self.terminal and distributed.is_main():
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
