"""The data layer: finding data, verification (and its cache), splits, DataLoaders."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from petclf import data as D
from petclf import verify as V
from petclf.errors import DataError
from petclf.io import reachable
from petclf.labels import breed_of
from petclf.listing import Listing
from petclf.synth import synth_pets


def test_the_images_subfolder_is_read_whether_given_or_its_parent(tmp_path):
    synth_pets(tmp_path / "images", n_classes=2, per_class=5, size=16)
    (tmp_path / "annotations").mkdir()
    assert D.load_data(tmp_path).root == tmp_path / "images"
    assert D.load_data(tmp_path / "images").root == tmp_path / "images"


def test_a_missing_data_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        D.load_data(tmp_path / "nope")


def test_without_network_or_local_copy_the_error_names_data_flag(tmp_path, monkeypatch):
    from fastai.data.external import URLs

    if reachable(URLs.PETS, timeout=3):
        pytest.skip("the Pets download host is reachable from this machine; this test is for offline machines")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"cannot be downloaded \(no network\).*--data"):
        D.find_root(None, dest=tmp_path / "data")  # the network check is bounded (io.NETWORK_TIMEOUT)
    assert not (tmp_path / "data").exists()  # no download was started


@pytest.mark.parametrize("layout,split", [("csv", "random"), ("folders", "test")])
def test_loading_walks_the_folder_once(tmp_path, monkeypatch, layout, split):
    """Detection tries every reading (csv, folders, pets), `split="test"` reads the layout again and the
    report lists the files that are not images: all from one walk."""
    from petclf import listing
    from petclf.synth import synth_data

    synth_data(tmp_path, layout, n_classes=2, per_class=5, size=16, split_dirs=True)
    if layout == "folders":
        (tmp_path / "valid").rename(tmp_path / "test")
    walks = []
    real = listing.walk_files
    monkeypatch.setattr(listing, "walk_files", lambda root: walks.append(root) or real(root))
    data = D.load_data(tmp_path, split=split)
    assert walks == [tmp_path] and data.report.layout == layout and data.valid_idx


def test_a_listing_views_images_and_other_files_by_folder(tmp_path):
    synth_pets(tmp_path / "images", n_classes=2, per_class=2, size=16)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "list.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "beagle_9.jpg").write_bytes(b"")
    files = Listing.of(tmp_path)
    assert files.images == files.images_under(tmp_path / "images") and len(files.images) == 4
    assert files.others_under(tmp_path) == [tmp_path / "annotations" / "list.txt"]
    assert files.others_under(tmp_path / "images") == []
    assert files.images_under(tmp_path / "annotations") == []
    assert tmp_path / "images" in files.image_dirs and tmp_path / "annotations" not in files.image_dirs


def test_every_planted_bad_file_gets_its_verdict(bad_synth):
    root, planted = bad_synth
    pets = D.load_data(root, use_cache=False)
    rep = pets.report
    verdicts = {Path(r["path"]).name: "skipped" for r in rep.skipped}
    verdicts |= {Path(r["path"]).name: "converted" for r in rep.converted}
    verdicts |= {Path(p).name: "unlabelled" for p in rep.unlabelled}
    verdicts |= {Path(p).name: "ignored" for p in rep.ignored}
    assert verdicts == planted
    usable = {p.name for p in pets.items}
    assert not usable & {n for n, v in planted.items() if v in ("skipped", "unlabelled", "ignored")}
    assert {n for n, v in planted.items() if v == "converted"} <= usable
    # 12 clean images per class plus the converted plants of that class
    converted = [n for n, v in planted.items() if v == "converted"]
    for breed, n in rep.class_counts.items():
        assert n == 12 + sum(breed_of(c) == breed for c in converted)


def test_converted_files_decode_to_sane_rgb(bad_synth):
    root, planted = bad_synth
    for name, verdict in planted.items():
        if verdict == "converted":
            img = D.PetImage.create(root / name)
            assert img.mode == "RGB" and img.size == (64, 64)


def test_verification_cache_skips_unchanged_files_and_rechecks_changed_ones(tmp_path, monkeypatch):
    synth_pets(tmp_path, n_classes=2, per_class=3, size=16)
    files = Listing.of(tmp_path).images
    calls = []
    real = V.check_image
    monkeypatch.setattr(V, "check_image", lambda p: calls.append(p.name) or real(p))
    first = V.verify_images(files, tmp_path)
    assert len(calls) == 6
    calls.clear()
    second = V.verify_images(files, tmp_path)
    assert calls == [] and second == first
    victim = files[0]
    victim.write_bytes(b"")  # changed size: must be decoded again, and now fails
    os.utime(victim, ns=(time.time_ns(), time.time_ns()))
    third = V.verify_images(files, tmp_path)
    assert calls == [victim.name]
    assert third[0].status == "skipped" and all(c.status == "ok" for c in third[1:])


def test_random_split_is_the_seeded_fastbook_split_and_deterministic(synth_dir):
    a = D.load_data(synth_dir, split="random", seed=42)
    b = D.load_data(synth_dir, split="random", seed=42)
    c = D.load_data(synth_dir, split="random", seed=7)
    assert a.valid_idx == b.valid_idx and a.valid_idx != c.valid_idx
    assert not set(a.train_idx) & set(a.valid_idx)
    assert sorted(a.train_idx + a.valid_idx) == list(range(len(a.items)))
    assert len(a.valid_idx) == int(0.2 * len(a.items))


def _write_annotations(root: Path, test_stems: list[str], trainval_stems: list[str]) -> None:
    ann = root / "annotations"
    ann.mkdir()
    (ann / "test.txt").write_text("".join(f"{s} 1 1 1\n" for s in test_stems))
    (ann / "trainval.txt").write_text("# header comment\n" + "".join(f"{s} 1 1 1\n" for s in trainval_stems))


def test_official_split_reads_annotations_and_drops_unlisted_images(tmp_path):
    images = tmp_path / "images"
    synth_pets(images, n_classes=2, per_class=5, size=16)
    stems = sorted(p.stem for p in images.iterdir())
    _write_annotations(tmp_path, stems[:3], stems[3:9])  # stems[9] is in neither file
    pets = D.load_data(tmp_path, split="official")
    assert sorted(pets.items[i].stem for i in pets.valid_idx) == stems[:3]
    assert sorted(pets.items[i].stem for i in pets.train_idx) == stems[3:9]
    assert [Path(p).stem for p in pets.report.unsplit] == [stems[9]]


def test_pets_official_test_list_is_never_trained_on(tmp_path):
    """The random split draws from trainval only (test.txt's photos are set aside); `official` validates
    on the test list, and a recipe that trains on every photo (the probe: `fit_idx`) uses the train half."""
    images = tmp_path / "images"
    synth_pets(images, n_classes=2, per_class=10, size=16)
    stems = sorted(p.stem for p in images.iterdir())
    test, trainval = stems[::4], [s for s in stems if s not in stems[::4]]
    _write_annotations(tmp_path, test, trainval)
    pets = D.load_data(tmp_path, split="random")
    assert sorted(p.stem for p in pets.items) == trainval and not pets.valid_is_test
    assert sorted(Path(p).stem for p in pets.report.unsplit) == test
    official = D.load_data(tmp_path, split="official")
    assert official.valid_is_test and sorted(official.items[i].stem for i in official.fit_idx) == trainval


def test_official_split_without_annotations_is_a_clear_error(synth_dir):
    with pytest.raises(DataError, match="annotations"):
        D.load_data(synth_dir, split="official")


def test_file_split_takes_names_with_or_without_extension(tmp_path, synth_dir):
    items = D.load_data(synth_dir).items
    chosen = [items[1].name, items[5].stem, items[9].name]
    split_file = tmp_path / "valid.txt"
    split_file.write_text("\n".join(chosen) + "\n")
    pets = D.load_data(synth_dir, split=str(split_file))
    assert {pets.items[i].name for i in pets.valid_idx} == {items[1].name, items[5].name, items[9].name}
    assert len(pets.train_idx) == len(items) - 3


def test_split_file_naming_no_image_is_refused(tmp_path, synth_dir):
    f = tmp_path / "valid.txt"
    f.write_text("nothing_1.jpg\n")
    with pytest.raises(DataError, match="names none"):
        D.load_data(synth_dir, split=str(f))


def test_empty_folder_and_one_class_are_refused(tmp_path):
    with pytest.raises(DataError, match="no images"):
        D.load_data(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no images"):
        D.load_data(tmp_path)
    for k in range(4):
        Image.new("RGB", (16, 16)).save(tmp_path / f"beagle_{k}.jpg")
    with pytest.raises(DataError, match="only one class"):
        D.load_data(tmp_path)


@pytest.mark.parametrize("layout,per_class,split,match", [
    ("pets", 1, "random", "leaves 2 training and 0 validation images; a run needs both: add photos"),  # 1 a class
    ("pets", 2, "random", "leaves 4 training and 0 validation images"),  # 20 % of 4 rounds to none
    ("csv", 3, "valid", "leaves 0 training and 6 validation images")])
def test_data_too_small_to_split_is_one_line(tmp_path, layout, per_class, split, match):
    from petclf.synth import LABELS_CSV, synth_data

    synth_data(tmp_path, layout, n_classes=2, per_class=per_class, size=16)
    labels = tmp_path / LABELS_CSV
    if layout == "csv":  # every photo in one part of the csv's split
        rows = labels.read_text().splitlines()
        labels.write_text("\n".join([rows[0], *(r.rsplit(",", 1)[0] + f",{split}" for r in rows[1:])]) + "\n")
    with pytest.raises(DataError, match=match):
        D.load_data(tmp_path, layout=layout, labels=labels if layout == "csv" else None)


def test_a_class_with_few_images_is_named_in_a_warning(tmp_path):
    synth_pets(tmp_path, n_classes=3, per_class=20, size=16)
    for p in list(tmp_path.glob("Bengal_*.jpg"))[3:]:
        p.unlink()
    rep = D.load_data(tmp_path).report
    assert any("Bengal" in w for w in rep.warnings)
    assert not any("Abyssinian" in w for w in rep.warnings)


def test_report_saves_json_and_summary_names_bad_files(tmp_path, bad_synth):
    root, planted = bad_synth
    rep = D.load_data(root).report
    saved = json.loads(rep.save(tmp_path).read_text())
    assert saved["n_images"] == rep.n_images and saved["class_counts"] == rep.class_counts
    text = rep.summary()
    for name in planted:
        assert name in text


def test_dataloaders_use_presizing_normalisation_and_cats_first_vocab(synth_dir):
    from fastai.vision.augment import RandomResizedCropGPU, Resize
    from fastai.vision.data import Normalize

    pets = D.load_data(synth_dir)
    dls = D.make_dataloaders(pets, bs=8, size=32, presize=48, mean=(0.5,) * 3, std=(0.5,) * 3, workers=0)
    assert list(dls.vocab) == ["Abyssinian", "Bengal", "american_bulldog", "american_pit_bull_terrier"]
    assert any(isinstance(t, Resize) and t.size == (48, 48) for t in dls.train.after_item.fs)
    assert any(isinstance(t, RandomResizedCropGPU) for t in dls.train.after_batch.fs)
    norms = [t for t in dls.after_batch.fs if isinstance(t, Normalize)]
    assert len(norms) == 1
    xb, yb = dls.one_batch()
    assert xb.shape == (8, 3, 32, 32) and yb.shape == (8,)
    assert len(dls.valid_ds) == len(pets.valid_idx)


def test_crop_runs_before_the_warp_and_validation_is_fastais(synth_dir, monkeypatch):
    import torch
    from fastai.vision.augment import AffineCoordTfm, RandomResizedCropGPU, aug_transforms

    pets = D.load_data(synth_dir)
    kw = dict(bs=8, size=32, presize=48, mean=(0.5,) * 3, std=(0.5,) * 3, workers=0)
    dls = D.make_dataloaders(pets, **kw)
    names = [type(t) for t in dls.train.after_batch.fs]
    crop = next(i for i, t in enumerate(names) if issubclass(t, RandomResizedCropGPU))
    warp = next(i for i, t in enumerate(names) if issubclass(t, AffineCoordTfm))
    assert crop < warp
    xb, _ = dls.train.one_batch()
    assert xb.shape == (8, 3, 32, 32)
    monkeypatch.setattr(D, "augmentations", lambda size, min_scale: aug_transforms(size=size, min_scale=min_scale))
    plain = D.make_dataloaders(pets, **kw)
    # on validation fastai still resamples through an identity grid, now at `size` instead of the presize:
    # the same image up to float rounding
    assert torch.allclose(dls.valid.one_batch()[0], plain.valid.one_batch()[0], atol=1e-4)


def test_a_cached_verdict_is_checked_again_after_chmod(tmp_path):
    """Permissions are part of what a cached verdict depends on: after `chmod 000` the file is decoded again (as
    root it still reads; as any other user it becomes 'permission denied' instead of failing training later)."""
    synth_pets(tmp_path, n_classes=2, per_class=3, size=16)
    files = Listing.of(tmp_path).images
    V.verify_images(files, tmp_path)
    cache = json.loads(V.cache_file(tmp_path).read_text())
    target = files[0]
    old_stamp = cache[str(target)]["stamp"]
    target.chmod(0)
    try:
        checks = V.verify_images(files, tmp_path)
        new_stamp = json.loads(V.cache_file(tmp_path).read_text())[str(target)]["stamp"]
        assert new_stamp != old_stamp and new_stamp[2] & 0o777 == 0
        expected = "ok" if os.geteuid() == 0 else "skipped"
        assert checks[0].status == expected
    finally:
        target.chmod(0o644)
