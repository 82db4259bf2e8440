"""The feature cache: entries keyed by what determines a feature, never used when corrupt, partial or foreign,
bounded by LRU eviction, and a training run that reuses it with results bit-identical to one without it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from petclf.errors import PetclfError
from petclf.featcache import FeatureCache, entry_key, parse_size

SIZE = 64


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.random(8, dtype=np.float32), "pooled": rng.random(8, dtype=np.float32),
            "maps": rng.random((8, 2, 2)).astype(np.float16)}


def test_an_entry_comes_back_exactly_and_only_whole(tmp_path):
    cache = FeatureCache(tmp_path)
    key = entry_key("0" * 64, {"weights": "w"})
    cache.put(key, arrays())
    got = cache.get(key, ("x", "pooled", "maps"))
    assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in arrays().items())
    assert cache.get(key, ("x", "other")) is None  # an entry without what the run needs is a miss
    assert cache.get(entry_key("1" * 64, {"weights": "w"}), ("x",)) is None
    assert entry_key("0" * 64, {"weights": "v"}) != key and entry_key("0" * 64, {"weights": "w", "size": 1}) != key


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "garbage"])
def test_a_corrupt_partial_or_foreign_entry_is_never_used(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    key, other = entry_key("a" * 64, {}), entry_key("b" * 64, {})
    cache.put(key, arrays(0))
    cache.put(other, arrays(1))
    path = cache.path(key)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-3] ^= 0xFF  # one bit pattern inside the tensors: the digest tells
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "foreign":
        shutil.copy(cache.path(other), path)  # a whole, valid entry, but of another key
    else:
        path.write_bytes(b"\x00" * 100)
    assert cache.get(key, ("x",)) is None
    cache.put(key, arrays(0))  # the recomputed features replace it
    assert np.array_equal(cache.get(key, ("x",))["x"], arrays(0)["x"])


def test_lru_bound_evicts_the_least_recently_used_first(tmp_path):
    keys = [entry_key(f"{i}" * 64, {}) for i in range(4)]
    cache = FeatureCache(tmp_path)
    for i, k in enumerate(keys):
        cache.put(k, arrays(i))
        os.utime(cache.path(k), (1000 + i, 1000 + i))  # written in this order, long ago
    assert cache.get(keys[0], ("x",)) is not None  # a hit makes the oldest the most recently used
    stale = tmp_path / "00" / ".partial.tmp123"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half a write")
    os.utime(stale, (1000, 1000))
    one = cache.path(keys[0]).stat().st_size
    cache.max_bytes = 2 * one + one // 2  # room for two entries
    assert cache.evict() == 3  # keys[1], keys[2] and the killed write's temp file
    assert [cache.get(k, ("x",)) is not None for k in keys] == [True, False, False, True]
    assert not stale.exists()
    info = cache.info()
    assert (info.root, info.entries, info.max_bytes) == (tmp_path, 2, cache.max_bytes) and info.bytes <= cache.max_bytes
    assert cache.clear() == 2 and cache.info().entries == 0


def test_sizes_of_the_cap():
    assert parse_size("500M") == 500 * 2**20 and parse_size("2G") == 2 * 2**30 and parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("1024") == 1024
    with pytest.raises(PetclfError, match="PETCLF_CACHE_MAX"):
        parse_size("lots")


def test_feature_backend_choice():
    from petclf.device import pick_feature_backend

    assert pick_feature_backend("cpu", onnxruntime=True) == "onnxruntime"
    assert pick_feature_backend("cpu", onnxruntime=False) == "torch"
    assert pick_feature_backend("cuda", onnxruntime=True) == "torch"  # the features on the GPU
    assert pick_feature_backend("cuda:1", onnxruntime=True) == "torch"
    assert pick_feature_backend("mps", onnxruntime=True) == "torch"


# ---------------------------------------------------------------------------------------------------- the features


def tiny_weights(path: Path, seed: int) -> Path:
    """A resnet18 body with random weights of `seed`, as a `--weights` file."""
    import timm
    import torch

    from petclf.io import save_state_dict

    torch.manual_seed(seed)
    save_state_dict(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    return path


def tiny_net(weights: Path):
    from petclf.model import make_network

    return make_network("resnet18", 4, head={"kind": "linear", "l2norm": True, "gem_p": 2.0}, weights=weights).eval()


def features(net, files, cache, size: int = SIZE):
    from petclf.features import feature_body
    from petclf.model import norm_stats
    from petclf.preprocess import Preprocess
    from petclf.probefit import photo_features

    mean, std = norm_stats("resnet18")
    body = feature_body(net, size, "cpu", cache)
    return photo_features(net, files, Preprocess(size, size, tuple(mean), tuple(std)), True, body, cache, quiet=True)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return tiny_weights(folder / "a.safetensors", 0), tiny_weights(folder / "b.safetensors", 1)


def test_what_changes_a_feature_recomputes_it(synth_dir, tmp_path, weights):
    files = sorted(synth_dir.glob("*.jpg"))[:6]
    photos = tmp_path / "photos"
    shutil.copytree(synth_dir, photos, ignore=lambda d, names: [n for n in names if n not in {f.name for f in files}])
    files = sorted(photos.glob("*.jpg"))
    cache, net = FeatureCache(tmp_path / "cache"), tiny_net(weights[0])
    x, pooled, maps, reused = features(net, files, cache)
    assert reused == 0 and x.shape == (6, 512) and maps.shape == (6, 512, 2, 2)
    assert features(net, files, cache)[3] == 6
    # another folder, the same photos under other names: reused
    other = tmp_path / "other"
    other.mkdir()
    for i, f in enumerate(files):
        shutil.copy(f, other / f"renamed_{i}.jpg")
    assert features(net, sorted(other.glob("*.jpg")), cache)[3] == 6
    # a changed file
    from PIL import Image

    Image.open(files[0]).transpose(Image.FLIP_LEFT_RIGHT).save(files[0])
    x2, _, _, reused = features(net, files, cache)
    assert reused == 5 and not np.array_equal(x2[0], x[0]) and np.array_equal(x2[1:], x[1:])
    # changed weights, a changed size
    assert features(tiny_net(weights[1]), files, cache)[3] == 0
    assert features(net, files, cache, size=96)[3] == 0
    # a corrupted entry
    entry = max(cache.root.rglob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0xFF
    entry.write_bytes(bytes(data))
    assert features(net, files, cache, size=96)[3] == 5
    assert features(net, files, cache, size=96)[3] == 6  # and it was rewritten whole


def test_cached_features_come_back_bit_identical(synth_dir, tmp_path, weights):
    files = sorted(synth_dir.glob("*.jpg"))[:10]
    cache, net = FeatureCache(tmp_path / "cache"), tiny_net(weights[0])
    cold = features(net, files[:4], cache)
    warm = features(net, files, cache)
    without = features(net, files, None)
    assert (cold[3], warm[3], without[3]) == (0, 4, 0)
    for a, b, c in zip(cold[:3], warm[:3], without[:3], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)[:4])  # what came from the cache: bit for bit
        # the rest were computed in another batch than without the cache: the same up to the backend's rounding
        assert np.abs(np.asarray(b, np.float32) - np.asarray(c, np.float32)).max() < 1e-3


# ---------------------------------------------------------------------------------------------------- a run


def head_and_oof(run: Path) -> tuple[np.ndarray, np.ndarray]:
    import json

    from safetensors.numpy import load_file

    state = load_file(run / "model.safetensors")
    return (np.concatenate([state[k].ravel() for k in sorted(state) if k.startswith("1.")]),
            np.asarray(json.loads((run / "oof.json").read_text())["logits"]))


@pytest.mark.slow
def test_a_run_reuses_the_cache_and_says_so_with_results_bit_identical(cli, synth_dir, tmp_path, weights,
                                                                       monkeypatch):
    from PIL import Image

    monkeypatch.setenv("PETCLF_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "photos"
    shutil.copytree(synth_dir, data)
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"probe_size: {SIZE}\n")
    common = ["train", "--data", data, "--arch", "resnet18", "--weights", weights[0], "--recipe", "probe",
              "--workers", "0", "--config", settings]
    runs = {}
    for name, extra in (("cold", []), ("warm", []), ("none", ["--no-cache"])):
        res = cli(*common, *extra, "--out", tmp_path / name)
        assert res.exit_code == 0, res.output
        runs[name] = res.output
    assert "features: 0 reused from the cache, 64 computed" in runs["cold"]
    assert "features: 64 reused from the cache, 0 computed" in runs["warm"]
    assert "features: 0 reused from the cache, 64 computed" in runs["none"] and "no cache)" in runs["none"]
    for a, b in zip(head_and_oof(tmp_path / "warm"), head_and_oof(tmp_path / "none"), strict=True):
        assert np.array_equal(a, b)  # the exported head and the out-of-fold logits, bit for bit

    info = cli("cache", "info")
    assert info.exit_code == 0 and str(tmp_path / "cache") in info.output and "entries: 64" in info.output

    # a new class of 4 photos: only those are computed
    for i, f in enumerate(sorted(data.glob("Bengal_*.jpg"))[:4]):
        Image.open(f).transpose(Image.FLIP_TOP_BOTTOM).save(data / f"Birman_{i + 1}.jpg")
    res = cli(*common, "--out", tmp_path / "more")
    assert res.exit_code == 0, res.output
    assert "features: 64 reused from the cache, 4 computed" in res.output

    cleared = cli("cache", "clear")
    assert cleared.exit_code == 0 and "deleted" in cleared.output
    assert "entries: 0" in cli("cache", "info").output
