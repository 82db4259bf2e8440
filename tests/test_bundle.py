"""The pickle-free bundle: exact round trip, checksum, corrupt and incompatible files refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from petclf.bundle import MANIFEST_NAME, WEIGHTS_NAME, load_network, make_manifest, read_manifest, write_bundle
from petclf.errors import BundleError
from petclf.model import FASTAI_HEAD, build_model

CLASSES = ["Bengal", "Persian", "beagle"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    write_bundle(model, out, make_manifest("resnet18", FASTAI_HEAD, CLASSES, 64, 80, [0.5] * 3, [0.5] * 3))
    return out, model


def _copy(src, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst


def test_round_trip_is_exact_and_manifest_is_complete(bundle):
    out, model = bundle
    net, man = load_network(out)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    assert [c["species"] for c in man["classes"]] == ["cat", "cat", "dog"]
    assert man["n_classes"] == 3 and man["temperature"] == 1.0
    assert set(man["versions"]) == {"petclf", "fastai", "timm", "torch"}
    assert len(man["weights"]["sha256"]) == 64
    assert not list(out.glob(".*tmp*")), "no temp files left behind"


def test_linear_head_round_trips(tmp_path):
    model = build_model("resnet18", 2, head={"kind": "linear"}).eval()
    write_bundle(model, tmp_path, make_manifest("resnet18", {"kind": "linear"}, ["Bengal", "pug"], 32, 40,
                                                [0.5] * 3, [0.5] * 3))
    net, _ = load_network(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))


def test_tampered_weights_are_refused_before_loading(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    data = bytearray((b / WEIGHTS_NAME).read_bytes())
    data[-10] ^= 0xFF
    (b / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_network(b)


def test_truncated_weights_with_matching_checksum_are_corrupt(bundle, tmp_path):
    from petclf.bundle import sha256_file

    b = _copy(bundle[0], tmp_path)
    w = b / WEIGHTS_NAME
    w.write_bytes(w.read_bytes()[:1000])
    man = json.loads((b / MANIFEST_NAME).read_text())
    man["weights"]["sha256"] = sha256_file(w)
    (b / MANIFEST_NAME).write_text(json.dumps(man))
    with pytest.raises(BundleError, match="corrupt model file"):
        load_network(b)


@pytest.mark.parametrize("edit,match", [
    (lambda m: "{not json", "corrupt model file"),
    (lambda m: json.dumps({**m, "format": "other"}), "not a petclf manifest"),
    (lambda m: json.dumps({**m, "format_version": 99}), "upgrade petclf"),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "classes"}), "lacks 'classes'"),
    (lambda m: json.dumps({**m, "arch": "no_such_net_v9"}), "not in the installed timm"),
])
def test_bad_manifests_are_one_line_errors(bundle, tmp_path, edit, match):
    b = _copy(bundle[0], tmp_path)
    (b / MANIFEST_NAME).write_text(edit(json.loads((b / MANIFEST_NAME).read_text())))
    with pytest.raises(BundleError, match=match):
        load_network(b)


def test_missing_folder_and_non_bundle_folder(tmp_path):
    with pytest.raises(BundleError, match="no model at"):
        read_manifest(tmp_path / "nothing")
    with pytest.raises(BundleError, match="not a petclf model folder"):
        read_manifest(tmp_path)


def test_weights_for_another_architecture_are_refused(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    man = json.loads((b / MANIFEST_NAME).read_text())
    (b / MANIFEST_NAME).write_text(json.dumps({**man, "arch": "resnet10t"}))
    with pytest.raises(BundleError, match="do not fit"):
        load_network(b)


class _Evil:
    """A pickle that, when unpickled, creates the file it names: proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_in_place_of_the_weights_is_never_unpickled(bundle, tmp_path, how):
    """Weights swapped for a pickle (checksum in model.json updated to match, as an attacker would): the loader
    must refuse it as corrupt without running it. A loader that unpickles (torch.load with weights_only=False,
    pickle.load) touches the marker file and fails this test."""
    import hashlib
    import pickle

    b = _copy(bundle[0], tmp_path)
    marker = tmp_path / "pwned"
    payload = {"model": _Evil(marker), "fc.weight": torch.zeros(3)}
    if how == "pickle":
        (b / WEIGHTS_NAME).write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, b / WEIGHTS_NAME)
    manifest = json.loads((b / MANIFEST_NAME).read_text())
    manifest["weights"]["sha256"] = hashlib.sha256((b / WEIGHTS_NAME).read_bytes()).hexdigest()
    (b / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="corrupt model file"):
        load_network(b)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Evil(marker)))  # the payload is live: unpickling it does create the marker
    assert marker.exists()


def test_a_latest_file_naming_the_run_is_followed(bundle, tmp_path):
    # where symlinks fail, `petclf train` writes `latest` as a file holding the run folder's name
    run = _copy(bundle[0], tmp_path)
    (tmp_path / "latest").write_text(run.name + "\n")
    net, man = load_network(tmp_path / "latest")
    assert man["arch"] == "resnet18"
