"""The frozen body that computes the probe's features, on the fastest backend this machine has, and what a
cached feature is keyed by.

    from petclf.features import feature_body, feature_spec
    body = feature_body(net, 384, "cpu", cache)    # onnxruntime on the exported body (CPU), else torch
    maps = body.run(batch)                         # normalised N x 3 x 384 x 384 float32 -> N x C x H x W tensor
    spec = feature_spec(net, pre, body)            # with a file's SHA-256: the key of its cache entry
On 2 CPU cores onnxruntime ran EfficientNet-Lite0's body at 384 px in 3.3 CPU s per 32 photos against 15.4 for
torch and 8.2 for torch in the channels_last layout (the same maps within 6e-5 on values up to 6;
BENCHMARKS.md). The exported body is kept in the feature cache, keyed by its weights, so a later run does not
export it again. Cached features are keyed by the backend (and its version) that made them: backends agree
only within a tolerance.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from petclf.device import pick_feature_backend
from petclf.featcache import FeatureCache
from petclf.io import atomic_path, sha256_file, write_atomic
from petclf.onnx import OPSET, OnnxNet, export_module
from petclf.run import say


class Body(NamedTuple):
    """The frozen body as a function of a preprocessed batch, and the backend that runs it (versions
    included)."""

    run: Callable[[np.ndarray], torch.Tensor]
    backend: str


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and bytes of every parameter and buffer)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def feature_spec(net: torch.nn.Module, pre, body: Body) -> dict:
    """Everything but the photo's bytes that determines its features: the body's weights, the pooling before
    the Linear, the preprocessing, the image decoder's version and the backend."""
    import PIL

    return {"weights": weights_digest(net[0]), "arch": type(net[0].model).__name__, "head": repr(net[1][:-1]),
            "pre": repr(pre), "pillow": PIL.__version__, "backend": body.backend}


def torch_body(net: torch.nn.Module, device: str) -> Body:
    """The body on `device` in torch, channels_last but on MPS (CPU: 1.9x faster than the default layout)."""
    body, dev = net[0], torch.device(device)
    layout = torch.channels_last if dev.type != "mps" else torch.contiguous_format
    body.to(memory_format=layout)

    def run(x: np.ndarray) -> torch.Tensor:
        return body(torch.from_numpy(x).to(dev).contiguous(memory_format=layout))

    return Body(run, f"torch {torch.__version__} {dev.type}" + (" channels_last" if dev.type != "mps" else ""))


def exported_body(net: torch.nn.Module, size: int, folder: Path) -> Path:
    """The body as ONNX in `folder`, exported once per weights, input size and torch version; a file whose
    checksum does not match its note is exported again."""
    key = hashlib.sha256(json.dumps([weights_digest(net[0]), type(net[0].model).__name__, size, OPSET,
                                     torch.__version__]).encode()).hexdigest()[:32]
    path, note = folder / f"body-{key}.onnx", folder / f"body-{key}.json"
    try:
        if json.loads(note.read_text())["sha256"] == sha256_file(path):
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    with atomic_path(path) as tmp:
        export_module(net[0].eval(), size, tmp, outputs=("maps",))
        digest = sha256_file(tmp)
    write_atomic(note, json.dumps({"sha256": digest}))
    return path


def onnx_body(net: torch.nn.Module, size: int, cache: FeatureCache | None) -> Body:
    """The body exported to ONNX (kept in `cache`, else a temp folder) and run by onnxruntime on the torch
    threads' count of cores (its idle threads sleep: a busy machine is not thrashed)."""
    import onnxruntime

    if cache is not None:
        session = OnnxNet(exported_body(net, size, cache.root / "bodies"), threads=torch.get_num_threads())
    else:
        with tempfile.TemporaryDirectory(prefix="petclf-body-") as tmp:  # the session holds the graph in memory
            session = OnnxNet(exported_body(net, size, Path(tmp)), threads=torch.get_num_threads())
    return Body(lambda x: torch.from_numpy(session(x)),
                f"onnxruntime {onnxruntime.__version__} opset {OPSET} from torch {torch.__version__}")


def has_onnxruntime() -> bool:
    """Whether onnxruntime can be imported here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def feature_body(net: torch.nn.Module, size: int, device: str, cache: FeatureCache | None) -> Body:
    """The body for `size` px inputs on the backend `pick_feature_backend` chooses for `device`; torch when
    the export fails (a body onnx cannot express)."""
    net.eval()
    if pick_feature_backend(device, has_onnxruntime()) == "onnxruntime":
        try:
            return onnx_body(net, size, cache)
        except Exception as e:  # noqa: BLE001 - torch computes the same features, only slower
            say(f"warning: features by torch, not onnxruntime: {type(e).__name__}: {e}")
    return torch_body(net, device)
