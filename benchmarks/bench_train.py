"""Training throughput on this machine: compute bound vs petclf's loop vs the data pipeline alone.

    .venv/bin/python benchmarks/bench_train.py                      # resnet34, 224 px, batch 32 (a few minutes)
    .venv/bin/python benchmarks/bench_train.py --arch resnet18 --workers 0 1

(a) forward+backward images/s on random tensors, the network as timm builds it (fp32, contiguous layout): the
    issue's compute bound; (a') the same in channels_last, the layout petclf trains in on CPU and CUDA;
(b) petclf's training loop (`petclf.train.train`, one epoch, random weights) on real-size JPEGs (500 px, like
    Pets), including data loading and validation: training images / seconds of the epoch;
(c) the data pipeline alone: one pass over the training DataLoader (decode, presize, batch augmentation).
Goals: (b) >= 0.9 x (a), (c) >= 3 x (a). (b) / (a') is printed too: the loop's own overhead (data + validation).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petclf.config import TrainConfig  # noqa: E402
from petclf.data import load_pets
from petclf.model import build_model  # noqa: E402
from petclf.synth import synth_pets  # noqa: E402
from petclf.train import build_dataloaders, resolve_device, train  # noqa: E402


def compute_bound(arch: str, size: int, bs: int, steps: int, device: str, channels_last: bool = False) -> float:
    """(a) images/s of forward+backward+SGD step on random tensors, after one warm-up step."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(arch, 37).to(device, memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 37, (bs,), device=device)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * bs / (time.perf_counter() - t0)


def data_pipeline(cfg: TrainConfig, device: str) -> float:
    """(c) images/s of one pass over the training DataLoader, batch transforms included."""
    dls = build_dataloaders(cfg, load_pets(cfg.data, seed=cfg.seed), device)
    n, t0 = 0, time.perf_counter()
    for xb, _ in dls.train:
        n += len(xb)
    return n / (time.perf_counter() - t0)


def training_loop(cfg: TrainConfig) -> float:
    """(b) training images / seconds of one epoch of `train` (data loading and validation included)."""
    res = train(cfg)
    epoch = res.metrics["history"][-1]
    return res.metrics["images_per_second"] if epoch else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=TrainConfig.arch)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--bs", type=int, default=32)
    ap.add_argument("--images", type=int, default=160, help="training images (+25%% validation)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps for (a)")
    ap.add_argument("--workers", type=int, nargs="*", default=[None], help="DataLoader workers to try (None: auto)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        n_cls = 4
        synth_pets(data, n_classes=n_cls, per_class=int(args.images * 1.25) // n_cls, size=500, seed=0)
        base = TrainConfig(data=str(data), arch=args.arch, pretrained=False, bs=args.bs, size=args.size,
                           epochs=1, freeze_epochs=0, lr=1e-3, recipe="fastbook")
        device = resolve_device(base).device
        a = compute_bound(args.arch, args.size, args.bs, args.steps, device)
        a_cl = compute_bound(args.arch, args.size, args.bs, args.steps, device, channels_last=True)
        print(f"device {device}, {torch.get_num_threads()} threads; {args.arch} {args.size} px batch {args.bs}")
        print(f"(a)  forward+backward on random tensors:          {a:7.1f} img/s")
        print(f"(a') same, channels_last:                          {a_cl:7.1f} img/s  = {a_cl / a:.2f} x (a)")
        for w in args.workers:
            cfg = TrainConfig(**{**base.to_dict(), "workers": w, "out": str(Path(tmp) / f"run-w{w}")})
            c = data_pipeline(cfg, device)
            b = training_loop(cfg)
            print(f"workers={w if w is not None else 'auto'}:")
            print(f"(b) petclf training loop (data + train + valid): {b:7.1f} img/s  = {b / a:.2f} x (a)  "
                  f"(goal >= 0.9); {b / a_cl:.2f} x (a')")
            print(f"(c) data pipeline alone:                          {c:7.1f} img/s  = {c / a:.2f} x (a)  "
                  f"(goal >= 3)")


if __name__ == "__main__":
    main()
