"""The `fastbook` recipe: fastai's head, lr_find's valley, `fine_tune` semantics (head alone with
fit_one_cycle, then unfreeze and fit_one_cycle with discriminative LRs), a checkpoint after every epoch,
metrics on the validation split.

    recipe = FineTune(ctx)                       # ctx: `petclf.recipe.RunContext`
    plan_schedule(cfg, lr, pretrained)           # the phases as data
"""

from __future__ import annotations

import numpy as np

from petclf import distributed
from petclf.callbacks import BatchProgress, EpochEnd, EpochProgress, FreezeBN, log_callbacks
from petclf.config import TrainConfig
from petclf.lrfind import lr_find, lr_find_steps, plot_lr_find
from petclf.progress import RunClock, stage
from petclf.recipe import Recipe, not_a_pet_detector, register
from petclf.run import Phase, RunState, on_main, save_checkpoint
from petclf.runfiles import RunMetrics


def plan_schedule(cfg: TrainConfig, lr: float, pretrained: bool = True) -> list[Phase]:
    """fastai's fine_tune as data: head alone, then unfrozen with discriminative LRs.

    From random weights there is nothing to protect: one plain fit_one_cycle of `freeze_epochs + epochs` at
    `lr`.
    """
    if not pretrained:
        n = cfg.freeze_epochs + cfg.epochs
        return [Phase("unfrozen", n, (lr, lr), pct_start=0.25, div=25.0)] if n > 0 else []
    phases = []
    if cfg.freeze_epochs > 0:
        phases.append(Phase("frozen", cfg.freeze_epochs, (lr, lr), pct_start=0.99, div=25.0))
    if cfg.epochs > 0:
        top = lr / 2
        phases.append(Phase("unfrozen", cfg.epochs, (top / cfg.lr_mult, top), pct_start=0.3, div=5.0))
    return phases


def fit_phase(learn, phase: Phase, state: RunState, run_dir, total_epochs: int, cbs: list | None = None):
    """One fit_one_cycle, from `state.epoch` on (resume), with checkpoints and progress per epoch."""
    start = state.epoch
    global_start = sum(1 for h in state.history if h["phase"] != phase.name)
    progress = EpochProgress(phase, total_epochs, start, global_start)
    extra = [EpochEnd(state, phase, run_dir, start, global_start), progress, *(cbs or [])]
    try:
        with distributed.distrib_ctx(learn):
            learn.fit_one_cycle(phase.epochs, slice(*phase.lr) if phase.lr[0] != phase.lr[1] else phase.lr[1],
                                pct_start=phase.pct_start, div=phase.div, cbs=extra, start_epoch=start)
    finally:
        progress.close()  # an interrupted epoch's bar leaves the screen


def run_schedule(learn, phases: list[Phase], state: RunState, run_dir, bn_freeze: bool,
                 opt_state: dict | None = None, cbs: list | None = None) -> None:
    """Run the phases from `state.phase`/`state.epoch` on; `opt_state` restores the optimizer mid-phase."""
    extra = [FreezeBN(), *(cbs or [])] if bn_freeze else list(cbs or [])
    while state.phase < len(phases):
        phase = phases[state.phase]
        # the body frozen for the frozen phase, all trainable otherwise (fastai clears optimizer state here)
        learn.freeze() if phase.name == "frozen" else learn.unfreeze()
        if opt_state is not None:
            learn.opt.load_state_dict(opt_state)
            opt_state = None
        fit_phase(learn, phase, state, run_dir, sum(p.epochs for p in phases), extra)


def run_temperature(learn, cbs: list | None = None) -> dict:
    """The bundle's temperature, chosen on the validation outputs by `calibrate.choose_temperature`
    (cross-validated within them, kept only when it lowers the held-out NLL)."""
    from fastcore.basics import noop

    from petclf.calibrate import choose_temperature

    logits, targs = learn.get_preds(act=noop, cbs=cbs)
    return choose_temperature(logits.float().cpu().numpy(), targs.cpu().numpy())


@register
class FineTune(Recipe):
    """fastai's head and fine_tune schedule, lr_find unless --lr; measured on the validation split."""

    name = "fastbook"

    def head_spec(self) -> dict:
        """fastai's head."""
        from petclf.model import FASTAI_HEAD

        return dict(FASTAI_HEAD)

    def phases(self, lr: float) -> list[Phase]:
        """This run's schedule at `lr`."""
        return plan_schedule(self.cfg, lr, self.ctx.pretrained)

    def plan(self, clock: RunClock, learn, epochs_done: int) -> None:
        """lr_find's steps (when it will run), every epoch's training and validation batches, then the
        export."""
        cfg = self.cfg
        left = max(0, sum(p.epochs for p in self.phases(1.0)) - epochs_done)
        n_train, n_valid = len(learn.dls.train), len(learn.dls.valid)
        if cfg.lr is None and not epochs_done and not cfg.resume:
            clock.plan("train", lr_find_steps(n_train, cfg.lr_find_steps))
        clock.plan("train", left * n_train)
        clock.plan("valid", (left + 2) * n_valid)  # every epoch's, then the final metrics and the temperature
        clock.prior["valid"] = lambda r: r["train"] / 3 if "train" in r else None  # no backward pass
        super().plan(clock, learn, epochs_done)

    def start(self, learn) -> RunState:
        """lr_find unless --lr (its plot saved), then the first checkpoint."""
        state = RunState(recipe=self.name)
        if self.cfg.lr is None:
            found = lr_find(learn, self.cfg.lr_find_steps)
            state.lr, state.lr_find = found.suggestion, found.record()
            on_main(plot_lr_find, found, self.ctx.run.lr_find)
        else:
            state.lr = self.cfg.lr
        on_main(save_checkpoint, learn, state, self.ctx.run.root)
        return state

    def fit(self, learn, state: RunState, opt_state: dict | None, cbs: list) -> None:
        """The phases left, a checkpoint after every epoch (and TensorBoard's events with `--log
        tensorboard`)."""
        cbs = [*cbs, *log_callbacks(self.cfg, self.ctx.run.root)]
        bn_freeze = self.cfg.bn_freeze == "on"
        run_schedule(learn, self.phases(state.lr), state, self.ctx.run.root, bn_freeze, opt_state, cbs)

    def measure(self, learn, state: RunState) -> RunMetrics:
        """The final validation metrics and the temperature, two passes over the validation set under one
        stage."""
        with stage("final validation and temperature", total=2 * len(learn.dls.valid), kind="valid") as s:
            valid_loss, err, acc = (float(v) for v in learn.validate(cbs=[BatchProgress(s)]))
            calibration = run_temperature(learn, cbs=[BatchProgress(s)])
            s.info = f"temperature {calibration['temperature']:.3g}"  # the result is said once, at the end
        speed = round(state.train_images / state.train_seconds, 2) if state.train_seconds else None
        return RunMetrics(error_rate=err, accuracy=acc, valid_loss=valid_loss, history=state.history,
                          lr=state.lr, lr_find=state.lr_find, probe=state.probe,
                          train_seconds=round(state.train_seconds, 2), images_per_second=speed,
                          calibration=calibration)

    def fitted_detector(self, learn, state: RunState) -> dict:
        """Fitted on the validation photos' features, which the network never trained on."""
        from petclf.probefit import pooled_features

        data, vocab = self.ctx.data, list(learn.dls.vocab)
        items = [data.items[i] for i in data.valid_idx]
        y = np.array([vocab.index(data.labels[i]) for i in data.valid_idx], dtype=int)
        with stage("not-a-pet detector (features of the validation photos)", total=1, kind="detector") as s:
            x = pooled_features(distributed.unwrap(learn.model), items, self.preprocess())
            s.advance()
        return not_a_pet_detector(x, y, len(vocab), self.ctx.run.root, f"the {len(y)} validation photos, "
                                  "each scored against class means made without it")

    def fitted_open_set(self, state: RunState) -> dict:
        """Off: fine-tuning moved the features its ImageNet head read."""
        from petclf.openset import off

        return off("the backbone was fine-tuned: its ImageNet head no longer reads its features")
