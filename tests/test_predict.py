"""The predictor and `petclf predict`: fastai-exact preprocessing, paths, formats, bad inputs, tampering, ONNX."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.special import softmax

from petclf.config import OutputFormat
from petclf.errors import BundleError, ImageError
from petclf.predict import expand_paths, format_rows, load_model


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run.run_dir


@pytest.fixture(scope="module")
def predictor(run_dir):
    return load_model(run_dir, backend="torch")


@pytest.fixture(scope="module")
def onnx_predictor(run_dir):
    """What `load_model` picks by default on CPU: training wrote a verified model.onnx beside the bundle."""
    p = load_model(run_dir)
    assert p.backend == "onnx"
    return p


@pytest.fixture(scope="module")
def valid_items(tiny_run) -> list[Path]:
    return [Path(p) for p in tiny_run.learn.dls.valid_ds.items]


# ---------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("which", ["predictor", "onnx_predictor"])
def test_probabilities_equal_fastai_get_preds(tiny_run, valid_items, request, which):
    """Both backends meet 1e-4: onnxruntime's fused conv+BN kernels only reorder float sums (logits differ by
    ~1e-6), far below what 1e-4 in a probability could hide (a changed top-1 or pixel)."""
    predictor = request.getfixturevalue(which)
    learn = tiny_run.learn
    preds, _ = learn.get_preds()
    preds = softmax(learn.get_preds(act=lambda x: x)[0].numpy() / predictor.temperature, axis=1)
    rows = list(predictor.predict_paths(valid_items, bs=7))
    assert [r.file for r in rows] == [str(p) for p in valid_items] and all(r.ok for r in rows)
    mine = np.array([[r.probs[c] for c in learn.dls.vocab] for r in rows])
    assert np.abs(mine - preds).max() < 1e-4
    single = predictor.predict(valid_items[0])
    assert max(abs(single[c] - preds[0, i]) for i, c in enumerate(learn.dls.vocab)) < 1e-4


def test_temperature_from_manifest_is_applied(run_dir, tmp_path, valid_items):
    from petclf.bundle import read_manifest
    from petclf.io import write_atomic

    hot = tmp_path / "hot"
    shutil.copytree(run_dir, hot)
    manifest = read_manifest(hot).to_json()
    manifest["temperature"] = 3.0
    write_atomic(hot / "model.json", json.dumps(manifest))
    base, p = load_model(run_dir), load_model(hot)
    logits = base.logits(base.preprocess([valid_items[0]]))[0]
    want = softmax(logits / 3.0)
    got = p.predict(valid_items[0])
    assert max(abs(got[c] - want[i]) for i, c in enumerate(p.classes)) < 1e-6
    assert next(iter(got)) == next(iter(base.predict(valid_items[0])))  # temperature never changes the top-1


# ---------------------------------------------------------------------------------------------------- API


def test_every_input_type_gives_the_same_answer(predictor, valid_items):
    path = valid_items[0]
    want = predictor.predict(path)
    img = Image.open(path)
    for src in (str(path), path.read_bytes(), img, np.asarray(img.convert("RGB")),
                np.asarray(img.convert("RGB"), np.float32) / 255.0):
        got = predictor.predict(src)
        assert list(got) == list(want)
        assert max(abs(got[k] - want[k]) for k in want) < 1e-5


def test_topk_is_ordered_and_probabilities_sum_to_one(predictor, valid_items):
    probs = predictor.predict(valid_items[1])
    values = list(probs.values())
    assert len(probs) == len(predictor.classes) and values == sorted(values, reverse=True)
    assert abs(sum(values) - 1) < 1e-5
    top = predictor.topk(valid_items[1], k=3)
    assert top == list(probs.items())[:3]
    row = next(predictor.predict_paths([valid_items[1]]))
    assert abs(sum(row.group_probs.values()) - 1) < 1e-5 and set(row.group_probs) == {"cat", "dog"}
    assert row.group == max(row.group_probs, key=row.group_probs.get)


def test_flip_tta_averages_the_flipped_image(predictor, valid_items):
    path = valid_items[2]
    plain, tta = predictor.predict(path), predictor.predict(path, tta=True)
    flipped = predictor.predict(Image.open(path).transpose(Image.FLIP_LEFT_RIGHT))
    assert max(abs(tta[k] - (plain[k] + flipped[k]) / 2) for k in plain) < 1e-5


# ---------------------------------------------------------------------------------------------------- paths + CLI


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory, valid_items) -> Path:
    """photos/{a.jpg, sub/b.png, sub/deeper/c.jpg, .hidden.jpg, notes.txt, broken.jpg}."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(valid_items[0], root / "a.jpg")
    Image.open(valid_items[1]).save(root / "sub" / "b.png")
    shutil.copy(valid_items[2], root / "sub" / "deeper" / "c.jpg")
    shutil.copy(valid_items[3], root / ".hidden.jpg")
    (root / "notes.txt").write_text("not a photo")
    (root / "broken.jpg").write_text("text renamed .jpg")
    return root


def test_expand_paths_files_folders_globs_and_missing(photo_tree):
    files, errors = expand_paths([photo_tree / "a.jpg", photo_tree / "sub", str(photo_tree / "*.jpg"),
                                  photo_tree / "nope.jpg", str(photo_tree / "*.webp")])
    names = [f.relative_to(photo_tree).as_posix() for f in files]
    assert names == ["a.jpg", "sub/b.png", "sub/deeper/c.jpg", "broken.jpg"]  # deduplicated, hidden left out
    assert [e.error for e in errors] == ["nope.jpg: file not found", f"{photo_tree / '*.webp'}: no files match"]


def test_cli_predicts_a_folder_with_an_error_row_and_exit_1(cli, run_dir, photo_tree, tmp_path):
    out = tmp_path / "preds.json"
    res = cli("predict", photo_tree, "--model", run_dir, "--format", "json", "--out", out, "--topk", "3")
    assert res.exit_code == 1, res.output
    rows = json.loads(out.read_text())
    by_name = {Path(r["file"]).name: r for r in rows}
    assert set(by_name) == {"a.jpg", "b.png", "c.jpg", "broken.jpg"}
    assert "not an image" in by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["top"] == []
    for name in ("a.jpg", "b.png", "c.jpg"):
        top = by_name[name]["top"]
        assert len(top) == 3 and [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
        assert by_name[name]["group"] in ("cat", "dog") and by_name[name]["error"] is None
        assert [t["class"] for t in top] == [t["class_id"].replace("_", " ").title() for t in top]


def test_cli_exit_0_when_all_good_and_every_format(cli, run_dir, photo_tree, predictor):
    glob_arg = str(photo_tree / "**" / "*.jpg")  # a.jpg, broken.jpg, sub/deeper/c.jpg
    good = [photo_tree / "a.jpg", photo_tree / "sub" / "b.png"]
    outputs = {}
    for fmt in OutputFormat:
        res = cli("predict", *good, "--model", run_dir, "--format", fmt.value, "--topk", "2", "--bs", "1")
        assert res.exit_code == 0, res.output
        outputs[fmt.value] = res.stdout
    want = predictor.topk(good[0], 2)
    table = outputs["table"]
    assert str(good[0]) in table and want[0][0] in table
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert [r["file"] for r in rows] == [str(p) for p in good]
    assert rows[0]["class_id_1"] == want[0][0] and abs(float(rows[0]["prob_1"]) - want[0][1]) < 1e-5
    assert rows[0]["class_1"] == predictor.display[want[0][0]] and rows[0]["class_id_2"] == want[1][0]
    assert "error" not in rows[0] and rows[0]["group"] in ("cat", "dog") and rows[0]["verdict_class"]
    assert "not_a_pet" not in rows[0]  # random weights: the bundle has no detector, so no column pretends to be one
    assert "error" not in table.splitlines()[0] and "verdict" in table.splitlines()[0]
    js = json.loads(outputs["json"])
    assert [t["class_id"] for t in js[1]["top"]] == [b for b, _ in predictor.topk(good[1], 2)]
    assert js[1]["class"] == predictor.display[js[1]["class_id"]] and js[1]["verdict"]["group"]
    res = cli("predict", glob_arg, "--model", run_dir, "--format", "csv")
    assert res.exit_code == 1 and len(list(csv.DictReader(io.StringIO(res.stdout)))) == 3


def test_cli_usage_errors_exit_2(cli, run_dir, photo_tree, tmp_path):
    res = cli("predict", photo_tree / "a.jpg", "--model", run_dir, "--format", "xml")
    assert res.exit_code == 2 and "--format" in res.output
    res = cli("predict", photo_tree / "a.jpg", "--model", tmp_path / "no-model")
    assert res.exit_code == 2 and "no model at" in res.output and "Traceback" not in res.output
    res = cli("export", "--model", run_dir)
    assert res.exit_code == 2 and "--onnx" in res.output


def test_one_unreadable_file_is_its_own_error_row(predictor, photo_tree, tmp_path):
    """Decoding itself is test_image.py's; here: a file that fails to decode never stops the others."""
    (tmp_path / "empty.jpg").write_bytes(b"")
    rows = list(predictor.predict_paths([tmp_path / "empty.jpg", photo_tree / "a.jpg"]))
    assert not rows[0].ok and "not an image" in rows[0].error and rows[1].ok
    with pytest.raises(ImageError, match="not an image"):
        predictor.predict(tmp_path / "empty.jpg")


def test_format_rows_formats_error_rows(predictor, photo_tree):
    rows = list(predictor.predict_paths([photo_tree / "broken.jpg", photo_tree / "a.jpg"]))
    assert "not an image" in format_rows(rows, "table")
    csv_rows = list(csv.DictReader(io.StringIO(format_rows(rows, "csv", 4))))
    assert csv_rows[0]["class_1"] == "" and "not an image" in csv_rows[0]["error"] and csv_rows[1]["error"] == ""
    js = json.loads(format_rows(rows, "json"))
    assert js[0]["top"] == [] and "group" not in js[0] and js[1]["error"] is None


def test_rows_come_in_input_order_with_errors_in_their_place(predictor, photo_tree, cli, run_dir):
    args = [photo_tree / "a.jpg", photo_tree / "nope.jpg", photo_tree / "broken.jpg", photo_tree / "sub" / "b.png"]
    rows = list(predictor.predict_paths(args, bs=1))
    assert [Path(r.file).name for r in rows] == ["a.jpg", "nope.jpg", "broken.jpg", "b.png"]
    assert [r.ok for r in rows] == [True, False, False, True]
    res = cli("predict", *args, "--model", run_dir, "--format", "csv")
    assert [Path(r["file"]).name for r in csv.DictReader(io.StringIO(res.stdout))] == ["a.jpg", "nope.jpg",
                                                                                      "broken.jpg", "b.png"]


def test_unsure_below_lists_the_likely_breeds(cli, run_dir, photo_tree, predictor):
    path = photo_tree / "a.jpg"
    top = predictor.topk(path, 2)
    sure = json.loads(cli("predict", path, "--model", run_dir, "-f", "json", "--unsure-below", "0").stdout)[0]
    unsure = json.loads(cli("predict", path, "--model", run_dir, "-f", "json", "--unsure-below", "1").stdout)[0]
    assert sure["verdict"]["class_sure"] and sure["verdict"]["likely"] == [top[0][0]]
    assert not unsure["verdict"]["class_sure"] and len(unsure["verdict"]["likely"]) >= 2
    assert " or " in unsure["verdict"]["class"] and predictor.display[unsure["verdict"]["likely"][0]] in \
        unsure["verdict"]["class"]
    assert predictor.unsure_below == 0.5  # the bundle's own, written by training
    res = cli("predict", path, "--model", run_dir, "--unsure-below", "1.5")
    assert res.exit_code == 2 and "--unsure-below" in res.output


def test_a_bundles_unsure_below_of_zero_is_kept_not_replaced_by_the_default(run_dir, tmp_path):
    """0 means "never unsure": read back as 0, not as a missing value (`or default` turned it into 0.5)."""
    copy = tmp_path / "never-unsure"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**manifest, "unsure_below": 0.0}))
    assert load_model(copy, backend="torch").unsure_below == 0.0


# ---------------------------------------------------------------------------------------------------- bad inputs


# ---------------------------------------------------------------------------------------------------- the bundle


def test_tampered_weights_are_refused(cli, run_dir, tmp_path, photo_tree):
    bad = tmp_path / "tampered"
    shutil.copytree(run_dir, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_model(bad)
    res = cli("predict", photo_tree / "a.jpg", "--model", bad)
    assert res.exit_code == 2 and "checksum mismatch" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_pickle_beside_the_bundle_is_never_unpickled(cli, run_dir, tmp_path, photo_tree):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bundle = tmp_path / "with_pickle"
    shutil.copytree(run_dir, bundle)
    (bundle / "export.pkl").write_bytes(pickle.dumps(Evil()))
    assert cli("predict", photo_tree / "a.jpg", "--model", bundle).exit_code == 0
    load_model(bundle).predict(photo_tree / "a.jpg")
    assert not marker.exists()


def test_corrupt_manifest_is_refused(run_dir, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(run_dir, bad)
    (bad / "model.json").write_text((run_dir / "model.json").read_text()[:50])
    with pytest.raises(BundleError, match="corrupt model file"):
        load_model(bad)


# ---------------------------------------------------------------------------------------------------- odd folders


@pytest.fixture()
def odd_tree(tmp_path, valid_items) -> Path:
    """odd/{good.jpg, café.jpg named in Latin-1 (not UTF-8)}."""
    import os

    root = tmp_path / "odd"
    root.mkdir()
    shutil.copy(valid_items[0], root / "good.jpg")
    with open(os.fsencode(root) + b"/caf\xe9.jpg", "wb") as f:
        f.write(valid_items[1].read_bytes())
    return root


def test_a_symlink_loop_is_an_error_row_and_folder_loops_are_not_followed(predictor, odd_tree):
    import os

    (odd_tree / "loop.jpg").symlink_to(odd_tree / "loop.jpg")
    (odd_tree / "sub").mkdir()
    (odd_tree / "sub" / "up").symlink_to(odd_tree)  # a folder loop

    for arg in (odd_tree, str(odd_tree / "**" / "*.jpg"), odd_tree / "loop.jpg"):
        rows = list(predictor.predict_paths([arg]))
        names = sorted(os.fsencode(Path(r.file).relative_to(odd_tree)) for r in rows)
        want = [b"loop.jpg"] if arg == odd_tree / "loop.jpg" else [b"caf\xe9.jpg", b"good.jpg", b"loop.jpg"]
        assert names == want, arg  # the glob module followed sub/up 40 levels deep: each file 40 times
        errors = {Path(r.file).name: r.error for r in rows if not r.ok}
        assert errors == {"loop.jpg": "loop.jpg: cannot read (Too many levels of symbolic links)"}


@pytest.mark.parametrize("fmt", ["csv", "table", "json"])
def test_a_non_utf8_file_name_is_written_not_an_abort(cli, run_dir, odd_tree, tmp_path, fmt):
    """Names are written as their own bytes (surrogateescape) to --out and stdout alike; JSON escapes them."""
    out = tmp_path / f"o.{fmt}"
    res = cli("predict", odd_tree, "--model", run_dir, "--format", fmt, "--out", out)
    assert res.exit_code == 0 and "2 predicted, 0 failed" in res.output, res.output
    data = out.read_bytes()
    assert data == cli("predict", odd_tree, "--model", run_dir, "--format", fmt).stdout_bytes
    if fmt == "json":
        names = [r["file"] for r in json.loads(data)]
        assert str(odd_tree / "caf\udce9.jpg") in names  # os.fsencode gives the name's bytes back
    else:  # the table may fold a long path over lines; the byte that is not UTF-8 is kept as it is
        assert (b"\xe9" if fmt == "table" else b"caf\xe9.jpg") in data


def test_one_files_unexpected_failure_is_its_row(predictor, photo_tree, monkeypatch):
    real = type(predictor.pre).one

    def flaky(self, src):
        if Path(src).name == "a.jpg":
            raise RuntimeError("decoder crashed")
        return real(self, src)

    monkeypatch.setattr(type(predictor.pre), "one", flaky)
    rows = list(predictor.predict_paths([photo_tree / "a.jpg", photo_tree / "sub" / "b.png"]))
    assert rows[0].error == "a.jpg: cannot be read (RuntimeError: decoder crashed)" and rows[1].ok


def test_heic_photos_are_predicted(predictor, valid_items, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(Image.open(valid_items[0]).convert("RGB")).save(tmp_path / "iphone.heic", quality=95)
    (tmp_path / "iphone.HEIF").write_bytes((tmp_path / "iphone.heic").read_bytes())
    rows = list(predictor.predict_paths([tmp_path]))
    assert [Path(r.file).name for r in rows] == ["iphone.HEIF", "iphone.heic"] and all(r.ok for r in rows)
    assert rows[0].top(1)[0][0] == next(iter(predictor.predict(valid_items[0])))  # HEVC is lossy; the top-1 holds


@pytest.mark.parametrize("where,why", [
    ("missing/o.csv", "missing does not exist"),
    ("file.txt/o.csv", "file.txt is not a folder"),
    (".", "it is a folder"),
    ("/sys/o.csv", "Permission denied"),  # sysfs refuses new files even to root (permission bits do not)
])
def test_out_is_checked_before_any_work(cli, run_dir, photo_tree, tmp_path, monkeypatch, where, why):
    import petclf.predict

    if where.startswith("/sys") and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    (tmp_path / "file.txt").write_text("a file")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(petclf.predict, "load_model", lambda *a, **k: pytest.fail("predicted before checking --out"))
    res = cli("predict", photo_tree / "a.jpg", "--model", run_dir, "--out", where)
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"error: cannot write {where}:") and why in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


def _keys(x) -> set[str]:
    """Every key of a JSON value, at any depth."""
    if isinstance(x, dict):
        return set(x) | {k for v in x.values() for k in _keys(v)}
    return {k for v in x for k in _keys(v)} if isinstance(x, list) else set()


@pytest.mark.slow
def test_a_folders_models_json_and_csv_carry_the_format_and_never_say_breed(cli, tmp_path_factory):
    """A user's own classes are no breeds: the keys are neutral (format 2) for every model; README has the mapping."""
    from conftest import tiny_config

    from petclf.formats import FORMAT
    from petclf.synth import synth_data
    from petclf.train import train

    data, run = tmp_path_factory.mktemp("folders"), tmp_path_factory.mktemp("folders_run")
    synth_data(data, "folders", n_classes=3, per_class=8, size=64, seed=0)
    train(tiny_config(data, run, layout="folders", epochs=1))
    photos = sorted(p for p in data.rglob("*.jpg"))[:2]
    js = json.loads(cli("predict", *photos, "--model", run, "-f", "json", "--topk", "2").stdout)
    assert FORMAT == 2 and [r["format"] for r in js] == [2, 2] and all(r["error"] is None for r in js)
    assert not [k for k in _keys(js) if "breed" in k or "species" in k], _keys(js)
    assert {"class_id", "class", "prob", "top", "answer", "verdict"} <= set(js[0]) and "class_sure" in js[0]["verdict"]
    head = cli("predict", *photos, "--model", run, "-f", "csv", "--topk", "2").stdout.splitlines()[0]
    assert head.startswith("file,class_id_1,class_1,prob_1,class_id_2") and "breed" not in head
