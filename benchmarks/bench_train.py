"""Training throughput: the compute bound, the data pipeline alone and petclf's training loop, on CPU or GPU.

    python -m benchmarks.bench_train                                  # resnet34, 224 px, batch 32, best device here
    python -m benchmarks.bench_train --device cuda --data DIR --epochs 2 --variants --json bench.json  # gpu_check
    python -m benchmarks.bench_train --arch resnet18 --workers 0 1    # (b) and (c) for each worker count

(a)  forward + backward + SGD step, images/s, on random tensors in the device, precision (bf16/fp16 autocast on a
     GPU, fp32 on CPU) and layout (channels_last) petclf trains in: the compute bound;
(a0) the same with the network as timm builds it (fp32, default layout): the reference the CPU goals were set on;
(b)  the data pipeline alone: one pass over petclf's training DataLoader (decode, presize, batch augmentation on the
     device), default workers unless --workers; with --variants also pinned memory, persistent workers and a worker
     per core, built from the same loader (`DataLoader.new`), to measure what each would change;
(c)  petclf's training loop (`petclf.train.train`, random weights, a given LR): training images / seconds of the last
     epoch's training phase (validation excluded, the GPU drained at both ends); the whole epoch's rate is printed too.
On CUDA, each part's peak GPU memory. Without --data, Pets-sized synthetic JPEGs (500 px) are written to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback

from petclf.config import DEFAULT_BS, TrainConfig
from petclf.data import load_data
from petclf.device import Compute, available_cores, default_workers
from petclf.model import build_model
from petclf.recipe import build_dataloaders
from petclf.synth import synth_pets
from petclf.train import resolve_device, train

LOOP_GOAL = 0.9  # (c) >= LOOP_GOAL x min((a), (b)): the loop is bound by compute or decoding, not by petclf
DATA_GOAL = 3.0  # (b) >= DATA_GOAL x (a0) on CPU: a CPU run never waits for its data
WARMUP = 3  # untimed steps first: cudnn picks its kernels, the allocator fills its pools


def sync(device: str) -> None:
    """Wait for the GPU's queued work, so a clock read after it means the work is done."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Start a fresh peak-memory count (CUDA only)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    """Peak GPU memory allocated by tensors since `reset_peak`, in MiB (None off CUDA)."""
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def compute_bound(arch: str, n_classes: int, size: int, bs: int, steps: int, compute: Compute) -> dict:
    """(a) images/s of forward+backward+SGD step on random tensors in `compute`'s precision and layout."""
    device = compute.device
    reset_peak(device)
    layout = torch.channels_last if compute.channels_last else torch.contiguous_format
    model = build_model(arch, n_classes).to(device, memory_format=layout).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, n_classes, (bs,), device=device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(compute.precision)
    kind = torch.device(device).type
    # as fastai's MixedPrecision: autocast for the forward pass and loss; a gradient scaler only for fp16
    scaler = torch.amp.GradScaler(kind, enabled=compute.precision == "fp16")
    for i in range(WARMUP + steps):
        if i == WARMUP:
            sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(kind, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    sync(device)
    return {"img_s": round(steps * bs / (time.perf_counter() - t0), 2), "peak_mib": peak_mib(device),
            "precision": compute.precision, "channels_last": compute.channels_last}


def loader_pass(dl, device: str, passes: int = 1) -> dict:
    """images/s of the last of `passes` passes over `dl` (decoded, transformed, on `device`); its first batch's wait."""
    for _ in range(passes):
        n, first = 0, None
        sync(device)
        t0 = time.perf_counter()
        for xb, _ in dl:
            n += len(xb)
            if first is None:
                first = time.perf_counter() - t0
        sync(device)
        seconds = time.perf_counter() - t0
    return {"img_s": round(n / seconds, 2), "first_batch_s": round(first or 0.0, 3), "images": n}


def data_pipeline(cfg: TrainConfig, pets, device: str, variants: bool = False) -> dict:
    """(b) one pass over petclf's training DataLoader; with `variants`, the same loader with each change the GPU
    issue names (pinned memory, persistent workers, a worker per core), measured one after the other."""
    reset_peak(device)
    dl = build_dataloaders(cfg, pets, device).train
    res = {**loader_pass(dl, device), "workers": dl.fake_l.num_workers, "peak_mib": peak_mib(device)}
    if variants:
        res["variants"] = {name: loader_pass(new_loader(dl, kw, prefetch), device, passes)
                           for name, (kw, passes, prefetch) in loader_variants(device, dl.fake_l.num_workers).items()}
    return res


def loader_variants(device: str, workers: int) -> dict[str, tuple[dict, int, int | None]]:
    """{name: (DataLoader.new kwargs, passes, batches prefetched per worker)}: each change the GPU issue names."""
    cores = available_cores()
    if not device.startswith("cuda"):  # pinned memory only speeds copies to a GPU
        return {f"workers={cores}": ({"num_workers": cores}, 1, None)}
    tries = {"pin_memory": ({"pin_memory": True}, 1, None),
             f"workers={cores}+pin_memory": ({"pin_memory": True, "num_workers": cores}, 1, None),
             f"workers={cores}+pin_memory+prefetch 4": ({"pin_memory": True, "num_workers": cores}, 1, 4)}
    if workers:  # torch refuses persistent workers without workers
        tries["pin_memory+persistent (2nd pass)"] = ({"pin_memory": True, "persistent_workers": True}, 2, None)
    return tries


def new_loader(dl, kw: dict, prefetch: int | None):
    """`dl` rebuilt with `kw`; `prefetch` batches per worker (fastai keeps torch's 2 as a class attribute)."""
    new = dl.new(**kw)
    if prefetch:
        new.fake_l.prefetch_factor = prefetch
    return new


class TrainPhaseTimer(Callback):
    """Images and seconds of each epoch's training phase (validation excluded), the GPU drained at both ends."""

    def __init__(self, device: str):
        self.device, self.epochs = device, []

    def before_train(self):
        sync(self.device)
        self.n, self.t0 = 0, time.perf_counter()

    def after_batch(self):
        if self.training:
            self.n += len(self.xb[0])

    def after_train(self):
        sync(self.device)
        self.epochs.append((self.n, time.perf_counter() - self.t0))


def training_loop(cfg: TrainConfig, device: str) -> dict:
    """(c) training images/s of the last epoch's training phase in `train`; the whole epochs' rate beside it."""
    reset_peak(device)
    timer = TrainPhaseTimer(device)
    res = train(cfg, cbs=[timer])
    n, seconds = timer.epochs[-1]
    return {"img_s": round(n / seconds, 2), "epoch_img_s": res.metrics["images_per_second"],
            "epoch_seconds": [h["seconds"] for h in res.metrics["history"]],
            "train_phase_seconds": [round(s, 3) for _, s in timer.epochs], "peak_mib": peak_mib(device)}


def ratio(x: float | None, y: float | None) -> float | None:
    """x / y, rounded; None if either is missing."""
    return round(x / y, 3) if x and y else None


def bench(args: argparse.Namespace, data: Path, tmp: Path) -> dict:
    """Every measurement, as one JSON-ready dict."""
    base = TrainConfig(data=str(data), arch=args.arch, pretrained=False, bs=args.bs, size=args.size,
                       presize=args.presize, epochs=args.epochs, freeze_epochs=0, lr=1e-3, recipe="fastbook",
                       device=args.device, precision=args.precision, channels_last=args.channels_last,
                       threads=args.threads)
    compute = resolve_device(base)
    pets = load_data(base.data, seed=base.seed)
    n_classes = len(pets.vocab)
    reference = Compute(compute.device, "fp32", False)
    out = {"device": compute.device, "arch": args.arch, "size": args.size, "presize": args.presize, "bs": args.bs,
           "precision": compute.precision, "channels_last": compute.channels_last, "threads": torch.get_num_threads(),
           "cores": available_cores(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "images": {"train": len(pets.train_idx), "valid": len(pets.valid_idx)}, "classes": n_classes,
           "goals": {"loop_over_min_ab": LOOP_GOAL, "data_over_a0_cpu": DATA_GOAL},
           "a": compute_bound(args.arch, n_classes, args.size, args.bs, args.steps, compute),
           "a0": compute_bound(args.arch, n_classes, args.size, args.bs, args.steps, reference), "runs": []}
    a = out["a"]["img_s"]
    for w in args.workers:
        cfg = TrainConfig(**{**base.to_dict(), "workers": w, "out": str(tmp / f"run-w{w}")})
        b = data_pipeline(cfg, pets, compute.device, args.variants)
        c = training_loop(cfg, compute.device)
        bound = min(a, b["img_s"])
        out["runs"].append({"workers": b["workers"], "b": b, "c": c, "c_over_min_ab": ratio(c["img_s"], bound),
                            "c_over_a": ratio(c["img_s"], a), "c_over_a0": ratio(c["img_s"], out["a0"]["img_s"]),
                            "b_over_a0": ratio(b["img_s"], out["a0"]["img_s"]),
                            "bound": "compute (a)" if a <= b["img_s"] else "data (b)",
                            "loop_goal_met": c["img_s"] >= LOOP_GOAL * bound})
    return out


def mib(x: float | None) -> str:
    """' peak 123 MiB' on CUDA, nothing elsewhere."""
    return f"  peak {x:.0f} MiB" if x is not None else ""


def print_report(r: dict) -> None:
    """The figures as a few readable lines."""
    print(f"device {r['device']} ({r['precision']}{', channels_last' if r['channels_last'] else ''}), "
          f"{r['threads']} threads, {r['cores']} cores; {r['arch']} {r['size']} px (presize {r['presize']}), "
          f"batch {r['bs']}; {r['images']['train']} train / {r['images']['valid']} valid images")
    a, a0 = r["a"], r["a0"]
    print(f"(a)  compute bound, petclf's precision + layout: {a['img_s']:8.1f} img/s{mib(a['peak_mib'])}")
    print(f"(a0) the same as timm builds it (fp32, default): {a0['img_s']:8.1f} img/s  "
          f"(a) = {a['img_s'] / a0['img_s']:.2f} x (a0){mib(a0['peak_mib'])}")
    for run in r["runs"]:
        b, c = run["b"], run["c"]
        print(f"workers={run['workers']}:")
        print(f"(b)  data pipeline alone:                        {b['img_s']:8.1f} img/s  "
              f"= {b['img_s'] / a['img_s']:.2f} x (a); first batch after {b['first_batch_s']:.2f} s"
              f"{mib(b['peak_mib'])}")
        for name, v in b.get("variants", {}).items():
            print(f"       {name:<41} {v['img_s']:8.1f} img/s; first batch after {v['first_batch_s']:.2f} s")
        print(f"(c)  training loop (training phase):             {c['img_s']:8.1f} img/s  "
              f"= {run['c_over_min_ab']:.2f} x min((a), (b)) [{run['bound']}] (goal >= {LOOP_GOAL}); "
              f"{run['c_over_a0']:.2f} x (a0){mib(c['peak_mib'])}")
        print(f"     whole epochs (data + train + valid):        {c['epoch_img_s']:8.1f} img/s; epochs "
              f"{', '.join(f'{s:.1f}' for s in c['epoch_seconds'])} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=TrainConfig.arch)
    ap.add_argument("--size", type=int, default=TrainConfig.size)
    ap.add_argument("--presize", type=int, default=TrainConfig.presize)
    ap.add_argument("--bs", type=int, default=DEFAULT_BS)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N, as `petclf train --device`")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16, as `petclf train`")
    ap.add_argument("--channels-last", default="auto", help="auto | on | off, as `petclf train`")
    ap.add_argument("--threads", type=int, help="torch threads on CPU, as `petclf train` (default: every core)")
    ap.add_argument("--data", type=Path, help="image folder to use (default: synthetic 500 px JPEGs)")
    ap.add_argument("--images", type=int, default=160, help="synthetic training images (+25%% validation)")
    ap.add_argument("--steps", type=int, help="timed steps for (a) (default 4 on CPU, 30 on GPU)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of (c); the last one is reported")
    ap.add_argument("--workers", type=lambda s: None if s == "auto" else int(s), nargs="*", default=[None],
                    help="DataLoader workers to try (auto: petclf's default for the device)")
    ap.add_argument("--variants", action="store_true", help="also (b) with pinned memory, persistent workers, "
                                                            "a worker per core")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 30 if args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available()) \
            else 4
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print it, optionally save it as JSON."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data, n_cls = Path(tmp) / "data", 4
            synth_pets(data, n_classes=n_cls, per_class=int(args.images * 1.25) // n_cls, size=500, seed=0)
        r = bench(args, data, Path(tmp))
    r["default_workers"] = default_workers(r["device"])
    print_report(r)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
