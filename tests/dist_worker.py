"""One rank of the 2-process test in test_distributed.py, started by `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 tests/dist_worker.py DATA BASE

Each rank works in its own folder BASE/rank<N> (the run directory is relative to it), so a file written by a rank
other than 0 shows up there. It records the training indices every epoch gave it and a hash of its final weights
in BASE/record<N>.json, outside both folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from fastai.callback.core import Callback

from petclf.config import resolve_config
from petclf.distributed import rank
from petclf.train import train


class ShardRecorder(Callback):
    """Wraps the (distributed) training DataLoader's get_idxs to record the indices this rank is given."""

    order = 20  # after fastai's DistributedTrainer (11) has wrapped the DataLoader

    def __init__(self):
        self.epochs: list[list[int]] = []

    def before_train(self):
        dl = self.learn.dl
        if getattr(dl, "_recorded", False):
            return
        inner = dl.get_idxs

        def get_idxs():
            idxs = list(inner())
            self.epochs.append([int(i) for i in idxs])
            return idxs

        dl.get_idxs, dl._recorded = get_idxs, True


def weights_hash(model) -> str:
    """SHA-1 over every tensor of the state dict, in order."""
    h = hashlib.sha1()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(data: str, base: str) -> None:
    work = Path(base) / f"rank{rank()}"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    cfg = resolve_config(data=data, arch="resnet18", pretrained=False, size=32, presize=40, bs=8, epochs=1,
                         freeze_epochs=1, recipe="fastbook", lr_find_steps=5, workers=0, out="run", seed=0)
    rec = ShardRecorder()
    result = train(cfg, cbs=[rec])
    record = {"rank": rank(), "world_size": int(os.environ.get("WORLD_SIZE", 1)), "epochs": rec.epochs,
              "n_train": len(result.learn.dls.train.dataset), "hash": weights_hash(result.learn.model),
              "lr": result.metrics.get("lr")}
    (Path(base) / f"record{rank()}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:3])
