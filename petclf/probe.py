"""The `probe` recipe (small data): the frozen backbone's GeM-pooled, L2-normalised features at
`probe_size`; a Linear started from a logistic regression on them and trained on crops of the feature maps
(where there are no maps to keep, the logistic regression alone, C by cross-validation), fitted on every
labelled photo (no validation split) and written into the network's linear head; its error is a
cross-validation estimate, and the out-of-fold predictions are saved in `oof.json`. No lr_find, no fine-tune
of the backbone (measured to add nothing). The numbers themselves are `petclf.probefit`'s.

    recipe = Probe(ctx)                                 # ctx: `petclf.recipe.RunContext`
    run_probe(learn, cfg, data, run_dir, pre)     # all photos, head set, oof.json written: metrics' `probe`
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from petclf import distributed
from petclf.config import DEFAULT_BS, TrainConfig
from petclf.featcache import FeatureCache
from petclf.features import feature_body
from petclf.oof import save_oof
from petclf.preprocess import Preprocess
from petclf.probefit import (
    CROP_EPOCHS,
    FEATURE_BS,
    HEAD_ON_CROPS,
    MAX_MAPS_BYTES,
    OUTER_FOLDS,
    crop_head,
    crop_head_cv,
    fit_probe_cv,
    fit_units,
    photo_features,
    pool_power,
    summed_area,
)
from petclf.progress import RunClock, stage
from petclf.recipe import Recipe, not_a_pet_detector, register
from petclf.run import RunState, on_main, save_checkpoint, say
from petclf.runfiles import RunMetrics


def single_photo_classes(labels: list[str]) -> list[str]:
    """Classes with one labelled photo: the probe trains on it, but no cross-validation fold can test it
    fairly."""
    from collections import Counter

    return sorted(c for c, n in Counter(labels).items() if n == 1)


def map_pool(net: torch.nn.Module, size: int, n_photos: int) -> torch.nn.Module | None:
    """The head's pooling when the body gives feature maps of `size` px inputs and those of `n_photos`
    photos fit `MAX_MAPS_BYTES` (the head can then train on their crops), else None (a ViT's tokens, or too
    many photos: the probe is the head)."""
    from petclf.model import GeMPool

    pool = net[1][0]
    if not isinstance(pool, (GeMPool, torch.nn.AdaptiveAvgPool2d)):
        return None
    device = next(net.parameters()).device
    with torch.inference_mode():
        one = net[0](torch.zeros(1, 3, size, size, device=device))
    return pool if one.ndim == 4 and 2 * one.numel() * n_photos <= MAX_MAPS_BYTES else None


def run_probe(learn, cfg: TrainConfig, data, run_dir: Path, pre: Preprocess) -> dict:
    """The probe recipe: features of every labelled photo but a test part (`data.fit_idx`: the predictor's
    pixels, `pre`, at `probe_size`); the head trained on crops of the feature maps with its 5-fold estimate,
    or where there are no maps to keep, the probe alone (C by CV, nested estimate). The network's Linear
    gets the head, `oof.json` its out-of-fold predictions. Returns metrics.json's `probe`."""
    t0 = time.monotonic()
    items, labels = [data.items[i] for i in data.fit_idx], [data.labels[i] for i in data.fit_idx]
    lonely = single_photo_classes(labels)
    if lonely:
        say(f"warning: {len(lonely)} classes have a single photo ({', '.join(lonely[:5])}); the probe trains "
            "on them, but the cross-validation estimate cannot test them fairly")
    net = distributed.unwrap(learn.model).to(learn.dls.device)  # fastai moves it only when fitting
    vocab = list(learn.dls.vocab)
    y = np.array([vocab.index(label) for label in labels])
    pool = map_pool(net.eval(), cfg.probe_size, len(y)) if len(y) else None
    if pool is None:
        say("the head is the probe alone: the body gives no feature maps to crop, or they would not fit in "
            "memory")
    quiet = not distributed.is_main()
    cache = FeatureCache.default() if cfg.cache else None
    with stage("the body for the features", quiet=quiet):  # its ONNX export, once per weights and size
        body = feature_body(net, cfg.probe_size, str(next(net.parameters()).device), cache)
    x, pooled, maps, reused = photo_features(net, items, pre, pool is not None, body, cache, quiet)
    feature_seconds = time.monotonic() - t0
    say(f"features: {reused} reused from the cache, {len(y) - reused} computed ({body.backend}; "
        + (f"cache {cache.root})" if cache is not None else "no cache)"))
    # the head on crops; the probe's own C and estimate would change nothing in it: not computed
    if maps is not None:
        with stage(f"head on crops of the maps ({CROP_EPOCHS} epochs; {OUTER_FOLDS}-fold estimate)",
                   total=OUTER_FOLDS + 1, kind="heads", quiet=quiet) as s:
            sat = summed_area(maps, pool_power(pool))
            head = crop_head(maps, y, len(vocab), pool, cfg.seed, sat)
            s.advance()
            est, oof = crop_head_cv(maps, y, len(vocab), pool, cfg.seed, tick=s.advance, sat=sat)
            s.info = f"{est['estimate']} error {est['error']:.4f}"
        about = {"head": HEAD_ON_CROPS}
    else:
        with stage("probe fit (C by 4-fold CV, nested 5-fold estimate)", total=fit_units(len(y)), kind="fit",
                   quiet=quiet) as s:
            fit = fit_probe_cv(x, y, len(vocab), seed=cfg.seed, tick=s.advance)
            s.info = f"C {fit.c:g}, {fit.cv['estimate']} error {fit.cv['error']:.4f}"
        head, est, oof = (fit.weight, fit.bias), fit.cv, fit.oof_logits
        about = {"head": f"logistic regression (C = {fit.c:g}, chosen by 4-fold cross-validation)",
                 "c": fit.c, "c_per_fold": est["c_per_fold"], "c_at_grid_edge": est["c_at_grid_edge"],
                 "c_table": est["c_table"]}
    with torch.no_grad():
        net[1][-1].weight.copy_(torch.from_numpy(head[0]))
        net[1][-1].bias.copy_(torch.from_numpy(head[1]))
    on_main(save_oof, run_dir, items, vocab, y, oof, est["estimate"])
    detector = not_a_pet_detector(pooled, y, len(vocab), run_dir, f"all {len(y)} labelled photos, each "
                                  "scored against class means made without it")
    answers = open_set_answers(net, cfg, pooled, y, oof, vocab, run_dir)
    return {"error_rate": est["error"], "log_loss": est["log_loss"], "estimate": est["estimate"],
            "fold_errors": est["fold_errors"], "fold_error_std": est["fold_error_std"], **about,
            "size": cfg.probe_size, "n_images": len(y), "features_reused": reused,
            "feature_backend": body.backend, "feature_seconds": round(feature_seconds, 2),
            "fit_seconds": round(time.monotonic() - t0 - feature_seconds, 2),
            "seconds": round(time.monotonic() - t0, 2), "not_a_pet": detector, **answers}


def open_set_answers(net: torch.nn.Module, cfg: TrainConfig, pooled: np.ndarray, y: np.ndarray,
                     oof: np.ndarray, vocab: list[str], run_dir: Path) -> dict:
    """metrics.json's `sure_below` (the breed answer's threshold, from the out-of-fold predictions at the
    run's temperature) and `open_set` (the manifest's entry; its ImageNet head written into the run folder,
    or off, saying why)."""
    from scipy.special import softmax

    from petclf.calibrate import choose_temperature
    from petclf.openset import fit_open_set, off, save_arrays, sure_threshold

    probs = softmax(oof / choose_temperature(oof, y)["temperature"], axis=1)  # as `Probe.measure` chooses it
    out = {"sure_below": sure_threshold(probs, y) if len(y) else None}
    head, why = imagenet_head(net, cfg, vocab)
    if head is None:
        return out | {"open_set": off(why)}
    entry, arrays = fit_open_set(pooled, y, len(vocab), probs, *head, f"all {len(y)} labelled photos "
                                 "(coverage and cosine leave-one-out; the sure threshold on out-of-fold "
                                 "predictions)")
    if arrays is not None:
        entry |= on_main(save_arrays, run_dir, arrays) or {}
    return out | {"open_set": entry}


def imagenet_head(net: torch.nn.Module, cfg: TrainConfig,
                  vocab: list[str]) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """((weight, bias) of the backbone's own ImageNet-1k head, '') when the open-set signals can use it: cat
    and dog classes, ImageNet weights that include the head, a head that reads the average-pooled features;
    else (None, why not)."""
    import timm

    from petclf.labels import pets_groups
    from petclf.layouts import read_groups
    from petclf.model import average_pooled, cached_hub_weights, classifier_names, read_state_dict

    groups = read_groups(cfg.groups, vocab)[1] if cfg.groups else pets_groups(vocab)
    if not groups or not set(groups.values()) <= {"cat", "dog"}:
        return None, "the classes are not cats and dogs: the ImageNet head's cat and dog classes cannot tell"
    path = cfg.weights or (cached_hub_weights(cfg.arch) if cfg.pretrained else None)
    if path is None:
        return None, "no ImageNet weights file: the backbone started from random weights, or none is cached"
    state = read_state_dict(path)
    name = classifier_names(cfg.arch)[-1]
    w, b = state.get(f"{name}.weight"), state.get(f"{name}.bias")
    if w is None or b is None or w.ndim != 2 or w.shape[0] != 1000:
        return None, f"the weights hold no 1000-class ImageNet head ({name})"
    full = timm.create_model(cfg.arch, pretrained=False).eval()
    full.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mine = average_pooled(net[0](x.to(next(net.parameters()).device))).cpu() @ w.T.float() + b.float()
        theirs = full(x)
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=1e-3, atol=1e-3):
        return None, "the ImageNet head does not read the average-pooled features of this backbone"
    return (w.float().numpy(), b.float().numpy()), ""


@register
class Probe(Recipe):
    """A linear head solved on the frozen backbone's features of every photo; a cross-validation estimate."""

    name = "probe"
    trains_batches = False  # its features go through in batches of their own
    holds_out = False  # every labelled photo trains it; cross-validation measures it

    @classmethod
    def batch_size(cls, cfg: TrainConfig, data) -> int:
        """Any batch size serves it: it trains no batches."""
        return cfg.bs or DEFAULT_BS

    def sizes(self) -> tuple[int, int]:
        """`probe_size` for both: export.pkl carries it (the probe sees no batch: features come through
        `Preprocess`)."""
        return self.cfg.probe_size, self.cfg.probe_size

    def head_spec(self) -> dict:
        """The probe's linear head."""
        from petclf.model import probe_head

        return probe_head(self.cfg.arch)

    def data_sizes(self) -> dict[str, int]:
        """Every labelled photo trains it; none is held out."""
        return {"train": len(self.ctx.data.fit_idx), "valid": 0}

    def split_words(self) -> str:
        """No split."""
        return "none: every photo trains the probe"

    def plan(self, clock: RunClock, learn, epochs_done: int) -> None:
        """The features' batches, then the heads (or the probe's fits), then the export."""
        n = len(self.ctx.data.fit_idx)
        clock.plan("features", math.ceil(n / FEATURE_BS))
        if map_pool(distributed.unwrap(learn.model).eval(), self.cfg.probe_size, n) is not None:
            clock.plan("heads", OUTER_FOLDS + 1)  # the head on crops, then its 5-fold estimate
            clock.prior["heads"] = lambda r: 0.006 * n  # a guess till the first is timed (185 photos: 1 s)
        else:
            clock.plan("fit", fit_units(n))
            clock.prior["fit"] = lambda r: 0.1  # a guess till the first folds are timed (180 photos: 0.07 s)
        super().plan(clock, learn, epochs_done)

    def start(self, learn) -> RunState:
        """The whole recipe, then its one checkpoint. Interrupted before it, it leaves nothing to resume:
        rerun it (it is short)."""
        state = RunState(recipe=self.name)
        run = self.ctx.run.root
        # its stages say C and the estimate
        state.probe = run_probe(learn, self.cfg, self.ctx.data, run, self.preprocess())
        on_main(save_checkpoint, learn, state, run)
        return state

    def measure(self, learn, state: RunState) -> RunMetrics:
        """The cross-validation estimate (never an error on the photos the model trained on), and the
        temperature chosen on the out-of-fold logits: the honest held-out outputs of this recipe."""
        from petclf.calibrate import choose_temperature
        from petclf.oof import read_oof

        p = state.probe
        oof = read_oof(self.ctx.run.root)
        calibration = choose_temperature(np.asarray(oof["logits"], np.float32), np.asarray(oof["labels"]))
        speed = round(p["n_images"] / p["seconds"], 2) if p["seconds"] else None
        return RunMetrics(error_rate=p["error_rate"], accuracy=1.0 - p["error_rate"],
                          valid_loss=p["log_loss"], estimate=p["estimate"], fold_errors=p["fold_errors"],
                          fold_error_std=p["fold_error_std"], log_loss=p["log_loss"], history=[], lr=None,
                          lr_find=None, probe=p,
                          train_seconds=p["seconds"], images_per_second=speed, calibration=calibration)

    def record(self, state: RunState) -> dict:
        """Its name and how its head was made."""
        gem_p = self.head_spec().get("gem_p")
        pooled = f"GeM-pooled (p = {gem_p:g})" if gem_p else "average-pooled"
        return {"name": self.name, "size": self.cfg.probe_size,
                "features": f"{pooled}, L2-normalised, centre view", "head": state.probe["head"],
                "estimate": state.probe["estimate"], "trained_on": "every labelled photo"}

    def fitted_detector(self, learn, state: RunState) -> dict:
        """Fitted by `run_probe` on every photo (leave-one-out)."""
        from petclf.notapet import off

        return state.probe.get("not_a_pet") or off("the probe was fitted before petclf had a not-a-pet "
                                                   "detector")

    def fitted_open_set(self, state: RunState) -> dict:
        """Fitted by `run_probe`."""
        from petclf.openset import off

        return (state.probe or {}).get("open_set") or off("the probe was fitted before petclf had open-set "
                                                          "signals")
