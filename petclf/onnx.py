"""ONNX export of a bundle for onnxruntime, checked against the torch network before it is kept.

    petclf export --onnx --model exports/latest      # writes model.onnx + model.onnx.json beside the bundle
    petclf predict photos/ --onnx                    # then predict with onnxruntime

    from petclf.onnx import export_onnx
    info = export_onnx("exports/latest")             # {'file', 'sha256', 'max_abs_diff', 'max_abs_logit', ...}

The graph takes the normalised input batch (any batch size) and returns logits; the temperature is applied
outside it, so recalibrating a bundle does not require a new export. `model.onnx.json` records the ONNX file's
checksum and the weights' checksum, so a stale or tampered graph is refused at load time.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from petclf.errors import PetclfError

OPSET = 17  # onnxruntime >= 1.14 runs it; every op a timm CNN + fastai head uses exists there
RTOL = 1e-4  # largest torch/onnxruntime logit difference accepted at export, relative to the largest |logit|


def _export_graph(net: torch.nn.Module, size: int, path: Path, opset: int) -> None:
    """The TorchScript-based exporter (the dynamo one needs `onnxscript`), batch dimension dynamic."""
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices are not the user's concern
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def check_onnx(net: torch.nn.Module, path: Path, size: int, n: int = 3, seed: int = 0) -> tuple[float, float]:
    """(largest |logit difference| between torch and onnxruntime, largest |logit|) on `n` random inputs.

    Random inputs can drive a head fitted by the probe recipe to logits in the thousands, where float32 rounding
    alone differs by 1e-3; the difference is judged against that scale (`RTOL`), not as an absolute number.
    """
    from petclf.predict import OnnxNet

    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = net(x).float()
    return float((OnnxNet(path)(x) - ref).abs().max()), float(ref.abs().max())


def match_summary(info: dict[str, Any]) -> str:
    """How closely an export matched torch, for a log line."""
    return f"max |logit diff| vs torch {info['max_abs_diff']:.2g} on logits up to {info['max_abs_logit']:.3g}"


def export_onnx(model_dir: str | Path, opset: int = OPSET, rtol: float = RTOL) -> dict[str, Any]:
    """Write `model.onnx` beside the bundle in `model_dir` once it matches torch within `rtol`; returns its info."""
    from petclf.bundle import atomic_path, load_network, sha256_file, write_atomic
    from petclf.predict import ONNX_INFO_NAME, ONNX_NAME

    model_dir = Path(model_dir)
    net, manifest = load_network(model_dir)
    size = int(manifest["input"]["size"])
    with atomic_path(model_dir / ONNX_NAME) as tmp:
        _export_graph(net, size, tmp, opset)
        diff, scale = check_onnx(net, tmp, size)
        if not diff <= rtol * max(1.0, scale):
            raise PetclfError(f"ONNX export differs from torch by {diff:.2g} on logits up to {scale:.3g} (more than "
                              f"{rtol:g} of them); model.onnx not written")
        info = {"file": ONNX_NAME, "sha256": sha256_file(tmp), "weights_sha256": manifest["weights"]["sha256"],
                "opset": opset, "input_size": size, "max_abs_diff": diff, "max_abs_logit": scale, "rtol": rtol,
                "torch": torch.__version__.split("+")[0]}
    write_atomic(model_dir / ONNX_INFO_NAME, json.dumps(info, indent=1))
    return info
