"""petclf.model: building networks and loading pretrained weights from a file, the hub cache, or failing fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from petclf.errors import PetclfError
from petclf.model import (
    PROBE_GEM_P,
    GeMPool,
    WithFeatures,
    build_model,
    cached_hub_weights,
    classifier_names,
    efficientnet_lite0_weights,
    make_network,
    norm_stats,
    probe_head,
    read_state_dict,
    rectified_body,
)

CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory) -> Path:
    """Real ImageNet EfficientNet-Lite0 weights from the pip package, as a timm safetensors state dict."""
    return efficientnet_lite0_weights(tmp_path_factory.mktemp("w") / "lite0.safetensors")


def _chelsea(size: int = 224) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.chelsea()).convert("RGB").resize((size, size), Image.BILINEAR)
    mean, std = norm_stats("tf_efficientnet_lite0")
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1) / 255
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def test_lite0_weights_see_a_cat(lite0_file):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(read_state_dict(lite0_file), strict=True)  # every tensor of the converted file fits
    with torch.no_grad():
        top = int(model(_chelsea()).argmax())
    assert top in CAT_CLASSES


def test_weights_file_fills_the_backbone_and_ignores_the_classifier(lite0_file, tmp_path):
    state = read_state_dict(lite0_file)
    assert any(k.startswith("classifier.") for k in state)  # the file has the ImageNet head ...
    pth = tmp_path / "lite0.pth"
    torch.save({"state_dict": state}, pth)  # ... and a training checkpoint wrapping works too
    for src in (lite0_file, pth):
        net = make_network("tf_efficientnet_lite0", 5, weights=src)
        body = net[0].model.state_dict()
        assert torch.equal(body["conv_stem.weight"], state["conv_stem.weight"])
        assert torch.equal(body["bn2.running_var"], state["bn2.running_var"])
        assert net[1][-1].out_features == 5  # ... which is replaced by a 5-class head


def test_weights_for_another_arch_are_refused(lite0_file):
    with pytest.raises(PetclfError, match="do not fit resnet18"):
        make_network("resnet18", 4, weights=lite0_file)


def test_bad_weights_files(tmp_path):
    with pytest.raises(PetclfError, match="not found"):
        make_network("resnet18", 4, weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(PetclfError, match="cannot read weights"):
        read_state_dict(junk)


def test_classifier_names_come_from_timm():
    assert classifier_names("resnet18") == ["fc"]
    assert classifier_names("tf_efficientnet_lite0") == ["classifier"]


def test_offline_without_cache_names_weights_flag_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(PetclfError, match="--weights"):
        make_network("resnet18", 4)
    assert not any((tmp_path / "hf").rglob("*.safetensors"))  # offline: nothing was fetched


def _fake_hub_cache(root: Path, repo: str, state: dict) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/model.safetensors}."""
    from safetensors.torch import save_file

    rev = "0" * 40
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(rev)
    save_file(state, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_offline_uses_the_hub_cache(tmp_path, monkeypatch):
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    torch.manual_seed(0)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    path = _fake_hub_cache(tmp_path / "hub", repo, state)
    assert cached_hub_weights("resnet18") == path
    net = make_network("resnet18", 3)
    assert torch.equal(net[0].model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_build_model_linear_head_shapes():
    net = build_model("resnet18", 7, head={"kind": "linear"})
    out = net.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 7)


def test_gem_pooling_spans_average_to_max():
    x = torch.rand(2, 5, 4, 3) * 6
    assert torch.allclose(GeMPool(1)(x).flatten(1), x.mean((2, 3)), atol=1e-6)
    assert torch.allclose(GeMPool(2)(x).flatten(1), x.pow(2).mean((2, 3)).sqrt(), atol=1e-6)
    mean, gem3, peak = x.mean((2, 3)), GeMPool(3)(x).flatten(1), x.amax((2, 3))
    assert bool(((mean <= gem3 + 1e-6) & (gem3 <= peak + 1e-6)).all())


@pytest.mark.parametrize("arch,gem", [("resnet18", True), ("tf_efficientnet_lite0", True),  # end in a ReLU
                                      ("convnext_atto", False), ("efficientnet_b0", False)])  # LayerNorm, SiLU
def test_the_probe_pools_by_gem_only_where_the_maps_are_never_negative(arch, gem):
    assert rectified_body(arch) is gem
    assert probe_head(arch) == {"kind": "linear", "l2norm": True} | ({"gem_p": PROBE_GEM_P} if gem else {})
    net = build_model(arch, 3, head=probe_head(arch)).eval()
    assert isinstance(net[1][0], GeMPool) is gem


def test_one_forward_pass_gives_the_probes_features_and_the_detectors():
    """`probe_features`: the GeM head's L2-normalised input (what the probe fits) and the body's average-pooled
    features (what the not-a-pet detector fits), as the predictor's WithFeatures gives them at prediction."""
    from petclf.probefit import probe_features

    net = build_model("resnet18", 3, head=probe_head("resnet18")).eval()
    x = torch.randn(2, 3, 64, 64)
    seen, pooled, kept = probe_features(net, [x[:1], x[1:]], lambda batch: torch.cat(batch).numpy(), bs=1,
                                        keep_maps=True)
    with torch.no_grad():
        maps = net[0](x)
        logits, feats = WithFeatures(net)(x)
    assert kept.dtype == torch.float16 and torch.allclose(kept.float(), maps, rtol=1e-2, atol=1e-2)
    gem = maps.pow(2).mean((2, 3)).sqrt()
    assert np.allclose(seen, torch.nn.functional.normalize(gem, dim=1).numpy(), atol=1e-6)
    assert np.allclose(pooled, maps.mean((2, 3)).numpy(), atol=1e-6) and np.allclose(feats.numpy(), pooled, atol=1e-6)
    assert torch.allclose(logits, net[1][-1](torch.from_numpy(seen)), atol=1e-5)
