"""Multi-process training through fastai's own Accelerate integration (`learn.distrib_ctx()`).

    accelerate launch --num_processes 2 -m petclf train --data data/oxford-iiit-pet      # 2 GPUs, one machine
    torchrun --nproc_per_node 2 -m petclf train --data ...                              # the same with torchrun
    accelerate launch --cpu --num_processes 2 -m petclf train ...                       # CPU processes (gloo)
`--bs` is per process: the global batch is bs x processes, and the learning rate is used as given (not
scaled), which is what fastai and Accelerate do. Rank 0 alone downloads, runs lr_find, prints and writes
files; the other ranks wait for it where they must and receive its results.
fastai's `DistributedDL` broadcasts its shuffled indices with `.cuda()` tensors (NCCL needs them); on the gloo
backend (CPU processes) that fails, so `patch_fastai_for_gloo` makes the broadcast use the backend's own
device. SyncBatchNorm only runs on GPUs, so it is requested only there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from petclf.errors import PetclfError

T = TypeVar("T")


def _state():
    """Accelerate's view of this process (rank, world size); joins the process group when launched as
    several."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def world_size() -> int:
    """Number of training processes (1 when not launched by accelerate/torchrun)."""
    return _state().num_processes


def rank() -> int:
    """This process's global rank (0 when not distributed): the process group's own word once it is joined."""
    return dist.get_rank() if dist.is_initialized() else _state().process_index


def local_rank() -> int:
    """This process's rank on its machine (selects its GPU)."""
    return _state().local_process_index


def local_world_size() -> int:
    """Number of training processes on this machine (they share its CPU cores); Accelerate does not say."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def is_distributed() -> bool:
    """True when launched as one of several processes."""
    return world_size() > 1


def is_main() -> bool:
    """True on the process that downloads, prints and writes files."""
    return rank() == 0


def _backend_device() -> torch.device:
    """The device the process group's collectives need: CUDA for NCCL, CPU for gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def patch_fastai_for_gloo() -> None:
    """Make fastai's DistributedDL broadcast its indices on the backend's device instead of always CUDA."""
    from fastai.distributed import DistributedDL

    if getattr(DistributedDL._broadcast, "_petclf", False):
        return

    def _broadcast(self, t, rank):
        t = torch.tensor(t, dtype=torch.long, device=_backend_device())
        dist.broadcast(t, rank)
        return t.cpu().tolist()

    _broadcast._petclf = True
    DistributedDL._broadcast = _broadcast


def init_process_group() -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs) if launched as several processes and not yet
    joined."""
    if not is_distributed():  # _state() has joined it: Accelerate's own setup (backend, device, env:// rendezvous)
        return
    patch_fastai_for_gloo()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DistributedDataParallel wrapper (itself when not wrapped)."""
    return getattr(model, "module", model)


def barrier() -> None:
    """Wait for all processes (no-op when not distributed)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast(value: T, src: int = 0) -> T:
    """`value` from rank `src` on every rank (any picklable object; no-op when not distributed).

    torch's own collective, not Accelerate's `broadcast_object_list`: that one asks `PartialState` whether the
    run is distributed, which says no in a process group joined without Accelerate's variables, and silently
    returns."""
    if not dist.is_initialized():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def leave_group() -> None:
    """Leave the process group after a failure ends the run: a group whose peers are exiting, left to Python's
    exit, can make gloo's threads abort the process (SIGABRT instead of exit code 1; 1 run in 6 on 2
    cores)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def main_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 first (downloads, caches), then on the others once it is done.

    If it fails on rank 0, the other ranks raise too, saying why, instead of waiting on a peer that has gone
    (NCCL waits out its timeout; gloo reports a closed connection).
    """
    if not dist.is_initialized():
        return fn()
    if not is_main():
        failed = broadcast(None)
        if failed:
            leave_group()
            raise PetclfError(f"rank 0 failed, so this rank stops too: {failed}")
        return fn()
    try:
        result = fn()
    except BaseException as e:
        broadcast(f"{type(e).__name__}: {e}")
        leave_group()
        raise
    broadcast(None)
    return result


@contextmanager
def this_process_only() -> Iterator[None]:
    """Let fastai work on this process alone (lr_find, the probe, the final export) while the others wait.

    fastai gathers every metric across processes whenever WORLD_SIZE > 1, which would block on ranks that are
    not taking part; it reads WORLD_SIZE afresh at each call, so hiding it for the duration is enough.
    """
    saved = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = saved


@contextmanager
def distrib_ctx(learn) -> Iterator[Any]:
    """fastai's `learn.distrib_ctx()` when distributed (SyncBatchNorm on GPUs only), else nothing."""
    if not is_distributed():
        yield learn
        return
    import fastai.distributed  # noqa: F401 - patches Learner.distrib_ctx

    init_process_group()
    with learn.distrib_ctx(sync_bn=torch.cuda.is_available()):
        yield learn
