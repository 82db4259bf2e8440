"""lr_find that means something: enough steps to resolve the curve, fastai's four suggestions marked on the
plot, the one used said in words, and a flat-noise curve recognised (then the recipe's default LR is used).

    from petclf.lrfind import lr_find, plot_lr_find
    found = lr_find(learn)                     # fastai's lr_find with a bar; found.suggestion, found.why()
    plot_lr_find(found, run_dir / "lr_find.png")
    found.record()                             # metrics.json's `lr_find`

Flat noise: the smoothed loss falls by less than `FLAT_DROP` x the batch-to-batch noise of the raw losses (a
robust sigma of their differences): nothing the LR did shows above the noise of the batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from petclf import distributed
from petclf.io import atomic_path
from petclf.progress import stage

FALLBACK_LR = 2e-3  # fastai fine_tune's base_lr, used when lr_find cannot suggest one
LR_FIND_MIN_STEPS = 50  # 0.16 decade per step over lr_find's 1e-7 ... 10: fine enough to place a valley
FLAT_DROP = 2.0  # a curve whose smoothed loss falls by less than this many batch-noise sigmas is flat noise
USED = "valley"  # the suggestion the run trains with: fastai's default, the most robust of its four


@dataclass
class LRFind:
    """What lr_find found: the LR used, every fastai suggestion, the curve, how flat it was, and the
    seconds."""

    suggestion: float
    lrs: list[float]
    losses: list[float]
    seconds: float
    fallback: bool = False
    suggestions: dict[str, float] = field(default_factory=dict)  # fastai's valley, steep, slide, minimum
    used: str = USED  # the suggestion `suggestion` is, or "fallback"
    flat: dict = field(default_factory=dict)  # {"drop", "noise", "flat"}: the flatness test
    raw: list[float] = field(default_factory=list)  # each batch's own loss

    def record(self) -> dict:
        """metrics.json's `lr_find`."""
        return {"suggestion": self.suggestion, "used": self.used, "fallback": self.fallback,
                "suggestions": self.suggestions, "flat": self.flat, "steps": len(self.lrs),
                "seconds": round(self.seconds, 2), "why": self.why()}

    def why(self) -> str:
        """The choice in words."""
        if self.flat.get("flat"):
            return (f"the curve is flat noise (the smoothed loss falls {self.flat['drop']:.3g}, less than "
                    f"{FLAT_DROP:g} x the batch-to-batch noise {self.flat['noise']:.3g}): no suggestion can "
                    f"be read from it; using the recipe's default {self.suggestion:.2e}")
        if self.fallback:
            return f"no valley could be read from the curve; using the recipe's default {self.suggestion:.2e}"
        others = ", ".join(f"{k} {v:.2e}" for k, v in self.suggestions.items() if k != self.used)
        return (f"{self.used} {self.suggestion:.2e} (the middle of the longest stretch where the loss falls) "
                "is the "
                f"LR; the other suggestions: {others}")


def lr_find_steps(n_batches: int, max_steps: int = 100) -> int:
    """Two passes over the training set, at least `LR_FIND_MIN_STEPS` (small data repeats batches), at most
    `max_steps`."""
    return int(min(max_steps, max(LR_FIND_MIN_STEPS, 2 * n_batches)))


def suggest_lrs(lrs: list[float], losses: list[float], num_it: int) -> dict[str, float]:
    """fastai's four suggestion functions on the curve, sliced as fastai's `lr_find` slices it; each one
    that can be read ('minimum' is fastai's: a tenth of the minimum's LR)."""
    from fastai.callback.schedule import minimum, slide, steep, valley

    x, y = torch.tensor(lrs[num_it // 10:-5]), torch.tensor(losses[num_it // 10:-5])
    nan = torch.nonzero(torch.isnan(y)).view(-1)
    if len(nan):
        x, y = x[:int(nan[0])], y[:int(nan[0])]
    out = {}
    for fn in (valley, steep, slide, minimum):
        try:
            lr = float(fn(x, y, num_it)[0])
        except (IndexError, ValueError, RuntimeError):
            continue  # too short a curve for this one (slide needs 16 points)
        if math.isfinite(lr) and lr > 0:
            out[fn.__name__] = lr
    return out


def flatness(raw: list[float], smoothed: list[float], num_it: int) -> dict:
    """How far the smoothed loss falls below where it started, against the batch-to-batch noise of the raw
    losses (a robust sigma of their differences); `flat` when it falls by less than `FLAT_DROP` sigmas."""
    lo = num_it // 10
    r = np.asarray(raw[lo:-5] if len(raw) > lo + 10 else raw, float)
    sm = np.asarray(smoothed[lo:-5] if len(smoothed) > lo + 10 else smoothed, float)
    r, sm = r[np.isfinite(r)], sm[np.isfinite(sm)]
    if len(r) < 4 or len(sm) < 2:
        return {"drop": 0.0, "noise": 0.0, "flat": True}
    d = np.diff(r)
    noise = float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))
    drop = float(sm[:max(1, len(sm) // 5)].mean() - sm.min())
    return {"drop": round(drop, 4), "noise": round(noise, 4), "flat": bool(drop < FLAT_DROP * noise)}


def lr_find(learn, max_steps: int = 100, fallback_lr: float = FALLBACK_LR) -> LRFind:
    """fastai's lr_find (stops on divergence), bounded in steps, with a progress bar; valley's LR unless the
    curve is flat noise or unreadable, then `fallback_lr`."""
    from petclf.callbacks import LRFindWatch

    t0 = time.monotonic()
    num_it = lr_find_steps(len(learn.dls.train), max_steps)
    with stage("lr_find", total=num_it, kind="train", quiet=not distributed.is_main()) as s:
        watch = LRFindWatch(s)
        with learn.no_logging(), learn.added_cbs(watch):
            learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=None)
        lrs = [float(x) for x in learn.recorder.lrs]
        losses = [float(x) for x in learn.recorder.losses]
        found = LRFind(fallback_lr, lrs, losses, 0.0, fallback=True, used="fallback", raw=watch.raw,
                       suggestions=suggest_lrs(lrs, losses, num_it), flat=flatness(watch.raw, losses, num_it))
        if USED in found.suggestions and not found.flat["flat"]:
            found.suggestion, found.fallback, found.used = found.suggestions[USED], False, USED
        found.seconds = time.monotonic() - t0
        s.info = found.why()  # the stage's one line says which LR and why
    return found


def plot_lr_find(res: LRFind, path: Path) -> Path:
    """Loss vs learning rate (log scale): each batch's loss faint, fastai's smoothed curve, every suggestion
    marked and the one used named in the title; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    n = len(res.lrs)
    keep = slice(0, n - 5 if n > 15 else n)  # fastai's plot drops the diverging tail too
    if res.raw:
        ax.plot(res.lrs[keep], res.raw[keep], color="#bbb", lw=0.8, label="batch loss")
    ax.plot(res.lrs[keep], res.losses[keep], color="tab:blue", label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    markers = dict(zip(("valley", "steep", "slide", "minimum"), ("o", "^", "s", "v"), strict=True))
    log_lrs = np.log10(res.lrs[keep])
    for name, lr in res.suggestions.items():
        y = float(np.interp(math.log10(lr), log_lrs, res.losses[keep])) if n else 0.0
        label = f"{name}{'/10' if name == 'minimum' else ''} {lr:.1e}{' (used)' if name == res.used else ''}"
        ax.plot(lr, y, markers[name], ms=9 if name == res.used else 6, label=label)
    if res.fallback:
        ax.axvline(res.suggestion, color="tab:red", linestyle="--",
                   label=f"default {res.suggestion:.1e} (used)")
    flat = " - flat noise, recipe default used" if res.flat.get("flat") else ""
    ax.set_title(f"lr_find: {res.used} {res.suggestion:.2e}{flat}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
