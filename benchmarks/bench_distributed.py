"""Training throughput with 1 vs 2 processes (fastai + Accelerate, gloo on CPU), and the per-step sync cost.

    .venv/bin/python -m benchmarks.bench_distributed                      # resnet18, 96 px, 2 epochs
    .venv/bin/python -m benchmarks.bench_distributed --arch resnet34 --size 128

Both runs train the same synthetic data through `petclf.train.train` with the same per-process batch size (so the
2-process run's global batch is twice as large, as under `accelerate launch`). Reported per run: images/s over the
whole fit (validation included), mean time of one training step, and — in the 2-process run — the time of one
all-reduce of a gradient-sized buffer, which bounds what DistributedDataParallel adds to each step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, free_port


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--bs", type=int, default=16, help="per process")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--worker", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def step_timer():
    """A fastai callback recording the wall time of every training step (forward, backward, optimizer, sync)."""
    from fastai.callback.core import Callback

    class StepTimer(Callback):
        order = 99

        def __init__(self):
            self.times: list[float] = []

        def before_batch(self):
            if self.training:
                self.t0 = time.perf_counter()

        def after_batch(self):
            if self.training:
                self.times.append(time.perf_counter() - self.t0)

    return StepTimer()


def allreduce_seconds(model, repeats: int = 20) -> float | None:
    """Mean time of one all-reduce of a float32 buffer as large as the model's trainable parameters."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    n = sum(p.numel() for p in model.parameters())
    buf = torch.zeros(n)
    dist.all_reduce(buf)  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(buf)
    return (time.perf_counter() - t0) / repeats


def worker(args: argparse.Namespace) -> None:
    """One process of a run: train, then (rank 0) write the measurements as JSON."""
    import torch

    from petclf import distributed
    from petclf.config import resolve_config
    from petclf.train import train

    data, out = args.worker
    cfg = resolve_config(data=data, arch=args.arch, pretrained=False, size=args.size, presize=args.size + 16,
                         bs=args.bs, epochs=args.epochs, freeze_epochs=0, lr=2e-3, recipe="fastbook", workers=0,
                         out=str(Path(out) / "run"), seed=0)
    timer = step_timer()
    result = train(cfg, cbs=[timer])
    sync = allreduce_seconds(result.learn.model)
    steps = timer.times[2:] or timer.times  # the first steps warm up allocators and kernels
    if distributed.is_main():
        (Path(out) / "result.json").write_text(json.dumps({
            "processes": distributed.world_size(), "threads": torch.get_num_threads(),
            "images_per_second": result.metrics["images_per_second"],
            "step_seconds": sum(steps) / len(steps), "steps_per_epoch": len(timer.times) // args.epochs,
            "allreduce_seconds": sync}))


def run(processes: int, data: Path, out: Path, argv: list[str]) -> dict:
    """Start a run of `processes` processes (a plain process for 1, `accelerate launch` for more), each running
    this module from the repository root, as `python -m` does."""
    me = [__spec__.name, *argv, "--worker", str(data), str(out)]
    if processes == 1:
        cmd = [sys.executable, "-m", *me]
    else:
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "--module", *me]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
    return json.loads((out / "result.json").read_text())


def main() -> None:
    args = parse_args()
    if args.worker:
        return worker(args)
    from petclf.synth import synth_pets

    argv = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synth_pets(data, n_classes=args.classes, per_class=args.per_class, size=args.size + 32, seed=0)
        results = []
        for n in (1, 2):
            out = Path(tmp) / f"p{n}"
            out.mkdir()
            results.append(run(n, data, out, argv))
    one, two = results
    print(f"{args.arch} at {args.size} px, {args.classes * args.per_class} images, bs {args.bs} per process, "
          f"{args.epochs} epochs, {os.cpu_count()} cores (petclf splits them between processes)")
    print(f"{'processes':>9} {'threads':>7} {'images/s':>9} {'step ms':>8} {'steps/epoch':>11} {'all-reduce ms':>13}")
    for r in results:
        ar = f"{1000 * r['allreduce_seconds']:.1f}" if r["allreduce_seconds"] else "-"
        print(f"{r['processes']:>9} {r['threads']:>7} {r['images_per_second']:>9.1f} {1000 * r['step_seconds']:>8.1f} "
              f"{r['steps_per_epoch']:>11} {ar:>13}")
    print(f"speed-up 2 vs 1 process: {two['images_per_second'] / one['images_per_second']:.2f}x; "
          f"step time 2 vs 1: {two['step_seconds'] / one['step_seconds']:.2f}x; "
          f"all-reduce / 2-process step: {two['allreduce_seconds'] / two['step_seconds']:.2f}")


if __name__ == "__main__":
    main()
