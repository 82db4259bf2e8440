"""petclf.onnx: the export is checked against torch, tampering is refused, training writes it, auto picks it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from petclf.errors import BundleError
from petclf.predict import load_model


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run.run_dir


@pytest.fixture(scope="module")
def valid_items(tiny_run):
    return list(tiny_run.learn.dls.valid_ds.items)


@pytest.mark.slow
def test_onnx_export_matches_torch_and_refuses_tampering(cli, run_dir, tmp_path, valid_items):
    bundle = tmp_path / "onnx"
    shutil.copytree(run_dir, bundle)
    res = cli("export", "--onnx", "--model", bundle)
    assert res.exit_code == 0, res.output
    assert (bundle / "model.onnx").is_file() and "max |logit diff|" in res.stdout
    torch_p, onnx_p = load_model(bundle), load_model(bundle, backend="onnx")
    for a, b in zip(torch_p.predict_paths(valid_items[:6]), onnx_p.predict_paths(valid_items[:6]), strict=True):
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < 1e-4
    res = cli("predict", valid_items[0], "--model", bundle, "--onnx", "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["top"][0]["class_id"] == torch_p.topk(valid_items[0])[0][0]
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_model(bundle, backend="onnx")
    assert load_model(bundle).backend == "torch"  # auto: a tampered graph is never run; torch serves the bundle
    bare = tmp_path / "no_onnx"
    shutil.copytree(run_dir, bare)
    (bare / "model.onnx").unlink()
    with pytest.raises(BundleError, match="petclf export --onnx"):
        load_model(bare, backend="onnx")
    assert load_model(bare).backend == "torch"


def test_onnx_export_judges_the_difference_against_the_logit_scale(run_dir, tmp_path, valid_items):
    """A head with large weights (as the probe recipe fits) gives logits in the thousands on the check's random
    inputs, where float32 rounding differs by more than 1e-3; the export is kept and agrees on real photos."""
    from petclf.bundle import load_network, write_bundle
    from petclf.onnx import export_onnx

    bundle = tmp_path / "loud"
    shutil.copytree(run_dir, bundle)
    for name in ("model.onnx", "model.onnx.json"):
        (bundle / name).unlink()
    net, manifest = load_network(bundle)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight.mul_(3000.0)
    write_bundle(net, bundle, manifest)
    info = export_onnx(bundle)
    assert info["max_abs_diff"] > 1e-3  # what an absolute 1e-3 check (the old one) refused
    assert info["max_abs_logit"] > 1000 and info["max_abs_diff"] <= info["rtol"] * info["max_abs_logit"]
    torch_p, onnx_p = load_model(bundle, backend="torch"), load_model(bundle, backend="onnx")
    x = torch_p.preprocess(valid_items[:6])
    assert np.abs(torch_p.probs(x) - onnx_p.probs(x)).max() < 1e-4


def test_training_exports_onnx_and_auto_picks_it_on_cpu(run_dir, valid_items):
    onnx_predictor, predictor = load_model(run_dir), load_model(run_dir, backend="torch")
    assert onnx_predictor.backend == "onnx"
    from petclf.io import sha256_file, umask
    from petclf.onnx import ONNX_INFO_NAME

    assert predictor.manifest.onnx["sha256"] == sha256_file(run_dir / "model.onnx")  # model.json pins the graph
    modes = {p.name: p.stat().st_mode & 0o777 for p in run_dir.iterdir() if p.is_file()}
    assert modes["model.onnx"] == modes["model.onnx.json"] == modes["model.safetensors"] == modes["model.json"] == \
        0o666 & ~umask()  # what open() gives a new file; safetensors and the exporter's temp files were 0600

    info = json.loads((run_dir / ONNX_INFO_NAME).read_text())
    assert info["max_abs_diff"] <= info["rtol"] * max(1.0, info["max_abs_logit"]) and info["max_abs_diff"] < 1e-3
    assert (run_dir / "model.onnx").is_file()
    assert onnx_predictor.has_model  # Grad-CAM's torch network, loaded on first use, is the bundle's network
    x = torch.from_numpy(predictor.preprocess(valid_items[:2]))
    with torch.no_grad():
        assert torch.equal(onnx_predictor.model(x), predictor.model(x))


def _swap_graph(bundle, valid_items):
    """Replace model.onnx with the same network whose last layer's rows are rolled (every class answers as its
    neighbour) and recompute model.onnx.json's checksum, as someone swapping the graph would."""
    from petclf.bundle import load_network
    from petclf.io import sha256_file
    from petclf.onnx import ONNX_INFO_NAME, OPSET, OnnxNet, _export_graph

    net, manifest = load_network(bundle)
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    perm = torch.arange(head.out_features).roll(1)
    with torch.no_grad():
        head.weight.copy_(head.weight[perm])
        if head.bias is not None:  # fastai's head has none (a BatchNorm precedes it)
            head.bias.copy_(head.bias[perm])
    _export_graph(net, manifest.size, bundle / "model.onnx", OPSET)
    info = json.loads((bundle / ONNX_INFO_NAME).read_text())
    info["sha256"] = sha256_file(bundle / "model.onnx")
    (bundle / ONNX_INFO_NAME).write_text(json.dumps(info))
    honest = load_model(bundle, backend="torch")
    x = honest.preprocess(valid_items[:4])
    assert (OnnxNet(bundle / "model.onnx")(x).argmax(1) != honest.logits(x).argmax(1)).all()  # it does lie


def test_a_swapped_graph_is_refused_even_with_its_checksum_file_rewritten(cli, run_dir, tmp_path, valid_items,
                                                                           caplog):
    bundle = tmp_path / "swapped"
    shutil.copytree(run_dir, bundle)
    _swap_graph(bundle, valid_items)
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_model(bundle, backend="onnx")
    with caplog.at_level("WARNING", logger="petclf.onnx"):
        assert load_model(bundle).backend == "torch"  # auto: the weights answer, with a log line saying why
    assert "checksum mismatch" in caplog.text
    res = cli("predict", valid_items[0], "--model", bundle, "--backend", "onnx")
    assert res.exit_code == 2 and res.output.startswith("error: checksum mismatch"), res.output
    assert len(res.output.strip().splitlines()) == 1


def test_export_pins_the_graph_of_an_older_bundle(cli, run_dir, tmp_path, caplog):
    """A bundle made before model.json pinned its graph runs on torch until `petclf export --onnx` pins it."""
    bundle = tmp_path / "older"
    shutil.copytree(run_dir, bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    pin = manifest.pop("onnx")
    (bundle / "model.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="petclf.onnx"):
        assert load_model(bundle).backend == "torch"
    assert "not pinned" in caplog.text
    with pytest.raises(BundleError, match="petclf export --onnx"):
        load_model(bundle, backend="onnx")
    res = cli("export", "--onnx", "--model", bundle)
    assert res.exit_code == 0, res.output
    manifest = json.loads((bundle / "model.json").read_text())
    from petclf.io import sha256_file

    assert manifest["onnx"] == {"file": "model.onnx", "sha256": sha256_file(bundle / "model.onnx")}
    assert set(pin) == {"file", "sha256"} and load_model(bundle).backend == "onnx"


def test_the_probe_recipes_head_exports(tmp_path):
    """backbone -> GeM pool -> L2Norm -> Linear: GeM becomes Clip, Pow and ReduceMean, F.normalize ReduceL2 + Div;
    onnxruntime agrees with torch."""
    from petclf.bundle import make_manifest, write_bundle
    from petclf.model import build_model, probe_head
    from petclf.onnx import OnnxNet, export_onnx

    head = probe_head("resnet18")
    assert "gem_p" in head
    model = build_model("resnet18", 3, head=head).eval()
    write_bundle(model, tmp_path, make_manifest("resnet18", head, ["Bengal", "pug", "boxer"], 32, 32, [0.5] * 3,
                                                [0.5] * 3))
    info = export_onnx(tmp_path)
    assert info["max_abs_diff"] <= info["rtol"] * max(1.0, info["max_abs_logit"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(OnnxNet(tmp_path / "model.onnx", threads=1)(x.numpy()) - expected).max() < 1e-4


def test_the_export_check_compares_the_features_output_too(run_dir):
    import copy

    from petclf.bundle import load_network
    from petclf.onnx import check_onnx

    net, manifest = load_network(run_dir)
    size = manifest.size
    same = check_onnx(net, run_dir / "model.onnx", size)
    assert set(same) == {"logits", "features"} and same["features"][0] < 1e-3 < same["features"][1]
    body_changed = copy.deepcopy(net)
    with torch.no_grad():
        for p in body_changed[0].parameters():
            p.mul_(1.5)
    assert check_onnx(body_changed, run_dir / "model.onnx", size)["features"][0] > 1e-2
    info = json.loads((run_dir / "model.onnx.json").read_text())
    assert info["features_max_abs_diff"] < 1e-3  # what training's export recorded
