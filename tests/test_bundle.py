"""The pickle-free bundle: exact round trip, checksum, corrupt and incompatible files refused."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from petclf.bundle import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    class_groups,
    display_names,
    load_network,
    make_manifest,
    read_manifest,
    write_bundle,
)
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
    assert [c["group"] for c in man.classes] == ["cat", "cat", "dog"] and man.group_name == "species"
    assert man.n_classes == 3 and man.temperature == 1.0
    assert set(man.versions) == {"petclf", "fastai", "timm", "torch"}
    assert len(man.weights["sha256"]) == 64
    assert not list(out.glob(".*tmp*")), "no temp files left behind"


@pytest.mark.parametrize("head", [{"kind": "linear"}, {"kind": "linear", "l2norm": True},
                                  {"kind": "linear", "l2norm": True, "gem_p": 2.0}])
def test_linear_head_round_trips(tmp_path, head):
    model = build_model("resnet18", 2, head=head).eval()
    write_bundle(model, tmp_path, make_manifest("resnet18", head, ["Bengal", "pug"], 32, 40, [0.5] * 3, [0.5] * 3))
    net, manifest = load_network(tmp_path)
    assert manifest.head == head
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))


def test_l2norm_head_sees_unit_length_features():
    model = build_model("resnet18", 2, head={"kind": "linear", "l2norm": True}).eval()
    with torch.no_grad():
        feats = model[1][:-1](model[0](torch.randn(3, 3, 32, 32)))
    assert torch.allclose(feats.norm(dim=1), torch.ones(3), atol=1e-5)


def test_tampered_weights_are_refused_before_loading(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    data = bytearray((b / WEIGHTS_NAME).read_bytes())
    data[-10] ^= 0xFF
    (b / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_network(b)


def test_truncated_weights_with_matching_checksum_are_corrupt(bundle, tmp_path):
    from petclf.io import sha256_file

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
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "classes"}), "classes missing"),
    (lambda m: json.dumps({**m, "arch": "no_such_net_v9"}), "not in the installed timm"),
])
def test_bad_manifests_are_one_line_errors(bundle, tmp_path, edit, match):
    b = _copy(bundle[0], tmp_path)
    (b / MANIFEST_NAME).write_text(edit(json.loads((b / MANIFEST_NAME).read_text())))
    with pytest.raises(BundleError, match=match):
        load_network(b)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _set(path: str, value):
    """An edit of model.json: `value` at the dotted `path` (list indices as numbers)."""
    def edit(m):
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        d = m
        for k in parents:
            d = d[k]
        d[last] = value
        return json.dumps(m)
    return edit


def _drop(path: str):
    def edit(m):
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        d = m
        for k in parents:
            d = d[k]
        del d[last]
        return json.dumps(m)
    return edit


def _literal(path: str, text: str):
    """`text` written as is at `path` (NaN, Infinity, deep nesting: what json.dumps would not write)."""
    return lambda m: _set(path, "@@literal@@")(m).replace('"@@literal@@"', text)


CORRUPT = {  # the malformed manifests, and more; each must be one line, exit 2
    "temperature -1 (inverts the ranking)": (_set("temperature", -1), "temperature must be in"),
    "temperature NaN": (_literal("temperature", "NaN"), "temperature must be in"),
    "temperature Infinity": (_literal("temperature", "Infinity"), "temperature must be in"),
    "temperature 0": (_set("temperature", 0), "temperature"),
    "l2norm not a flag": (_set("head", {"kind": "linear", "l2norm": "yes"}), "head.l2norm must be true or false"),
    "gem_p 0": (_set("head", {"kind": "linear", "gem_p": 0}), r"head.gem_p must be in \[1, 16\]"),
    "gem_p a string": (_set("head", {"kind": "linear", "gem_p": "2"}), "head.gem_p must be a number"),
    "temperature true": (_set("temperature", True), "temperature must be a number"),
    "std 0": (_set("input.std", [0, 0, 0]), r"input.std\[0\] must be in"),
    "std negative": (_set("input.std", [0.2, -0.2, 0.2]), r"input.std\[1\]"),
    "mean NaN": (_literal("input.mean.0", "NaN"), r"input.mean\[0\] must be in"),
    "mean of 2": (_set("input.mean", [0.5, 0.5]), "input.mean must be a list of 3"),
    "fewer class names than outputs": (lambda m: json.dumps({**m, "classes": m["classes"][:-1]}),
                                       "2 classes listed for n_classes 3"),
    "class without name": (_drop("classes.1.name"), r"classes\[1\].name missing"),
    "class name empty": (_set("classes.0.name", ""), r"classes\[0\].name must be a string"),
    "class a string": (_set("classes.0", "Bengal"), r"classes\[0\] must be an object"),
    "class names repeat": (_set("classes.1.name", "Bengal"), "listed twice"),
    "classes a dict": (_set("classes", {"Bengal": "cat"}), "classes must be a list"),
    "no n_classes": (_drop("n_classes"), "n_classes missing"),
    "n_classes a string": (_set("n_classes", "3"), "n_classes must be an integer"),
    "no size": (_drop("input.size"), "input.size missing"),
    "no arch": (_drop("arch"), "arch missing"),
    "arch a number": (_set("arch", 34), "arch must be a string"),
    "input a list": (_set("input", [64, 80]), "input must be an object"),
    "head a list": (_set("head", ["fastai"]), "head must be an object"),
    "unknown head kind": (_set("head.kind", "transformer"), "head.kind must be one of"),
    "unknown head key": (_set("head.n_layers", 3), "unknown keys"),
    "head lin_ftrs huge": (_set("head.lin_ftrs", [10**9]), "lin_ftrs"),
    "size 0": (_set("input.size", 0), "input.size must be in 8..2048"),
    "presize 10^6": (_set("input.presize", 10**6), "input.presize must be in 64..4096"),
    "12 TB allocation": (lambda m: json.dumps({**m, "input": {**m["input"], "size": 10**6, "presize": 10**6}}),
                         "input.size must be in"),
    "presize below size": (_set("input.presize", 32), "input.presize must be in 64"),
    "weights a path": (_set("weights.file", "../../etc/passwd"), "plain file name"),
    "weights sha256 not hex": (_set("weights.sha256", "x" * 64), "64 hex digits"),
    "metrics a list": (_set("metrics", [0.1]), "metrics must be an object"),
    "onnx pin a string": (_set("onnx", "model.onnx"), "onnx must be an object"),
    "deeply nested JSON": (_literal("metrics", _deep(100_000)), "not valid JSON"),
    "top level a list": (lambda m: json.dumps([m]), "not a petclf manifest"),
    "format_version a string": (_set("format_version", "1"), "format_version must be a positive integer"),
    "format_version 0": (_set("format_version", 0), "format_version must be a positive integer"),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_manifests_are_one_line_exit_2_before_anything_is_built(bundle, tmp_path, cli, name):
    edit, match = CORRUPT[name]
    b = _copy(bundle[0], tmp_path)
    (b / MANIFEST_NAME).write_text(edit(json.loads((b / MANIFEST_NAME).read_text())))
    with pytest.raises(BundleError, match=match):
        read_manifest(b)
    (tmp_path / "cat.png").write_bytes(b"")  # never read: the model is refused first
    res = cli("predict", tmp_path / "cat.png", "--model", b)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: corrupt model file:"), res.output


def test_format_version_string_is_invalid_not_old(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    (b / MANIFEST_NAME).write_text(_set("format_version", "1")(json.loads((b / MANIFEST_NAME).read_text())))
    with pytest.raises(BundleError) as e:
        read_manifest(b)
    assert "upgrade" not in str(e.value) and 'not "1"' in str(e.value)


def test_write_bundle_refuses_what_readers_would_and_writes_nothing(tmp_path):
    model = build_model("resnet18", 2, head={"kind": "linear"}).eval()
    bad = make_manifest("resnet18", {"kind": "linear"}, ["Bengal", "pug"], 64, 80, [0.5] * 3, [0.0] * 3)
    with pytest.raises(ValueError, match="input.std"):
        write_bundle(model, tmp_path, bad)
    assert not list(tmp_path.iterdir())


def test_the_schema_knows_every_key_of_fastais_head():
    from petclf.bundle import HEADS

    assert HEADS["fastai"] == set(FASTAI_HEAD) - {"kind"}


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
    assert man.arch == "resnet18"


@pytest.mark.parametrize("mask", [0o022, 0o007])
def test_bundle_files_follow_the_umask_like_any_new_file(tmp_path, mask):
    """safetensors writes its file 0600: before, another user could read model.json but not load the weights."""
    import os
    import stat

    old = os.umask(mask)
    try:
        model = build_model("resnet18", 2, head={"kind": "linear"}).eval()
        write_bundle(model, tmp_path, make_manifest("resnet18", {"kind": "linear"}, ["Bengal", "pug"], 32, 40,
                                                    [0.5] * 3, [0.5] * 3))
        (tmp_path / "plain.txt").write_text("made by open()")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o666 & ~mask
    for name in (WEIGHTS_NAME, MANIFEST_NAME):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


def test_groups_display_names_and_older_species_key():
    pets = make_manifest("resnet18", {"kind": "linear"}, ["Russian_Blue", "great_pyrenees"], 32, 40, [.5] * 3, [.5] * 3)
    assert display_names(pets) == {"Russian_Blue": "Russian Blue", "great_pyrenees": "Great Pyrenees"}
    assert class_groups(pets) == ("species", {"Russian_Blue": "cat", "great_pyrenees": "dog"})
    own = make_manifest("resnet18", {"kind": "linear"}, ["mug", "Teller"], 32, 40, [.5] * 3, [.5] * 3)
    assert class_groups(own) == (None, {}) and own.group_name is None and display_names(own)["mug"] == "mug"
    assert "group_name" not in own.to_json()
    grouped = make_manifest("resnet18", {"kind": "linear"}, ["mug", "Teller"], 32, 40, [.5] * 3, [.5] * 3,
                            groups={"mug": "kitchen", "Teller": "kitchen"}, group_name="room")
    assert class_groups(grouped) == ("room", {"mug": "kitchen", "Teller": "kitchen"})
    older = replace(own, classes=[{"name": "Bengal", "species": "cat"}, {"name": "pug", "species": "dog"}])
    assert class_groups(older) == ("species", {"Bengal": "cat", "pug": "dog"})
    assert display_names(older) == {"Bengal": "Bengal", "pug": "Pug"}


def test_the_manifest_record_round_trips_and_keeps_keys_it_does_not_know(bundle, tmp_path):
    from petclf.bundle import Manifest

    b = _copy(bundle[0], tmp_path)
    raw = json.loads((b / MANIFEST_NAME).read_text())
    (b / MANIFEST_NAME).write_text(json.dumps({**raw, "made_for": "a later petclf"}))
    man = read_manifest(b)
    assert man.extra == {"made_for": "a later petclf"} and man.size == 64 and man.presize == 80
    assert man.to_json() == {**raw, "made_for": "a later petclf"}
    assert Manifest.from_json(man.to_json()) == man


def test_an_older_manifest_without_the_optional_keys_loads_with_defaults(bundle, tmp_path):
    b = _copy(bundle[0], tmp_path)
    raw = json.loads((b / MANIFEST_NAME).read_text())
    for key in ("temperature", "unsure_below", "group_name", "created", "versions"):
        raw.pop(key, None)
    raw["input"] = {k: raw["input"][k] for k in ("size", "presize", "mean", "std")}
    (b / MANIFEST_NAME).write_text(json.dumps(raw))
    man = read_manifest(b)
    assert (man.temperature, man.unsure_below, man.not_a_pet, man.open_set) == (1.0, 0.5, None, None)
    assert (man.resize_method, man.resample, man.versions) == ("crop", "bilinear", {})


@pytest.mark.parametrize("key,value", [("trained_at", 7), ("recipe", "probe"), ("calibration", [1]),
                                       ("data", 3), ("metrics", "good")])
def test_a_mistyped_optional_key_is_one_line_naming_the_file_and_the_key(bundle, tmp_path, key, value):
    b = _copy(bundle[0], tmp_path)
    (b / MANIFEST_NAME).write_text(_set(key, value)(json.loads((b / MANIFEST_NAME).read_text())))
    with pytest.raises(BundleError) as e:
        read_manifest(b)
    assert str(b / MANIFEST_NAME) in str(e.value) and key in str(e.value) and "\n" not in str(e.value)
