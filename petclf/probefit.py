"""The probe's numbers: features of a frozen backbone, a logistic regression on them with C by
cross-validation, and a Linear trained on crops of the feature maps (`crop_head`), each with an honest error
estimate (cross-validation, out-of-fold predictions). The recipe that runs them in a training run is
`petclf.probe`.

    from petclf.probefit import crop_head, fit_probe_cv, network_features, probe_features
    x = network_features(net, paths, pre)             # N x D, L2-normalised: the head's input
    fit = fit_probe_cv(x, y, n_classes)               # C by 4-fold CV, refit on all, nested 5-fold estimate
    fit.weight, fit.bias, fit.cv["error"], fit.oof_logits
    x, pooled, maps = probe_features(net, paths, pre, keep_maps=True)
    weight, bias = crop_head(maps, y, n_classes, net[1][0])

Measured on real photos (185, 37 breeds; docs/decisions/small-data.md, benchmarks/bench_small_data.py): 384
px, one centre view, L2-normalised features and C by CV log-loss beat the old probe (standardised features,
C = 1, 224 px) by about 6 points of error, GeM pooling (p = 2) beat average pooling by 1.6 more, and the
head on crops beat the probe by about 1 more; fine-tuning the backbone moved nothing (LP-FT made it worse),
so there is none.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from petclf.calibrate import nll
from petclf.device import torch_threads
from petclf.progress import stage

C_GRID = tuple(10.0 ** k for k in range(8))  # unit-norm features: 1 ... 1e7, one per decade
INNER_FOLDS = 4  # folds of the CV that chooses C
OUTER_FOLDS = 5  # folds of the nested estimate
FEATURE_BS = 32  # images per forward pass
Tick = Callable[[], None] | None  # called after each unit of work (a batch, a fold's fit): progress


# ------------------------------------------------------------------------------------------------ features


@torch.inference_mode()
def probe_features(net: torch.nn.Module, images: Sequence, pre, bs: int = FEATURE_BS,
                   tick: Callable[[], None] | None = None, keep_maps: bool = False,
                   body: Callable[[np.ndarray], torch.Tensor] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None]:
    """What the final Linear of `net` (backbone -> pool -> L2Norm -> Linear) sees, and the body's
    average-pooled features (the not-a-pet detector's input), for each image preprocessed by `pre` (a
    `Preprocess`: the predictor's pixels), in eval mode, from one forward pass; `tick()` after each batch;
    and with `keep_maps` the body's feature maps (N x C x H x W, float16, on the CPU) for `crop_head`, else
    None. `body` (a batch -> the maps, `features.feature_body`) runs the body in place of `net[0]` on
    `net`'s device."""
    from petclf.model import average_pooled

    net.eval()
    if body is None:
        device = next(net.parameters()).device
        body = lambda x: net[0](torch.from_numpy(x).to(device))  # noqa: E731
    seen, pooled, maps = [], [], []
    for i in range(0, len(images), bs):
        f = body(pre(images[i:i + bs]))
        seen.append(net[1][:-1](f).float().cpu())
        pooled.append(average_pooled(f).cpu())
        if keep_maps:
            maps.append(f.half().cpu().contiguous())
        if tick:
            tick()
    if not seen:
        empty = np.zeros((0, 0), np.float32)
        return empty, empty.copy(), torch.zeros(0) if keep_maps else None
    return torch.cat(seen).numpy(), torch.cat(pooled).numpy(), torch.cat(maps) if keep_maps else None


def photo_features(net: torch.nn.Module, items: Sequence[Path], pre, keep_maps: bool, body,
                   cache=None, quiet: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, torch.Tensor | None, int]:
    """`probe_features` of the photos `items` through `body` (a `features.Body`), reusing the entries of
    `cache` (a `featcache.FeatureCache`, or None) and writing the ones computed: (x, pooled, maps, how many
    were reused). Reused or not, every photo's arrays come out the same way, so the results are
    bit-identical either way."""
    from petclf.featcache import entry_key
    from petclf.features import feature_spec
    from petclf.io import sha256_file
    from petclf.progress import current_clock

    names = ("x", "pooled", "maps") if keep_maps else ("x", "pooled")
    rows: dict[int, dict[str, np.ndarray]] = {}
    keys: list[str] = []
    if cache is not None:
        spec = feature_spec(net, pre, body)
        keys = [entry_key(sha256_file(p), spec) for p in items]
        rows = {i: hit for i, k in enumerate(keys) if (hit := cache.get(k, names)) is not None}
    todo = [i for i in range(len(items)) if i not in rows]
    clock = current_clock()
    if clock is not None:  # the run planned every photo's batches
        clock.done("features", math.ceil(len(items) / FEATURE_BS) - math.ceil(len(todo) / FEATURE_BS))
    with stage(f"probe features ({pre.size} px)", total=math.ceil(len(todo) / FEATURE_BS), kind="features",
               quiet=quiet) as s:
        x, pooled, maps = probe_features(net, [items[i] for i in todo], pre, tick=s.advance,
                                         keep_maps=keep_maps, body=body.run)
    for j, i in enumerate(todo):
        rows[i] = {"x": x[j], "pooled": pooled[j], **({"maps": maps[j].numpy()} if keep_maps else {})}
        if cache is not None:
            cache.put(keys[i], rows[i])
    if cache is not None:
        cache.evict()
    stacked = {k: np.stack([rows[i][k] for i in range(len(items))]) for k in names}
    return (stacked["x"], stacked["pooled"], torch.from_numpy(stacked["maps"]) if keep_maps else None,
            len(items) - len(todo))


def network_features(net: torch.nn.Module, images: Sequence, pre, bs: int = FEATURE_BS,
                     tick: Callable[[], None] | None = None) -> np.ndarray:
    """What the final Linear of `net` sees for each image (`probe_features`' first half)."""
    return probe_features(net, images, pre, bs, tick)[0]


def pooled_features(net: torch.nn.Module, images: Sequence, pre, bs: int = FEATURE_BS) -> np.ndarray:
    """The body's average-pooled features of each image (the not-a-pet detector's input), in eval mode."""
    return probe_features(net, images, pre, bs)[1]


# ---------------------------------------------------------------------------------------------------- the fit


def _span(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, D x r basis of the centred rows): with an unpenalised intercept the optimal weights lie in
    that span, so the regression is solved there exactly (r <= N instead of D dimensions)."""
    mu = x.mean(0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    return mu, vt[s > s[0] * 1e-6].T if s[0] > 0 else vt[:1].T


def _solve(z: np.ndarray, y: np.ndarray, k: int, c: float, p0: np.ndarray | None) -> np.ndarray:
    """Minimise `0.5 |U|^2 + c sum CE(z U + b, y)` by L-BFGS (scipy); the flat (U, b)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    n, d = z.shape
    onehot = np.eye(k)[y]

    def loss_grad(p: np.ndarray) -> tuple[float, np.ndarray]:
        u, b = p[:d * k].reshape(d, k), p[d * k:]
        logits = z @ u + b
        lse = logsumexp(logits, axis=1, keepdims=True)
        g = c * (np.exp(logits - lse) - onehot)
        loss = c * float(lse.sum() - (logits * onehot).sum()) + 0.5 * float((u * u).sum())
        return loss, np.concatenate([(z.T @ g + u).ravel(), g.sum(0)])

    p0 = np.zeros(d * k + k) if p0 is None else p0
    return minimize(loss_grad, p0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-5}).x


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int,
               cs: Sequence[float]) -> list[tuple[np.ndarray, ...]]:
    """Multinomial logistic regression, scikit-learn's objective `0.5 |W|^2 + C sum CE` with an unpenalised
    intercept, for every C in `cs` (ascending: each fit starts from the previous one): a list of (weight,
    bias).

    Solved in the span of the centred rows by scipy's L-BFGS: sklearn's own lbfgs took 5x longer here and,
    warm started along the grid, stopped early at large C. Classes absent from `y` get bias -1e4 (never
    predicted).
    """
    from threadpoolctl import threadpool_limits

    present = np.unique(y)
    k = len(present)
    fits, p = [], None
    # one BLAS thread: on a few shared cores idle-spinning BLAS threads made these small fits ~100x slower
    # (the SVD too: 3 s for 148 x 1280 on a busy machine)
    with threadpool_limits(1):
        mu, basis = _span(x)
        z = (x - mu) @ basis
        for c in cs:
            p = _solve(z, np.searchsorted(present, y), k, c, p)
            w = np.zeros((n_classes, x.shape[1]), np.float32)
            b = np.full(n_classes, -1e4, np.float32)
            w[present] = (basis @ p[:-k].reshape(-1, k)).T
            b[present] = p[-k:] - w[present] @ mu
            fits.append((w, b))
    return fits


def logits_of(x: np.ndarray, wb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The Linear head's outputs."""
    return x @ wb[0].T + wb[1]


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Test indices of `k` stratified folds, fewer when the smallest class is smaller (at least 2)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = max(2, min(k, int(counts[counts > 0].min())))
    with warnings.catch_warnings():
        # "least populated class has 1 member": the run warns once
        warnings.simplefilter("ignore", UserWarning)
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
        return [test for _, test in splits]


def cv_table(x: np.ndarray, y: np.ndarray, n_classes: int, cs: Sequence[float], k: int = INNER_FOLDS,
             seed: int = 0, tick: Tick = None) -> tuple[np.ndarray, np.ndarray]:
    """k-fold CV of every C: (mean log-loss per C, error per C); `tick()` after each fold."""
    losses, errors = np.zeros(len(cs)), np.zeros(len(cs))
    for test in stratified_folds(y, k, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        for j, wb in enumerate(fit_logreg(x[train], y[train], n_classes, cs)):
            logits = logits_of(x[test], wb)
            losses[j] += nll(logits, y[test]) * len(test) / len(y)
            errors[j] += float((logits.argmax(1) != y[test]).sum()) / len(y)
        if tick:
            tick()
    return losses, errors


def choose_c(x: np.ndarray, y: np.ndarray, n_classes: int, cs: Sequence[float] = C_GRID, k: int = INNER_FOLDS,
             seed: int = 0, tick: Tick = None) -> tuple[float, dict]:
    """The C of lowest CV log-loss (CV error is too coarse on a few photos per class), and the CV table."""
    losses, errors = cv_table(x, y, n_classes, cs, k, seed, tick)
    best = int(np.argmin(losses))
    table = {"c": list(cs), "log_loss": losses.round(4).tolist(), "error": errors.round(4).tolist()}
    return float(cs[best]), table


def cross_validate(y: np.ndarray, n_classes: int, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   outer: int = OUTER_FOLDS, seed: int = 0, kind: str = "",
                   tick: Tick = None) -> tuple[dict, np.ndarray]:
    """`fit_predict(train, test)` (indices -> the test photos' logits from a model fitted on the training
    ones) on each of `outer` stratified folds: (the estimate, N x K out-of-fold logits, each row from a
    model that never saw that photo); `kind` qualifies the estimate's name ("nested"); `tick()` after each
    fold."""
    oof = np.zeros((len(y), n_classes), np.float32)
    fold_errors = []
    for test in stratified_folds(y, outer, seed):
        oof[test] = fit_predict(np.setdiff1d(np.arange(len(y)), test), test)
        fold_errors.append(round(float((oof[test].argmax(1) != y[test]).mean()), 4))
        if tick:
            tick()
    name = " ".join(filter(None, [kind, f"{len(fold_errors)}-fold cross-validation"]))
    return {"estimate": name, "error": float((oof.argmax(1) != y).mean()), "fold_errors": fold_errors,
            "fold_error_std": round(float(np.std(fold_errors)), 4), "log_loss": round(nll(oof, y), 4)}, oof


def nested_cv(x: np.ndarray, y: np.ndarray, n_classes: int, cs: Sequence[float] = C_GRID,
              outer: int = OUTER_FOLDS, inner: int = INNER_FOLDS, seed: int = 0,
              tick: Tick = None) -> tuple[dict, np.ndarray]:
    """Each outer fold chooses its own C by inner CV on its training photos, refits, predicts its held-out
    photos: (the estimate with each fold's C, N x K out-of-fold logits)."""
    chosen = []

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        c, _ = choose_c(x[train], y[train], n_classes, cs, inner, seed + 1, tick)
        chosen.append(c)
        (wb,) = fit_logreg(x[train], y[train], n_classes, [c])
        return logits_of(x[test], wb)

    est, oof = cross_validate(y, n_classes, fit_predict, outer, seed, "nested", tick)
    return est | {"c_per_fold": chosen}, oof


@dataclass
class ProbeFit:
    """The fitted head (on L2-normalised features), its C, and the nested estimate with out-of-fold logits."""

    weight: np.ndarray  # K x D
    bias: np.ndarray  # K
    c: float
    cv: dict = field(default_factory=dict)
    oof_logits: np.ndarray | None = None  # N x K


def fit_units(n: int, inner: int = INNER_FOLDS, outer: int = OUTER_FOLDS) -> int:
    """The fits `fit_probe_cv` makes on `n` photos (fewer when small classes cut the folds): its progress
    total."""
    return inner + 1 + outer * (inner + 1) if n else 0


def fit_probe_cv(x: np.ndarray, y: np.ndarray, n_classes: int, cs: Sequence[float] = C_GRID, seed: int = 0,
                 estimate: bool = True, tick: Tick = None) -> ProbeFit:
    """C by CV on all photos, refit on all of them; with `estimate`, the nested-CV estimate the run reports
    (never the CV error C was chosen on: that one is optimistic)."""
    t0 = time.process_time()
    c, table = choose_c(x, y, n_classes, cs, INNER_FOLDS, seed, tick)
    (wb,) = fit_logreg(x, y, n_classes, [c])
    if tick:
        tick()
    cv, oof = nested_cv(x, y, n_classes, cs, OUTER_FOLDS, INNER_FOLDS, seed, tick) if estimate else ({}, None)
    cv.update(c=c, c_table=table, c_at_grid_edge=c in (min(cs), max(cs)),
              fit_cpu_seconds=round(time.process_time() - t0, 2))
    return ProbeFit(wb[0], wb[1], c, cv, oof)


# ------------------------------------------------------------------------------------------ the head on crops

# The Linear trained on random crops of the frozen body's feature maps. Measured on pets-dev (25
# splits, 4 photos per breed; docs/decisions/small-data.md, "The head on crops"): 0.084 against 0.095 for the
# probe alone. Fixed settings, chosen before the confirming splits; the backbone runs once per photo (the maps
# are kept).
CROP_EPOCHS = 30  # passes over the photos
CROP_BS = 32  # photos per step; one crop window for the whole batch
CROP_LR = 1e-3  # AdamW (no weight decay), one-cycle schedule, on the Linear alone
CROP_INIT_C = 10.0  # the Linear starts from a strongly regularised probe (its training loss leaves gradients)
CROP_MIN_SIDE = 0.5  # each crop is a square window of 50-100 % of the map's side (25-100 % of its area)
# feature maps kept for the crops at most (float16, and a float32 copy while a head trains); beyond it
MAX_MAPS_BYTES = 2**30  # (~2,900 photos for lite0 at 384 px) the probe alone is the head
HEAD_ON_CROPS = (f"Linear trained on crops of the feature maps ({CROP_EPOCHS} epochs, from the probe at "
                 f"C = {CROP_INIT_C:g})")


def pooled_unit(maps: torch.Tensor, pool: torch.nn.Module) -> torch.Tensor:
    """The head's pooling of each map, L2-normalised: the Linear's input (float32)."""
    return torch.nn.functional.normalize(pool(maps.float()).flatten(1), dim=1)


def summed_area(maps: torch.Tensor, p: float, chunk: int = 256) -> torch.Tensor:
    """The summed-area table of `maps ** p` (clamped as GeM clamps), laid out (H + 1) x (W + 1) x N x C,
    float32: the sum over any window of every photo's map in four lookups. Built `chunk` photos at a time,
    so it costs one float32 copy of the maps and a sixth more."""
    n, c, h, w = maps.shape
    sat = torch.zeros(h + 1, w + 1, n, c)
    for i in range(0, n, chunk):
        part = maps[i:i + chunk].permute(2, 3, 0, 1).float().contiguous()
        part = part if p == 1.0 else part.clamp_(min=1e-6).pow_(p)
        sat[1:, 1:, i:i + chunk] = part.cumsum_(0).cumsum_(1)
    return sat


def pool_power(pool: torch.nn.Module) -> float:
    """The power mean's p of the head's pooling: GeM's p, 1 for average pooling."""
    from petclf.model import GeMPool

    return pool.p if isinstance(pool, GeMPool) else 1.0


def crop_head(maps: torch.Tensor, y: np.ndarray, n_classes: int, pool: torch.nn.Module,
              seed: int = 0, sat: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of the Linear trained on random square windows of `maps` (the body's N x C x H x W
    maps of the training photos), starting from the probe at `CROP_INIT_C`.

    The head pools each window as it pools a whole map: a power mean, `mean(x ** p) ** (1 / p)` (GeM's p; 1
    for average pooling). The window's sum of `x ** p` comes from a summed-area table (`summed_area`): a
    step took 17 ms to slice and average its windows, and takes 0.7 ms so (2 shared cores). Mirror images
    add nothing here: a pooled window of a mirrored map is another window of the map. `sat`: `summed_area`
    of these maps, when made."""
    p = pool_power(pool)
    sat = summed_area(maps, p) if sat is None else sat
    gen = torch.Generator().manual_seed(seed)
    full = pooled_unit(maps, pool).numpy()
    ((w0, b0),) = fit_logreg(full, y, n_classes, [CROP_INIT_C])
    w, b = torch.tensor(w0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=CROP_LR, weight_decay=0.0)
    steps = CROP_EPOCHS * math.ceil(len(y) / CROP_BS)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=CROP_LR, total_steps=steps, pct_start=0.1)
    labels, side = torch.from_numpy(y), min(maps.shape[-2:])
    lo = max(1, math.ceil(CROP_MIN_SIDE * side))
    # one thread: on these small tensors a second one only waits, and on a busy machine it thrashed (the
    # 5-fold
    # estimate on pets-dev took 274 s with 2 threads against 35 s with 1, 2 cores shared by other jobs)
    with torch.enable_grad(), torch_threads(1):
        for _ in range(CROP_EPOCHS):
            for idx in torch.randperm(len(y), generator=gen).split(CROP_BS):
                s = int(torch.randint(lo, side + 1, (1,), generator=gen))
                i = int(torch.randint(0, maps.shape[-2] - s + 1, (1,), generator=gen))
                j = int(torch.randint(0, maps.shape[-1] - s + 1, (1,), generator=gen))
                sums = sat[i + s, j + s][idx] - sat[i, j + s][idx] - sat[i + s, j][idx] + sat[i, j][idx]
                pooled = sums / (s * s)
                if p != 1.0:
                    # rounding must not make a sum of squares negative
                    pooled = pooled.clamp(min=0).pow(1 / p)
                logits = torch.nn.functional.normalize(pooled, dim=1) @ w.T + b
                loss = torch.nn.functional.cross_entropy(logits, labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return w.detach().numpy(), b.detach().numpy()


def crop_head_cv(maps: torch.Tensor, y: np.ndarray, n_classes: int, pool: torch.nn.Module, seed: int = 0,
                 tick: Tick = None, sat: torch.Tensor | None = None) -> tuple[dict, np.ndarray]:
    """The estimate of `crop_head` by 5-fold CV over photos (the probe's outer folds): (the estimate, N x K
    out-of-fold logits, each row from a head that never saw that photo). `sat`: `summed_area` of `maps`,
    when made (each fold takes its photos' part: a third of a head's time went into making it)."""
    sat = summed_area(maps, pool_power(pool)) if sat is None else sat

    def fit_predict(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        wb = crop_head(maps[train], y[train], n_classes, pool, seed, sat[:, :, torch.from_numpy(train)])
        with torch.no_grad():
            return logits_of(pooled_unit(maps[test], pool).numpy(), wb)

    return cross_validate(y, n_classes, fit_predict, OUTER_FOLDS, seed, tick=tick)
