"""The predictor and `petclf predict`: fastai-exact preprocessing, paths, formats, bad inputs, tampering, ONNX."""

from __future__ import annotations

import csv
import io
import json
import resource
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from petclf.errors import BundleError, ImageError
from petclf.image import encode
from petclf.predict import FORMATS, Batcher, Preprocess, expand_paths, format_rows, load_model


@pytest.fixture(scope="module")
def run_dir(tiny_run) -> Path:
    return tiny_run[0]


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
    return [Path(p) for p in tiny_run[1].dls.valid_ds.items]


def cli(*args: str):
    from petclf.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("which", ["predictor", "onnx_predictor"])
def test_probabilities_equal_fastai_get_preds(tiny_run, valid_items, request, which):
    """Both backends meet 1e-4: onnxruntime's fused conv+BN kernels only reorder float sums (logits differ by
    ~1e-6), far below what 1e-4 in a probability could hide (a changed top-1 or pixel)."""
    predictor = request.getfixturevalue(which)
    _, learn = tiny_run
    preds, _ = learn.get_preds()
    rows = list(predictor.predict_paths(valid_items, bs=7))
    assert [r.file for r in rows] == [str(p) for p in valid_items] and all(r.ok for r in rows)
    mine = torch.tensor([[r.probs[c] for c in learn.dls.vocab] for r in rows])
    assert (mine - preds).abs().max().item() < 1e-4
    single = predictor.predict(valid_items[0])
    assert max(abs(single[c] - preds[0, i].item()) for i, c in enumerate(learn.dls.vocab)) < 1e-4


@pytest.mark.parametrize("size,presize", [(224, 460), (96, 128)])
def test_preprocessing_equals_fastai_validation_batch(synth_dir, size, presize):
    """Sizes where fastai's area-downsampling hack kicks in (460 -> 224) and where it does not."""
    from petclf.data import load_pets, make_dataloaders

    pets = load_pets(synth_dir, seed=42)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    dls = make_dataloaders(pets, bs=8, size=size, presize=presize, mean=mean, std=std, workers=0)
    xb, _ = dls.valid.one_batch()
    mine = Preprocess(size, presize, mean, std)(dls.valid_ds.items[:len(xb)])
    assert mine.shape == xb.shape
    assert (mine - xb).abs().max().item() < 1e-4


@pytest.mark.parametrize("w,h", [(500, 375), (375, 500), (461, 460), (97, 61), (2017, 1511)])
def test_resize_in_bands_is_bit_for_bit_the_whole_resize(w, h):
    """`predict` splits one image's resize over threads; every band must be exactly those rows of the whole
    resize, up- and downscaling, on odd sizes (noise shows any off-by-one in a filter tap)."""
    from concurrent.futures import ThreadPoolExecutor

    from petclf.predict import resize_bands, valid_resize, valid_resize_bands

    img = Image.fromarray(np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8))
    with ThreadPoolExecutor(3) as pool:
        for presize in (460, 128, 98):
            whole = np.asarray(valid_resize(img, presize))
            for threads in (2, 3, 4, 8):
                parts = resize_bands(presize, threads)
                assert parts == (2 if presize == 98 or threads < 4 else 4)
                assert np.array_equal(valid_resize_bands(img, presize, pool, parts), whole), (presize, parts)
        with pytest.raises(ValueError, match="exactly"):
            valid_resize_bands(img, 460, pool, 3)  # edges at h/3 are not exact in Pillow's float32 box


def test_temperature_from_manifest_is_applied(run_dir, tmp_path, valid_items):
    from petclf.bundle import read_manifest, write_atomic

    hot = tmp_path / "hot"
    shutil.copytree(run_dir, hot)
    manifest = read_manifest(hot)
    manifest["temperature"] = 3.0
    write_atomic(hot / "model.json", json.dumps(manifest))
    base, p = load_model(run_dir), load_model(hot)
    logits = base.logits(base.preprocess([valid_items[0]]))[0]
    want = torch.softmax(logits / 3.0, 0)
    got = p.predict(valid_items[0])
    assert max(abs(got[c] - want[i].item()) for i, c in enumerate(p.classes)) < 1e-6
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
    assert abs(sum(row.species_probs.values()) - 1) < 1e-5 and set(row.species_probs) == {"cat", "dog"}
    assert row.species == max(row.species_probs, key=row.species_probs.get)


def test_flip_tta_averages_the_flipped_image(predictor, valid_items):
    path = valid_items[2]
    plain, tta = predictor.predict(path), predictor.predict(path, tta=True)
    flipped = predictor.predict(Image.open(path).transpose(Image.FLIP_LEFT_RIGHT))
    assert max(abs(tta[k] - (plain[k] + flipped[k]) / 2) for k in plain) < 1e-5


def test_batcher_groups_concurrent_calls_and_keeps_rows_apart(predictor, valid_items):
    from concurrent.futures import ThreadPoolExecutor

    xs = [predictor.preprocess([p]) for p in valid_items[:12]]
    want = predictor.probs(torch.cat(xs))
    batcher = Batcher(predictor, max_batch=4)
    try:
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(batcher, xs))
    finally:
        batcher.close()
    assert (torch.cat(got) - want).abs().max().item() < 1e-5


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


def test_cli_predicts_a_folder_with_an_error_row_and_exit_1(run_dir, photo_tree, tmp_path):
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
        assert by_name[name]["species"] in ("cat", "dog") and by_name[name]["error"] is None


def test_cli_exit_0_when_all_good_and_every_format(run_dir, photo_tree, predictor):
    glob_arg = str(photo_tree / "**" / "*.jpg")  # a.jpg, broken.jpg, sub/deeper/c.jpg
    good = [photo_tree / "a.jpg", photo_tree / "sub" / "b.png"]
    outputs = {}
    for fmt in FORMATS:
        res = cli("predict", *good, "--model", run_dir, "--format", fmt, "--topk", "2", "--bs", "1")
        assert res.exit_code == 0, res.output
        outputs[fmt] = res.stdout
    want = predictor.topk(good[0], 2)
    table = outputs["table"]
    assert str(good[0]) in table and want[0][0] in table
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert [r["file"] for r in rows] == [str(p) for p in good]
    assert rows[0]["breed_1"] == want[0][0] and abs(float(rows[0]["prob_1"]) - want[0][1]) < 1e-5
    assert rows[0]["breed_2"] == want[1][0] and rows[0]["error"] == ""
    js = json.loads(outputs["json"])
    assert [t["breed"] for t in js[1]["top"]] == [b for b, _ in predictor.topk(good[1], 2)]
    res = cli("predict", glob_arg, "--model", run_dir, "--format", "csv")
    assert res.exit_code == 1 and len(list(csv.DictReader(io.StringIO(res.stdout)))) == 3


def test_cli_usage_errors_exit_2(run_dir, photo_tree, tmp_path):
    res = cli("predict", photo_tree / "a.jpg", "--model", run_dir, "--format", "xml")
    assert res.exit_code == 2 and "--format" in res.output
    res = cli("predict", photo_tree / "a.jpg", "--model", tmp_path / "no-model")
    assert res.exit_code == 2 and "no model at" in res.output and "Traceback" not in res.output
    res = cli("export", "--model", run_dir)
    assert res.exit_code == 2 and "--onnx" in res.output


def test_format_rows_formats_error_rows(predictor, photo_tree):
    rows = list(predictor.predict_paths([photo_tree / "broken.jpg", photo_tree / "a.jpg"]))
    assert "not an image" in format_rows(rows, "table")
    assert list(csv.DictReader(io.StringIO(format_rows(rows, "csv", 4))))[0]["breed_1"] == ""
    assert json.loads(format_rows(rows, "json"))[0]["species"] is None


# ---------------------------------------------------------------------------------------------------- bad inputs


def _bomb_png(w: int = 20000, h: int = 20000) -> bytes:
    """A valid-looking PNG header declaring w x h pixels with almost no data behind it (cheap to make)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("name,data,match", [
    ("empty.jpg", b"", "not an image"),
    ("text.jpg", b"hello, I am a text file\n", "not an image"),
    ("Abyssinian_100.mat", b"MATLAB 5.0 MAT-file\x00" * 8, "not an image"),
    ("bomb.png", _bomb_png(), "too large|pixel limit"),
    ("over_limit.png", _bomb_png(10000, 10000), "pixel limit"),  # under Pillow's own bomb threshold, over ours
], ids=["empty", "text", "mat", "bomb", "over-limit"])
def test_unreadable_files_are_one_line_errors(predictor, tmp_path, name, data, match):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageError, match=match):
        predictor.predict(path)


def test_truncated_jpeg_and_oversized_file(predictor, tmp_path, valid_items):
    img = Image.open(valid_items[0]).resize((256, 256))
    (tmp_path / "cut.jpg").write_bytes(encode(img, "JPEG")[:2000])
    with pytest.raises(ImageError, match="truncated"):
        predictor.predict(tmp_path / "cut.jpg")
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:
        f.write(encode(img, "JPEG"))
        f.truncate(25 * 2**20)  # sparse: 25 MB on paper, refused before a byte is decoded
    with pytest.raises(ImageError, match="over the 20 MB limit"):
        predictor.predict(big)


def test_bomb_is_refused_with_flat_memory(predictor, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(30000, 30000))  # 2.7 GB if decoded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = list(predictor.predict_paths([path]))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert not rows[0].ok and "too large" in rows[0].error
    assert grown_mb < 50


@pytest.fixture(scope="module")
def confident(predictor, valid_items) -> Image.Image:
    """The validation image the model is surest about, padded to a non-square 96 x 64 photo."""
    best = max(valid_items, key=lambda p: next(iter(predictor.predict(p).values())))
    im = Image.open(best).convert("RGB")
    canvas = Image.new("RGB", (im.width + 32, im.height), (128, 128, 128))
    canvas.paste(im, (16, 0))
    return canvas


@pytest.mark.parametrize("orientation,stored_as", [(3, Image.ROTATE_180), (6, Image.ROTATE_90),
                                                   (8, Image.ROTATE_270)])
def test_exif_orientation_is_applied(predictor, confident, tmp_path, orientation, stored_as):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone_{orientation}.jpg"
    confident.transpose(stored_as).save(path, quality=95, exif=exif.tobytes())
    upright = tmp_path / "upright.jpg"
    confident.save(upright, quality=95)
    from petclf.image import load_rgb

    shown = np.asarray(load_rgb(path), np.float32)
    assert shown.shape == np.asarray(confident).shape
    assert np.abs(shown - np.asarray(load_rgb(upright), np.float32)).mean() < 4
    assert next(iter(predictor.predict(path))) == next(iter(predictor.predict(upright)))


def _modes(img: Image.Image) -> dict[str, bytes]:
    deep = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257).astype(np.uint16))
    return {"cmyk.jpg": encode(img.convert("CMYK"), "JPEG"),
            "palette_transparent.png": encode(img.convert("P", palette=Image.ADAPTIVE), "PNG", transparency=0),
            "rgba.png": encode(img.convert("RGBA"), "PNG"),
            "gray.png": encode(img.convert("L"), "PNG"),
            "gray16.png": encode(deep, "PNG"),
            "photo.webp": encode(img, "WEBP", lossless=True)}


def test_every_pil_mode_becomes_sane_rgb(predictor, confident, tmp_path):
    from petclf.image import load_rgb

    for name, data in _modes(confident).items():
        (tmp_path / name).write_bytes(data)
    rows = {Path(r.file).name: r for r in predictor.predict_paths([tmp_path])}
    assert all(r.ok for r in rows.values()), {n: r.error for n, r in rows.items()}
    assert abs(sum(rows["rgba.png"].probs.values()) - 1) < 1e-5
    gray8 = np.asarray(load_rgb(tmp_path / "gray.png"), np.int16)
    gray16 = np.asarray(load_rgb(tmp_path / "gray16.png"), np.int16)
    assert gray16.shape == gray8.shape == (confident.height, confident.width, 3)
    assert np.abs(gray16 - gray8).max() <= 1  # scaled, not clipped to white
    rgba = np.asarray(load_rgb(tmp_path / "rgba.png"), np.int16)
    assert np.abs(rgba - np.asarray(confident, np.int16)).max() == 0
    assert rows["photo.webp"].probs == pytest.approx(predictor.predict(confident), abs=1e-5)


def test_animated_gif_uses_the_first_frame(predictor, confident, tmp_path):
    frames = [confident, confident.transpose(Image.FLIP_TOP_BOTTOM).point(lambda v: 255 - v)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(tmp_path / "first.gif")
    a, b = predictor.predict(tmp_path / "anim.gif"), predictor.predict(tmp_path / "first.gif")
    assert list(a) == list(b) and max(abs(a[k] - b[k]) for k in a) < 1e-6
    assert predictor.predict(tmp_path / "anim.gif") == a  # deterministic


@pytest.mark.parametrize("w,h", [(1, 1), (8, 8), (4000, 10), (10, 4000)])
def test_tiny_and_extreme_aspect_images_still_predict(predictor, w, h):
    arr = np.random.default_rng(w * h).integers(0, 255, (h, w, 3), dtype=np.uint8)
    probs = predictor.predict(arr)
    assert len(probs) == len(predictor.classes) and abs(sum(probs.values()) - 1) < 1e-5


# ---------------------------------------------------------------------------------------------------- the bundle


def test_tampered_weights_are_refused(run_dir, tmp_path, photo_tree):
    bad = tmp_path / "tampered"
    shutil.copytree(run_dir, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_model(bad)
    res = cli("predict", photo_tree / "a.jpg", "--model", bad)
    assert res.exit_code == 2 and "checksum mismatch" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_pickle_beside_the_bundle_is_never_unpickled(run_dir, tmp_path, photo_tree):
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


# ---------------------------------------------------------------------------------------------------- ONNX


@pytest.mark.slow
def test_onnx_export_matches_torch_and_refuses_tampering(run_dir, tmp_path, valid_items, photo_tree):
    bundle = tmp_path / "onnx"
    shutil.copytree(run_dir, bundle)
    res = cli("export", "--onnx", "--model", bundle)
    assert res.exit_code == 0, res.output
    assert (bundle / "model.onnx").is_file() and "max |logit diff|" in res.stdout
    torch_p, onnx_p = load_model(bundle), load_model(bundle, backend="onnx")
    for a, b in zip(torch_p.predict_paths(valid_items[:6]), onnx_p.predict_paths(valid_items[:6]), strict=True):
        assert max(abs(a.probs[k] - b.probs[k]) for k in a.probs) < 1e-4
    res = cli("predict", photo_tree / "a.jpg", "--model", bundle, "--onnx", "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["top"][0]["breed"] == torch_p.topk(photo_tree / "a.jpg")[0][0]
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
    assert (torch_p.probs(x) - onnx_p.probs(x)).abs().max() < 1e-4


def test_training_exports_onnx_and_auto_picks_it_on_cpu(run_dir, onnx_predictor, predictor, valid_items):
    from petclf.predict import ONNX_INFO_NAME

    info = json.loads((run_dir / ONNX_INFO_NAME).read_text())
    assert info["max_abs_diff"] <= info["rtol"] * max(1.0, info["max_abs_logit"]) and info["max_abs_diff"] < 1e-3
    assert (run_dir / "model.onnx").is_file()
    assert onnx_predictor.has_model  # Grad-CAM's torch network, loaded on first use, is the bundle's network
    x = predictor.preprocess(valid_items[:2])
    with torch.no_grad():
        assert torch.equal(onnx_predictor.model(x), predictor.model(x))
