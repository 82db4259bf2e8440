"""Where and how the network runs: device, mixed precision, memory layout and CPU threads, chosen once per
run.

    from petclf.device import machine_device, resolve_compute
    machine_device("auto")              # 'cuda' > 'mps' > 'cpu', whatever this machine has
    resolve_compute(cfg)                # Compute(device, precision, channels_last), threads set on CPU

The `pick_*` functions are plain logic over what a machine has, so they are tested without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from petclf.errors import PetclfError


def pick_device(requested: str, cuda: bool, mps: bool) -> str:
    """`auto` -> cuda > mps > cpu; an explicit choice is checked against what exists."""
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested.startswith("cuda") and not cuda:
        raise PetclfError(f"--device {requested}: no CUDA GPU is available (use --device cpu or auto)")
    if requested == "mps" and not mps:
        raise PetclfError("--device mps: Apple MPS is not available (use --device cpu or auto)")
    if requested != "cpu" and not requested.startswith(("cuda", "mps")):
        raise PetclfError(f"--device must be auto, cpu, mps, cuda or cuda:N, got {requested!r}")
    return requested


def machine_device(requested: str = "auto") -> str:
    """`pick_device` against what this machine has (training, the report's evaluation, prediction)."""
    import torch

    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return pick_device(requested, torch.cuda.is_available(), mps)


def pick_precision(device: str, requested: str, bf16_ok: bool) -> str:
    """`auto`: bf16 on a GPU that has it, else fp16 on GPU; fp32 on CPU and MPS."""
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "fp32"
    return "bf16" if bf16_ok else "fp16"


def pick_channels_last(device: str, requested: str) -> bool:
    """`auto`: channels_last on CUDA (tensor cores) and CPU (oneDNN: resnet34 trained 1.2-1.4 x,
    EfficientNet-Lite0 1.7 x faster on 2 cores, BENCHMARKS.md); not on MPS, where its support is uneven."""
    return requested == "on" or (requested == "auto" and not device.startswith("mps"))


def pick_threads(cores: int, requested: int | None = None) -> int:
    """Torch intra-op threads: `requested`, else every core this process may use (at least 1)."""
    return max(1, requested if requested else cores)


def pick_feature_backend(device: str, onnxruntime: bool) -> str:
    """What computes the probe's features: onnxruntime on a CPU that has it (2x faster than torch there,
    BENCHMARKS.md), torch on a GPU (the features on the device) or without onnxruntime."""
    return "onnxruntime" if device == "cpu" and onnxruntime else "torch"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to `n` inside the block, then back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(device: str, cores: int | None = None) -> int:
    """DataLoader workers: on CPU none (a worker steals cores from compute: benchmarks/bench_train.py measured
    the loop slower with 1 worker than with 0 on 2 cores); on GPU every core up to 8."""
    cores = cores or available_cores()
    return 0 if device == "cpu" else min(8, cores)


class Compute(NamedTuple):
    """Where and how the network runs: resolved once per run from the settings and this machine."""

    device: str
    precision: str
    channels_last: bool


def resolve_compute(device: str = "auto", precision: str = "auto", channels_last: str = "auto",
                    threads: int | None = None, local_rank: int = 0, local_processes: int = 1) -> Compute:
    """Device, precision and layout for this machine; on CPU the torch threads are set (processes on one
    machine share its cores). `local_rank` picks the GPU of one of several processes."""
    import torch

    device = machine_device(device)
    if device == "cuda" and local_processes > 1:
        device = f"cuda:{local_rank}"  # one GPU per process
    bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
    if device == "cpu":
        torch.set_num_threads(pick_threads(available_cores() // local_processes, threads))
    return Compute(device, pick_precision(device, precision, bf16), pick_channels_last(device, channels_last))
