"""ONNX export of a bundle for onnxruntime, checked against the torch network before it is kept, and the
onnxruntime network the predictor runs.

    petclf export --onnx --model exports/latest      # writes model.onnx + model.onnx.json beside the bundle
    petclf predict photos/ --onnx                    # then predict with onnxruntime

    from petclf.onnx import export_onnx
    info = export_onnx("exports/latest")             # {'file', 'sha256', 'max_abs_diff', ...}

The graph takes the normalised input batch (any batch size) and returns logits; the temperature is applied
outside it. `model.json` pins the ONNX file's checksum (beside the weights' checksum) and `model.onnx.json`
records the weights it was made from, so a stale, swapped or tampered graph is refused at load time. Loading
and running need numpy and onnxruntime only; exporting needs torch.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petclf.bundle import (
    MANIFEST_NAME,
    Manifest,
    load_network,
    pin_onnx,
    resolve_bundle_dir,
    verify_weights,
    weights_path,
)
from petclf.device import available_cores
from petclf.errors import BundleError, PetclfError
from petclf.io import atomic_path, sha256_file, verify_sha256, write_atomic

if TYPE_CHECKING:
    import torch

ONNX_NAME = "model.onnx"  # written beside the bundle by training and by `petclf export --onnx`
ONNX_INFO_NAME = "model.onnx.json"  # checksum of model.onnx and of the weights it was made from
OPSET = 17  # onnxruntime >= 1.14 runs it; every op a timm CNN + fastai head uses exists there
RTOL = 1e-4  # largest torch/onnxruntime logit difference accepted at export, relative to the largest |logit|

log = logging.getLogger("petclf.onnx")


class OnnxNet:
    """An onnxruntime session with the predictor's network interface: float32 batch in, logits out (numpy)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # conv+BN+ReLU fusion etc.
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL  # a CNN is one chain: no parallel branches
        opts.intra_op_num_threads = threads or available_cores()
        opts.inter_op_num_threads = 1
        # idle pool threads sleep instead of spinning: on a few shared cores the spinning steals the cycles
        # that decode threads and the web server need (measured: one image faster, batches the same)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for a preprocessed batch (onnxruntime releases the GIL while it runs)."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, pooled features) of a preprocessed batch; features None in graphs made before them."""
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})
        return out[0], (out[1] if len(out) > 1 else None)


# ---------------------------------------------------------------------------------------------------- loading


def onnx_path(model_dir: str | Path) -> Path:
    """Where the ONNX graph of a bundle lives."""
    return Path(model_dir) / ONNX_NAME


def verified_onnx(model_dir: Path, manifest: Manifest) -> Path:
    """The bundle's model.onnx, after checking it is the graph model.json pins (beside the weights' checksum)
    and made from these very weights. model.onnx.json alone cannot vouch for a graph: anyone who swaps the
    graph can rewrite it too."""
    path, info_path = onnx_path(model_dir), model_dir / ONNX_INFO_NAME
    if not path.is_file() or not info_path.is_file():
        raise BundleError(f"no {ONNX_NAME} in {model_dir}: run `petclf export --onnx --model {model_dir}`")
    pin = manifest.onnx
    if not pin or pin["file"] != ONNX_NAME:
        raise BundleError(f"{ONNX_NAME} in {model_dir} is not pinned in {MANIFEST_NAME} (made by an older "
                          f"petclf): run `petclf export --onnx --model {model_dir}`")
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, RecursionError):
        raise BundleError(f"corrupt model file: {info_path} is not valid JSON") from None
    if not isinstance(info, dict) or info.get("weights_sha256") != manifest.weights["sha256"]:
        raise BundleError(f"{ONNX_NAME} in {model_dir} was made from other weights: run `petclf export --onnx` "
                          "again")
    verify_sha256(path, pin["sha256"])
    weights = weights_path(model_dir, manifest)
    if weights.is_file():  # the graph is intact, but a bundle with tampered weights is refused whole
        verify_weights(weights, manifest)
    return path


def auto_onnx(model_dir: str | Path, manifest: Manifest, device: str = "cpu") -> Path | None:
    """What `backend="auto"` runs with onnxruntime: the verified model.onnx on CPU (faster), else None."""
    if device != "cpu" or not onnx_path(model_dir).is_file():
        return None
    try:
        import onnxruntime  # noqa: F401
        return verified_onnx(Path(model_dir), manifest)
    except ImportError:
        return None
    except BundleError as e:
        log.warning("using torch, not onnxruntime: %s", e)
        return None


# ---------------------------------------------------------------------------------------------------- export


def export_module(module: torch.nn.Module, size: int, path: Path, opset: int = OPSET,
                  outputs: tuple[str, ...] = ("output",)) -> None:
    """`module` on `size` px inputs as ONNX at `path`: the TorchScript-based exporter (the dynamo one needs
    `onnxscript`), batch dimension dynamic, outputs named `outputs`."""
    import torch

    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices are not the user's concern
        axes = {n: {0: "batch"} for n in ("input", *outputs)}
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=list(outputs), dynamic_axes=axes)


def _export_graph(net: torch.nn.Module, size: int, path: Path, opset: int) -> None:
    """The bundle's graph: two outputs, logits and the pooled features the not-a-pet detector reads."""
    from petclf.model import WithFeatures

    export_module(WithFeatures(net).eval(), size, path, opset, ("logits", "features"))


def check_onnx(net: torch.nn.Module, path: Path, size: int, n: int = 3,
               seed: int = 0) -> dict[str, tuple[float, float]]:
    """{output: (largest |difference| between torch and onnxruntime, largest |value|)} for both outputs,
    logits and the pooled features the not-a-pet detector reads, on `n` random inputs.

    Random inputs can drive a head fitted by the probe recipe to logits in the thousands, where float32
    rounding alone differs by 1e-3; each difference is judged against its output's scale (`RTOL`), not as an
    absolute number.
    """
    import torch

    from petclf.model import WithFeatures

    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = [t.float().numpy() for t in WithFeatures(net).eval()(x)]
    got = OnnxNet(path).outputs(x.numpy())
    return {name: (float(np.abs(g - r).max()), float(np.abs(r).max()))
            for name, g, r in zip(("logits", "features"), got, ref, strict=True)}


def match_summary(info: dict[str, Any]) -> str:
    """How closely an export matched torch, for a log line."""
    return f"max |logit diff| vs torch {info['max_abs_diff']:.2g} on logits up to {info['max_abs_logit']:.3g}"


def export_onnx(model_dir: str | Path, opset: int = OPSET, rtol: float = RTOL) -> dict[str, Any]:
    """Write `model.onnx` beside the bundle once it matches torch within `rtol`; returns its info."""
    import torch

    model_dir = resolve_bundle_dir(model_dir)
    net, manifest = load_network(model_dir)
    size = manifest.size
    with atomic_path(model_dir / ONNX_NAME) as tmp:
        _export_graph(net, size, tmp, opset)
        checked = check_onnx(net, tmp, size)
        for name, (diff, scale) in checked.items():
            if not diff <= rtol * max(1.0, scale):
                raise PetclfError(f"ONNX export differs from torch by {diff:.2g} on {name} up to {scale:.3g} "
                                  f"(more than {rtol:g} of them); model.onnx not written")
        (diff, scale), (feat_diff, _) = checked["logits"], checked["features"]
        info = {"file": ONNX_NAME, "sha256": sha256_file(tmp), "weights_sha256": manifest.weights["sha256"],
                "opset": opset, "input_size": size, "max_abs_diff": diff, "max_abs_logit": scale,
                "features_max_abs_diff": feat_diff, "rtol": rtol,
                "torch": torch.__version__.split("+")[0]}
    write_atomic(model_dir / ONNX_INFO_NAME, json.dumps(info, indent=1))
    pin_onnx(model_dir, ONNX_NAME, info["sha256"])  # last: until model.json names the graph, it is never run
    return info
