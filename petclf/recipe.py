"""The recipe seam: what a way of training (`FineTune`, `Probe`) must say, chosen once per run by name.

    from petclf.recipe import pick_recipe
    recipe = pick_recipe(cfg, compute, data, run)   # chosen once, over the run's facts (`RunContext`)
    learn = recipe.build()                          # DataLoaders at the recipe's size, the Learner
    state, opt_state = recipe.begin(learn, ckpt)    # resume, or the recipe's fresh start on rank 0
    recipe.fit(learn, state, opt_state, cbs)        # epochs (fine-tune), or nothing left to do (probe)
    metrics = recipe.metrics(learn, state)          # `RunMetrics`, with record, detector and open set

A recipe registers itself (`@register`) under the name `--recipe` and checkpoints use for it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median
from typing import Any, ClassVar

import torch

from petclf import distributed
from petclf.config import TrainConfig, fit_bs
from petclf.device import Compute, default_workers
from petclf.errors import PetclfError
from petclf.preprocess import Preprocess
from petclf.progress import RunClock, current_clock, stage
from petclf.run import RunState, on_main, say
from petclf.runfiles import RunDir, RunMetrics

EXPORT_GUESS_S, ONNX_GUESS_S = 3.0, 5.0  # the estimate's guesses for export and the ONNX check till timed


@dataclass(frozen=True)
class RunContext:
    """The facts of one run, worked out once and handed to its recipe."""

    cfg: TrainConfig
    compute: Compute
    data: Any  # the verified, split `LabelledImages` (listed once)
    run: RunDir
    pretrained: bool  # the backbone starts from trained weights (hub or --weights)
    mean: list[float]  # the backbone's normalisation stats
    std: list[float]


def starts_pretrained(cfg: TrainConfig) -> bool:
    """True when the backbone starts from trained weights (ImageNet from the hub, or a --weights file)."""
    return cfg.pretrained or cfg.weights is not None


def choose_recipe(cfg: TrainConfig, class_counts: dict[str, int], pretrained: bool) -> str:
    """`fastbook` or `probe`: `auto` probes below `small_data` training images per class (pretrained only)."""
    if cfg.recipe != "auto":
        return cfg.recipe
    small = bool(class_counts) and median(class_counts.values()) < cfg.small_data
    return "probe" if small and pretrained else "fastbook"


def train_class_counts(data) -> dict[str, int]:
    """Training images per class."""
    return dict(Counter(data.labels[i] for i in data.train_idx))


RECIPES: dict[str, type[Recipe]] = {}


def register(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: the recipe answers to `cls.name` (in --recipe and in checkpoints)."""
    RECIPES[cls.name] = cls
    return cls


def recipe_class(name: str) -> type[Recipe]:
    """The recipe registered as `name`."""
    if name not in RECIPES:
        raise PetclfError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def make_recipe(name: str, ctx: RunContext) -> Recipe:
    """The registered recipe `name` over this run's context."""
    return recipe_class(name)(ctx)


def pick_recipe(cfg: TrainConfig, compute: Compute, data, run: RunDir, name: str | None = None,
                bs_of: str | None = None) -> Recipe:
    """The run's recipe, chosen once (`name`: a resumed run's), over the run's facts; its batch size is set
    before any model is built (a bad --bs is one line), by `bs_of`'s rule when given; its line is said."""
    from petclf.model import norm_stats

    pretrained = starts_pretrained(cfg)
    name = name or choose_recipe(cfg, train_class_counts(data), pretrained)
    cfg = replace(cfg, bs=recipe_class(bs_of or name).batch_size(cfg, data))
    recipe = make_recipe(name, RunContext(cfg, compute, data, run, pretrained, *norm_stats(cfg.arch)))
    say(recipe.describe())
    return recipe


def build_dataloaders(cfg: TrainConfig, data, device: str, norm: tuple[list, list] | None = None):
    """fastbook's presizing DataLoaders with the backbone's normalisation stats (`norm`) put in explicitly."""
    from petclf.data import make_dataloaders
    from petclf.model import norm_stats

    mean, std = norm or norm_stats(cfg.arch)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    return make_dataloaders(data, bs=cfg.bs, size=cfg.size, presize=cfg.presize, min_scale=cfg.min_scale,
                            mean=mean, std=std, device=torch.device(device), workers=workers, seed=cfg.seed)


def build_learner(cfg: TrainConfig, dls, head: dict, compute: Compute, pretrained: bool,
                  path: Path | None = None):
    """A fastai Learner over `make_network` (as vision_learner builds it), with petclf's progress instead of
    fastprogress; `path` is where fastai may put temporary files (lr_find's weights), never the current
    folder."""
    import fastai.callback.all  # noqa: F401 - patches Learner with fit_one_cycle, lr_find, to_fp16, ...
    from fastai.callback.channelslast import ChannelsLast
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy, error_rate
    from fastai.vision.learner import default_split
    from fastcore.basics import noop

    from petclf.model import make_network

    net = make_network(cfg.arch, dls.c, head=head, pretrained=cfg.pretrained, weights=cfg.weights)
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


def not_a_pet_detector(x, y, n_classes: int, run_dir: Path, fitted_on: str) -> dict:
    """Fit the not-a-pet detector on held-out features, write its class means into the run folder; the
    manifest's `not_a_pet` entry (off, saying why, when there are too few photos)."""
    from petclf.notapet import fit_detector, save_means

    entry, means = fit_detector(x, y, n_classes, fitted_on)
    if means is not None:
        entry |= on_main(save_means, run_dir, means) or {}
    return entry


class Recipe:
    """A way of training: each recipe says its input size, head, batches, plan, start, fit, metrics and
    record."""

    name: ClassVar[str]
    trains_batches: ClassVar[bool] = True  # fits by gradient steps over batches (the batch size matters)
    holds_out: ClassVar[bool] = True  # keeps a validation split (else the examples come from every photo)

    def __init__(self, ctx: RunContext):
        self.ctx, self.cfg = ctx, ctx.cfg

    # ------------------------------------------------------------------ what it needs
    @classmethod
    def batch_size(cls, cfg: TrainConfig, data) -> int:
        """The training batch per process (`fit_bs`, said in one line when it shrank)."""
        bs, why = fit_bs(cfg.bs, len(data.train_idx), distributed.world_size())
        if why:
            say(why)
        return bs

    def sizes(self) -> tuple[int, int]:
        """(size, presize) of its inputs: the DataLoaders', export.pkl's and the bundle's."""
        return self.cfg.size, self.cfg.presize

    def preprocess(self) -> Preprocess:
        """The predictor's preprocessing of this recipe's inputs."""
        return Preprocess(*self.sizes(), tuple(self.ctx.mean), tuple(self.ctx.std))

    def head_spec(self) -> dict[str, Any]:
        """The head the network is built with and the manifest records."""
        raise NotImplementedError

    def data_sizes(self) -> dict[str, int]:
        """The manifest's training and validation photo counts."""
        data = self.ctx.data
        return {"train": len(data.train_idx), "valid": len(data.valid_idx)}

    def split_words(self) -> str:
        """The manifest's `data.split`: how the photos were divided."""
        return self.ctx.data.report.split

    def describe(self) -> str:
        """The one line printed before training starts."""
        cfg, compute = self.cfg, self.ctx.compute
        threads = f", {torch.get_num_threads()} threads" if compute.device == "cpu" else ""
        layout = ", channels_last" if compute.channels_last else ""
        weights = cfg.weights or ("ImageNet (timm hub)" if cfg.pretrained else "random init")
        n = distributed.world_size()
        procs = (f"; {n} processes, batch {cfg.bs} per process = {n * cfg.bs} global, LR not scaled"
                 if n > 1 and self.trains_batches else "")
        sizes = self.data_sizes()
        images = (f"{sizes['train']} train / {sizes['valid']} valid images" if self.trains_batches
                  else f"{sizes['train']} images, all training the probe at {self.sizes()[0]} px")
        return (f"device {compute.device} ({compute.precision}{layout}{threads}); {cfg.arch} from {weights}; "
                f"recipe {self.name}; {images}, {len(self.ctx.data.vocab)} classes{procs}")

    # ------------------------------------------------------------------ the run
    def dataloaders(self):
        """fastbook's presizing DataLoaders at the recipe's sizes."""
        size, presize = self.sizes()
        ctx = self.ctx
        return build_dataloaders(replace(self.cfg, size=size, presize=presize), ctx.data, ctx.compute.device,
                                 (ctx.mean, ctx.std))

    def build(self):
        """DataLoaders and the Learner (rank 0 fills the hub cache before the others read it)."""
        ctx, dls = self.ctx, self.dataloaders()
        with stage("building the model", quiet=not distributed.is_main()):
            return distributed.main_first(lambda: build_learner(
                self.cfg, dls, self.head_spec(), ctx.compute, ctx.pretrained, path=ctx.run.checkpoints))

    def begin(self, learn, ckpt: dict | None) -> tuple[RunState, dict | None]:
        """(RunState, optimizer state to restore): from the checkpoint when resuming, else the recipe's
        `start`, once, on rank 0 (its weights reach the others when DDP wraps the model)."""
        clock = current_clock()
        if clock is not None:
            self.plan(clock, learn, len(ckpt["state"]["history"]) if ckpt else 0)
        if ckpt:
            learn.model.load_state_dict(ckpt["model"])
            state = RunState(**ckpt["state"])
            done = len(state.history)
            say(f"resuming {self.ctx.run.root} at epoch {done + 1} ({done} epochs done)")
            return state, ckpt.get("opt")
        state = None
        if distributed.is_main():
            with distributed.this_process_only():
                state = self.start(learn)
        return distributed.broadcast(state), None

    def plan(self, clock: RunClock, learn, epochs_done: int) -> None:
        """The work left, by kind, with guesses for the kinds timed only later, so the whole-run estimate
        comes after the first few batches; a recipe plans its own and then calls this for the export."""
        clock.plan("export", 1)
        clock.plan("onnx", 1)
        clock.prior["export"], clock.prior["onnx"] = (lambda r: EXPORT_GUESS_S), (lambda r: ONNX_GUESS_S)

    def start(self, learn) -> RunState:
        """A fresh run's first work and first checkpoint (rank 0)."""
        raise NotImplementedError

    def fit(self, learn, state: RunState, opt_state: dict | None, cbs: list) -> None:
        """Whatever training is left after `begin` (nothing by default)."""

    # ------------------------------------------------------------------ what it made
    def metrics(self, learn, state: RunState) -> RunMetrics:
        """metrics.json: the recipe's `measure`, its record, the processes, the detector and the open-set
        entry."""
        m = self.measure(learn, state)
        n = distributed.world_size()
        m.recipe = self.record(state)
        m.processes = {"count": n, "bs_per_process": learn.dls.bs, "global_bs": n * learn.dls.bs}
        m.not_a_pet = self.detector(learn, state)
        m.open_set = self.open_set(state)
        return m

    def measure(self, learn, state: RunState) -> RunMetrics:
        """The error, loss, history and temperature."""
        raise NotImplementedError

    def record(self, state: RunState) -> dict:
        """metrics.json's and the bundle's `recipe`."""
        return {"name": self.name}

    def detector(self, learn, state: RunState) -> dict:
        """The not-a-pet detector's manifest entry; off for a random-weight backbone, whose features were
        never taught what a photo of anything looks like."""
        from petclf.notapet import off

        if not self.ctx.pretrained:
            return off("the backbone started from random weights: its features do not tell a pet from "
                       "anything else")
        return self.fitted_detector(learn, state)

    def fitted_detector(self, learn, state: RunState) -> dict:
        """The detector of a pretrained backbone."""
        raise NotImplementedError

    def open_set(self, state: RunState) -> dict:
        """The manifest's `open_set` entry; off for a random-weight backbone (it has no ImageNet head)."""
        from petclf.openset import off

        if not self.ctx.pretrained:
            return off("the backbone started from random weights: it has no ImageNet head")
        return self.fitted_open_set(state)

    def fitted_open_set(self, state: RunState) -> dict:
        """The open-set entry of a pretrained backbone."""
        raise NotImplementedError
