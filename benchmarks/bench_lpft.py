"""LP-FT on real photos: petclf's probe, then a short fine-tune of the whole network from it, by 5-fold CV.

    .venv/bin/python -m benchmarks.bench_lpft --data ../shared/pets-dev        # ~4 min on 2 idle cores

LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution"):
fit a linear probe on the frozen features first, then fine-tune every layer starting from the probe's head, so
that the early, large gradients of a random head do not distort the pretrained features.

The folds and the probe are `benchmarks.bench_small_data`'s (stratified 5-fold over photos, seed 0: each fold
trains on 148 photos and tests on 37): per fold, (1) the probe exactly as `petclf train` fits it
(`petclf.probe.fit_probe_cv` on L2-normalised pooled features at 384 px, C by 4-fold CV on the fold's training
photos), then (2) LP-FT: the probe's weight and bias copied into the network's Linear (backbone -> pool -> L2Norm
-> Linear, `build_model`'s `{"kind": "linear", "l2norm": true}` head), every layer fine-tuned on the fold's 148
training photos, and the 37 held-out photos scored at the probe's preprocessing (centre square, 384 px, eval mode).

The fine-tune's hyper-parameters are fixed a priori (below; not chosen on any test fold, and not tuned at all):
AdamW, one learning rate for all layers (LR, in the 1e-5 .. 1e-4 range Kumar et al. and the fine-tuning
literature use for a pretrained body), cosine decay to 0 after a short linear warm-up, weight decay 0.01 on the
body only, plain cross-entropy (no label smoothing: it would pull the probe's logit scale down on its own),
BatchNorm in eval mode (running statistics frozen, affine parameters trained), batch 16, EPOCHS epochs at
FT_SIZE px: random resized crop (scale 0.5-1, ratio 3/4-4/3) of the probe's 384 px centre square + horizontal
flip. FT_SIZE is below the probe's 384 px so that a fold's fine-tune fits the ~60-90 s budget on 2 CPU cores;
random-resized-crop training at a lower resolution than the test resolution is the FixRes setting (Touvron et
al., 2019), where testing larger helps.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.bench_small_data import ARCH, FOLDS, PROBE_SIZE, SEED, load_network
from petclf.labels import breed_of
from petclf.model import efficientnet_lite0_weights, norm_stats
from petclf.preprocess import Preprocess
from petclf.probefit import FEATURE_BS, fit_probe_cv, logits_of, network_features, stratified_folds

FT_SIZE = 288  # fine-tune input size (px); the test input stays the probe's 384
EPOCHS = 2  # passes over the 148 training photos
BS = 16
LR = 5e-5  # all layers (the head starts at the probe's optimum)
WD = 0.01  # body only
WARMUP = 2  # steps of linear warm-up
SCALE, RATIO = (0.5, 1.0), (3 / 4, 4 / 3)  # random resized crop of the 384 px centre square


def random_resized_crop(pixels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """torchvision-style RandomResizedCrop + horizontal flip of each B x 3 x S x S image, resized to `size`."""
    out = []
    side = pixels.shape[-1]
    for img in pixels:
        for _ in range(10):
            area = side * side * float(torch.empty(1).uniform_(*SCALE, generator=gen))
            ratio = math.exp(float(torch.empty(1).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=gen)))
            w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if w <= side and h <= side:
                break
        else:
            w = h = side
        top = int(torch.randint(0, side - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, side - w + 1, (1,), generator=gen))
        crop = F.interpolate(img[None, :, top:top + h, left:left + w], size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
        if float(torch.rand(1, generator=gen)) < 0.5:
            crop = crop.flip(-1)
        out.append(crop)
    return torch.cat(out)


def freeze_bn(net: torch.nn.Module) -> None:
    """Train mode, but every BatchNorm keeps (and uses) its running statistics."""
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def fine_tune(net: torch.nn.Module, pixels: torch.Tensor, y: torch.Tensor, seed: int) -> list[float]:
    """LP-FT's second stage on the training photos' 384 px pixels (N x 3 x 384 x 384): mean loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    head = list(net[1][-1].parameters())
    body = [p for p in net.parameters() if all(p is not q for q in head)]
    opt = torch.optim.AdamW([{"params": body, "weight_decay": WD}, {"params": head, "weight_decay": 0.0}], lr=LR)
    steps = EPOCHS * math.ceil(len(y) / BS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / WARMUP if s < WARMUP else
                                              0.5 * (1 + math.cos(math.pi * (s - WARMUP) / (steps - WARMUP))))
    freeze_bn(net)
    losses = []
    for _ in range(EPOCHS):
        order, total = torch.randperm(len(y), generator=gen), 0.0
        for i in range(0, len(y), BS):
            idx = order[i:i + BS]
            loss = F.cross_entropy(net(random_resized_crop(pixels[idx], FT_SIZE, gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(y))
    net.eval()
    return losses


@torch.inference_mode()
def test_logits(net: torch.nn.Module, pixels: torch.Tensor) -> np.ndarray:
    """The network's logits on preprocessed pixels, eval mode (what the predictor computes)."""
    net.eval()
    return torch.cat([net(pixels[i:i + FEATURE_BS]) for i in range(0, len(pixels), FEATURE_BS)]).numpy()


def run(data: Path, weights: Path) -> dict[str, list[float]]:
    """Per-fold errors and times of the probe and of LP-FT from it (printed as it goes)."""
    files = sorted(p for p in data.rglob("*.jpg") if breed_of(p))
    classes = sorted({breed_of(p) for p in files})
    y = np.array([classes.index(breed_of(p)) for p in files])
    mean, std = norm_stats(ARCH)
    print(f"{len(files)} photos, {len(classes)} breeds; {FOLDS}-fold CV over photos (seed {SEED}); torch threads "
          f"{torch.get_num_threads()}; LP-FT: {EPOCHS} epochs at {FT_SIZE} px, batch {BS}, AdamW lr {LR:g}, "
          f"wd {WD:g}, BN frozen; test at {PROBE_SIZE} px")
    t0 = time.monotonic()
    pixels = torch.from_numpy(Preprocess(PROBE_SIZE, PROBE_SIZE, tuple(mean), tuple(std))(files))
    x = network_features(load_network(weights, len(classes), True), list(range(len(files))),
                         lambda idx: pixels[idx].numpy())
    feature_s = time.monotonic() - t0
    print(f"decode + features of {len(files)} photos at {PROBE_SIZE} px: {feature_s:.1f} s wall "
          f"({feature_s * 148 / len(files):.1f} s for a fold's 148)", flush=True)
    res: dict[str, list[float]] = {k: [] for k in ("probe", "lpft", "probe_s", "ft_s", "test_s", "c", "loss0",
                                                   "loss1")}
    for i, test in enumerate(stratified_folds(y, FOLDS, SEED)):
        train = np.setdiff1d(np.arange(len(y)), test)
        t0 = time.monotonic()
        fit = fit_probe_cv(x[train], y[train], len(classes), estimate=False)
        res["probe_s"].append(time.monotonic() - t0)
        res["probe"].append(float((logits_of(x[test], (fit.weight, fit.bias)).argmax(1) != y[test]).mean()))
        res["c"].append(fit.c)
        net = load_network(weights, len(classes), True)
        with torch.no_grad():
            net[1][-1].weight.copy_(torch.from_numpy(fit.weight))
            net[1][-1].bias.copy_(torch.from_numpy(fit.bias))
        torch.manual_seed(SEED + i)
        t0 = time.monotonic()
        losses = fine_tune(net, pixels[train], torch.from_numpy(y[train]), SEED + i)
        res["ft_s"].append(time.monotonic() - t0)
        t0 = time.monotonic()
        res["lpft"].append(float((test_logits(net, pixels[test]).argmax(1) != y[test]).mean()))
        res["test_s"].append(time.monotonic() - t0)
        res["loss0"].append(losses[0])
        res["loss1"].append(losses[-1])
        print(f"fold {i}: probe {res['probe'][-1]:.3f} (C {fit.c:g}, fit {res['probe_s'][-1]:.1f} s); LP-FT "
              f"{res['lpft'][-1]:.3f} (fine-tune {res['ft_s'][-1]:.1f} s, train loss per epoch "
              f"{' '.join(f'{v:.3f}' for v in losses)}; test pass {res['test_s'][-1]:.1f} s)", flush=True)
    res["feature_s"] = [feature_s]
    return res


def summary(res: dict[str, list[float]]) -> None:
    """Means, the paired difference and the time per fold."""
    n = len(res["probe"])
    for name in ("probe", "lpft"):
        e = res[name]
        print(f"{name:<6} mean error {statistics.mean(e):.4f} (std {statistics.pstdev(e):.3f}); folds "
              f"{' '.join(f'{v:.3f}' for v in e)}")
    diff = [b - a for a, b in zip(res["probe"], res["lpft"], strict=True)]
    se = statistics.stdev(diff) / math.sqrt(n) if n > 1 else float("nan")
    print(f"paired LP-FT - probe: {statistics.mean(diff):+.4f} (s.e. {se:.4f}); per fold "
          f"{' '.join(f'{v:+.3f}' for v in diff)}")
    feat = res["feature_s"][0] * 148 / 185
    print(f"time per fold (wall, 2 shared cores): probe = features {feat:.0f} s + fit "
          f"{statistics.mean(res['probe_s']):.0f} s; LP-FT adds fine-tune {statistics.mean(res['ft_s']):.0f} s "
          f"(max {max(res['ft_s']):.0f} s) + test pass {statistics.mean(res['test_s']):.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder of <breed>_<n>.jpg photos")
    ap.add_argument("--weights", type=Path, help="tf_efficientnet_lite0 timm weights (default: converted here)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or efficientnet_lite0_weights(Path(tmp) / "lite0.safetensors")
        t0 = time.monotonic()
        summary(run(args.data, weights))
    print(f"total {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
