"""petclf.layouts through the data layer: each layout read, detected and split as fastai would; bad input refused."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from petclf import data as D
from petclf.errors import DataError
from petclf.layouts import read_groups, read_layout
from petclf.synth import LABELS_CSV, OWN_CLASSES, synth_data, synth_pets


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (len(path.name) * 20 % 255, 80, 160)).save(path)
    return path


def _folders(root: Path, counts: dict[str, int], prefix: str = "") -> Path:
    for label, n in counts.items():
        for k in range(n):
            _img(root / prefix / label / f"{k}.jpg")
    return root


def _csv(root: Path, text: str) -> Path:
    (root / LABELS_CSV).write_text(text, encoding="utf-8")
    return root / LABELS_CSV


# ---------------------------------------------------------------------------------------------------- detection


def test_each_synthetic_layout_is_detected_with_its_reason(tmp_path):
    synth_pets(tmp_path / "pets", n_classes=3, per_class=5, size=16)
    synth_data(tmp_path / "folders", "folders", n_classes=3, per_class=5, size=16)
    synth_data(tmp_path / "split", "folders", n_classes=3, per_class=5, size=16, split_dirs=True)
    synth_data(tmp_path / "csv", "csv", n_classes=3, per_class=5, size=16)
    found = {name: D.load_data(tmp_path / name) for name in ("pets", "folders", "split", "csv")}
    assert {n: p.report.layout for n, p in found.items()} == {"pets": "pets", "folders": "folders",
                                                              "split": "folders", "csv": "csv"}
    assert found["pets"].vocab == ["Abyssinian", "Bengal", "american_bulldog"]
    for name in ("folders", "split", "csv"):
        assert found[name].vocab == sorted(OWN_CLASSES[:3])  # spaces, accents and capitals kept as they are
    assert "class folders" in found["folders"].report.layout_why
    assert "train/ and valid/" in found["split"].report.layout_why
    assert "labels.csv" in found["csv"].report.layout_why and "layout csv" in found["csv"].report.summary()


def test_folders_split_is_fastais_grandparent_split_and_labels_its_parent_label(tmp_path):
    from fastai.data.transforms import GrandparentSplitter, parent_label

    root = _folders(_folders(tmp_path, {"Red fox": 4, "Ølkrus": 4}, "train"), {"Red fox": 2, "Ølkrus": 1}, "valid")
    pets = D.load_data(root)
    train, valid = GrandparentSplitter()(pets.items)
    assert sorted(pets.train_idx) == sorted(map(int, train)) and sorted(pets.valid_idx) == sorted(map(int, valid))
    assert pets.labels == [parent_label(p) for p in pets.items] and pets.report.split == "folders train/ + valid/"
    dls = D.make_dataloaders(pets, bs=4, size=16, presize=16, workers=0)
    assert list(dls.vocab) == ["Red fox", "Ølkrus"] and len(dls.valid_ds) == 3


def test_a_valid_pct_the_layouts_own_split_replaces_is_a_warning(tmp_path):
    root = _folders(_folders(tmp_path, {"x": 3, "y": 3}, "train"), {"x": 1, "y": 1}, "valid")
    assert not any("valid_pct" in w for w in D.load_data(root).report.warnings)
    data = D.load_data(root, valid_pct=0.5)
    assert len(data.valid_idx) == 2 and any("valid_pct 0.5 is not used" in w for w in data.report.warnings)


def test_val_or_test_folder_is_the_validation_half_and_a_test_beside_valid_is_set_aside(tmp_path):
    _folders(_folders(tmp_path / "a", {"x": 3, "y": 3}, "train"), {"x": 1, "y": 1}, "val")
    assert len(D.load_data(tmp_path / "a").valid_idx) == 2
    root = _folders(tmp_path / "b", {"x": 3, "y": 3}, "train")
    _folders(_folders(root, {"x": 1, "y": 1}, "valid"), {"x": 2, "y": 2}, "test")
    pets = D.load_data(root)
    assert len(pets.valid_idx) == 2 and len(pets.report.unsplit) == 4
    assert all("/test/" in p for p in pets.report.unsplit)


def test_a_test_part_is_never_in_training_data_even_without_a_validation_part(tmp_path):
    """test/ beside train/ alone, or csv rows train/test only: the test photos are set aside (every recipe
    trains on what the data layer gives it, the probe on all of it) and the rest is split as --split says."""
    root = _folders(_folders(tmp_path / "f", {"x": 5, "y": 5}, "train"), {"x": 2, "y": 2}, "test")
    pets = D.load_data(root)
    assert len(pets.items) == 10 and not any("test" in p.parts for p in pets.items)
    assert pets.report.split == "random" and len(pets.report.unsplit) == 4 and not pets.valid_is_test
    assert pets.fit_idx == list(range(10))
    for k in range(12):
        _img(tmp_path / "c" / f"p{k}.png")
    halves = ["train"] * 9 + ["test"] * 3
    rows = "".join(f"p{k}.png,{'AB'[k % 2]},{h}\n" for k, h in enumerate(halves))
    _csv(tmp_path / "c", "file,label,split\n" + rows)
    pets = D.load_data(tmp_path / "c")
    assert sorted(p.name for p in pets.items) == sorted(f"p{k}.png" for k in range(9))
    assert pets.report.split == "random" and sorted(Path(p).name for p in pets.report.unsplit) == \
        ["p10.png", "p11.png", "p9.png"]
    tested = D.load_data(tmp_path / "c", split="test")
    assert sorted(tested.items[i].name for i in tested.valid_idx) == ["p10.png", "p11.png", "p9.png"]
    assert tested.valid_is_test and tested.fit_idx == tested.train_idx


def test_split_test_reads_the_test_part_of_folders_and_csv_and_refuses_data_without_one(tmp_path):
    root = _folders(tmp_path / "f", {"x": 3, "y": 3}, "train")
    _folders(_folders(root, {"x": 1, "y": 1}, "valid"), {"x": 2, "y": 2}, "test")
    pets = D.load_data(root, split="test")
    assert sorted(str(pets.items[i].relative_to(root)) for i in pets.valid_idx) == \
        ["test/x/0.jpg", "test/x/1.jpg", "test/y/0.jpg", "test/y/1.jpg"]
    assert pets.report.split == "folders train/ + test/" and all("/valid/" in u for u in pets.report.unsplit)
    for k in range(6):
        _img(tmp_path / "c" / f"p{k}.png")
    halves = ["train", "train", "valid", "valid", "test", "test"]
    rows = "".join(f"p{k}.png,{'AB'[k % 2]},{h}\n" for k, h in enumerate(halves))
    _csv(tmp_path / "c", "file,label,split\n" + rows)
    pets = D.load_data(tmp_path / "c", split="test")
    assert sorted(pets.items[i].name for i in pets.valid_idx) == ["p4.png", "p5.png"] and len(pets.train_idx) == 2
    for no_test in (_folders(tmp_path / "n", {"x": 3, "y": 3}), _folders(tmp_path / "v", {"x": 3, "y": 3}, "train")):
        with pytest.raises(DataError, match="--split test needs a test part"):
            D.load_data(no_test, split="test")


def test_csv_with_is_valid_follows_fastais_col_splitter(tmp_path):
    import pandas as pd
    from fastai.data.transforms import ColSplitter

    for k in range(6):
        _img(tmp_path / "pics" / f"p{k}.png")
    _csv(tmp_path, "file,label,is_valid\n" + "".join(f"pics/p{k}.png,{'AB'[k % 2]},{k >= 4}\n" for k in range(6)))
    pets = D.load_data(tmp_path)
    df = pd.read_csv(tmp_path / LABELS_CSV)
    _, valid = ColSplitter("is_valid")(df)
    assert sorted(pets.items[i].name for i in pets.valid_idx) == sorted(Path(f).name for f in df.file[valid])
    assert pets.labels == list(df.label)


def test_an_ambiguous_folder_names_both_readings_and_the_flag(tmp_path):
    for k in range(3):
        _img(tmp_path / "cats" / f"Abyssinian_{k}.jpg")
        _img(tmp_path / "dogs" / f"beagle_{k}.jpg")
    with pytest.raises(DataError) as err:
        D.load_data(tmp_path)
    msg = str(err.value)
    assert "reads two ways" in msg and "'cats'" in msg and "'Abyssinian'" in msg
    assert "--layout folders" in msg and "--layout pets" in msg
    assert D.load_data(tmp_path, layout="folders").vocab == ["cats", "dogs"]
    assert D.load_data(tmp_path, layout="pets").vocab == ["Abyssinian", "beagle"]


def test_class_folders_whose_file_names_agree_are_not_ambiguous(tmp_path):
    for breed in ("Bengal", "pug"):
        for k in range(3):
            _img(tmp_path / breed / f"{breed}_{k}.jpg")
    assert D.load_data(tmp_path).report.layout == "folders"


def test_pets_with_annotations_is_pets_even_with_trimaps(tmp_path):
    synth_pets(tmp_path / "images", n_classes=2, per_class=4, size=16)
    for k in range(3):
        _img(tmp_path / "annotations" / "trimaps" / f"x_{k}.png")
    assert D.load_data(tmp_path).report.layout == "pets"


# ---------------------------------------------------------------------------------------------------- bad input


def test_empty_class_folder_is_listed_and_skipped_and_fewer_than_two_classes_refused(tmp_path):
    _folders(tmp_path, {"apple": 4, "pear": 4})
    (tmp_path / "plum").mkdir()
    rep = D.load_data(tmp_path).report
    assert any("empty class folder" in w and "plum" in w for w in rep.warnings)
    assert list(rep.class_counts) == ["apple", "pear"] and "plum" in rep.summary()
    for p in (tmp_path / "pear").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="only one class"):
        D.load_data(tmp_path)


def test_images_at_the_top_of_a_folders_layout_are_listed_as_unlabelled(tmp_path):
    _folders(tmp_path, {"apple": 4, "pear": 4})
    _img(tmp_path / "stray photo.jpg")
    pets = D.load_data(tmp_path)
    assert [Path(p).name for p in pets.report.unlabelled] == ["stray photo.jpg"]
    assert "unlabelled (in no class folder): stray photo.jpg" in pets.report.summary()
    assert all(p.name != "stray photo.jpg" for p in pets.items)


def test_a_class_with_one_image_trains_with_a_warning(tmp_path):
    _folders(tmp_path, {"apple": 6, "pear": 6, "quince": 1})
    for seed in range(6):  # whichever half the random split drew it into
        pets = D.load_data(tmp_path, seed=seed)
        (i,) = [i for i, label in enumerate(pets.labels) if label == "quince"]
        assert i in pets.train_idx and i not in pets.valid_idx
        assert any("one image" in w and "quince" in w for w in pets.report.warnings)
    split = _folders(_folders(tmp_path / "s", {"apple": 3, "quince": 1}, "train"), {"apple": 1}, "valid")
    assert any("one image" in w and "quince" in w for w in D.load_data(split).report.warnings)


@pytest.mark.parametrize("a,b", [("Cat", "cat"), ("Crème", unicodedata.normalize("NFD", "Crème"))])
def test_labels_differing_only_in_case_or_normalisation_are_refused_naming_both(tmp_path, a, b):
    _folders(tmp_path, {a: 3, b: 3, "dog": 3})
    with pytest.raises(DataError) as err:
        D.load_data(tmp_path)
    assert repr(a) in str(err.value) and repr(b) in str(err.value) and "case or Unicode" in str(err.value)


def test_a_valid_class_that_train_lacks_is_refused(tmp_path):
    root = _folders(_folders(tmp_path, {"apple": 3, "pear": 3}, "train"), {"apple": 1, "plum": 1}, "valid")
    with pytest.raises(DataError, match="never trains on: plum"):
        D.load_data(root)


def test_csv_problems_are_listed_with_line_numbers(tmp_path):
    for k in range(4):
        _img(tmp_path / f"{k}.jpg")
    _csv(tmp_path, "file,label\n0.jpg,a\n1.jpg,b\n1.jpg,b\n2.jpg,a\n2.jpg,b\nmissing.jpg,a\n3.jpg,\n")
    with pytest.raises(DataError) as err:
        D.load_data(tmp_path, labels=tmp_path / LABELS_CSV)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("labels.csv: ")
    assert "1 unknown file(s) (line 7: missing.jpg)" in msg
    assert "1 duplicate row(s) (line 4: 1.jpg (line 3))" in msg
    assert "1 conflicting label(s) (lines 5, 6: 2.jpg is 'a' and 'b')" in msg
    assert "1 empty label(s) (line 8)" in msg


def test_csv_missing_columns_and_bad_split_values_are_refused(tmp_path):
    _img(tmp_path / "0.jpg")
    _csv(tmp_path, "path,class\n0.jpg,a\n")
    with pytest.raises(DataError, match="lacks column.s. file, label .header: path, class"):
        D.load_data(tmp_path, labels=tmp_path / LABELS_CSV)
    _csv(tmp_path, "file,label,split\n0.jpg,a,training\n")
    with pytest.raises(DataError, match="line 2: 'training'"):
        D.load_data(tmp_path, labels=tmp_path / LABELS_CSV)


def test_csv_layout_without_labels_and_labels_with_another_layout_are_refused(tmp_path):
    _folders(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DataError, match="needs --labels"):
        read_layout(tmp_path, "csv")
    _csv(tmp_path, "file,label\na/0.jpg,x\nb/0.jpg,y\n")  # the one labels CSV in the folder is the one meant
    assert read_layout(tmp_path, "csv").labels == ["x", "y"]
    with pytest.raises(DataError, match="--labels is for --layout csv"):
        read_layout(tmp_path, "folders", tmp_path / "x.csv")


def test_groups_file_names_the_second_level_and_refuses_a_class_without_one(tmp_path):
    f = tmp_path / "kinds.csv"
    f.write_text("label,kind\nCrème brûlée,food\nRed fox,animal\nblue whale,animal\nunused,thing\n", "utf-8")
    assert read_groups(f, ["Red fox", "Crème brûlée"]) == ("kind", {"Red fox": "animal", "Crème brûlée": "food"})
    with pytest.raises(DataError, match="no kind for: 'Ølkrus'"):
        read_groups(f, ["Red fox", "Ølkrus"])
    f.write_text("label\nx\n")
    with pytest.raises(DataError, match="two columns"):
        read_groups(f, ["x"])


def test_cli_data_check_says_the_layout_and_refuses_bad_input_in_one_line(cli, tmp_path):
    synth_data(tmp_path / "mine", "folders", n_classes=3, per_class=5, size=16)
    out = cli("data", "check", "--data", tmp_path / "mine")
    assert out.exit_code == 0, out.output
    assert "layout folders: 3 class folders" in out.output and "Crème brûlée" in out.output
    assert "species" not in out.output  # no groups: no species column
    assert "split random: 12 train, 3 valid" in out.output  # what fastbook would use; the probe uses none:
    assert "the probe: it uses no split but all 15 photos, and estimates its error by k-fold" in out.output
    _folders(tmp_path / "mine", {"crème brûlée": 2})
    bad = cli("data", "check", "--data", tmp_path / "mine")
    assert bad.exit_code == 2 and "case or Unicode" in bad.output and "Traceback" not in bad.output


# ---------------------------------------------------------------------------------------------------- found by trying


def test_a_very_long_csv_cell_is_named_as_such_not_as_an_encoding_problem(tmp_path):
    for k in range(4):
        _img(tmp_path / f"{k}.jpg")
    _csv(tmp_path, "file,label\n0.jpg,a\n1.jpg,b\n2.jpg," + "x" * 200_000 + "\n3.jpg,b\n")
    with pytest.raises(DataError) as err:
        D.load_data(tmp_path, labels=tmp_path / LABELS_CSV)
    msg = str(err.value)
    assert msg.startswith("labels.csv line 4: cannot be read as CSV (field larger than field limit")
    assert "UTF-8" not in msg and "\n" not in msg


def test_two_labels_files_in_one_folder_ask_which(tmp_path):
    for k in range(10):
        _img(tmp_path / "img" / f"{k}.jpg")
    for name in ("labels.csv", "labels_v2.csv"):
        (tmp_path / name).write_text("file,label\n" + "".join(f"img/{k}.jpg,{'ab'[k % 2]}\n" for k in range(10)))
    with pytest.raises(DataError, match=r"2 labels files .*\(labels.csv, labels_v2.csv\); pass --labels FILE.csv"):
        D.load_data(tmp_path)
    assert D.load_data(tmp_path, labels=tmp_path / "labels_v2.csv").report.class_counts == {"a": 5, "b": 5}


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "{abs}"])
def test_csv_rows_outside_the_data_folder_are_refused_naming_the_row(tmp_path, name):
    data = tmp_path / "data"
    for k in range(4):
        _img(data / f"{k}.jpg")
    (data / "sub").mkdir()
    outside = _img(tmp_path / "outside.jpg")
    name = name.format(abs=outside)
    _csv(data, f"file,label\n0.jpg,a\n1.jpg,b\n2.jpg,a\n3.jpg,b\n{name},a\n")
    with pytest.raises(DataError) as err:
        D.load_data(data, labels=data / LABELS_CSV)
    assert str(err.value) == f"labels.csv: 1 file(s) outside the data folder (line 6: {name})"


def test_nested_folders_of_one_name_are_refused_not_merged(tmp_path):
    _folders(tmp_path, {"x": 3, "y": 3}, prefix="a")
    _folders(tmp_path, {"x": 3, "z": 3}, prefix="b")
    with pytest.raises(DataError) as err:
        D.load_data(tmp_path)
    msg = str(err.value)
    assert "'x' from a/x and b/x" in msg and "rename" in msg and "\n" not in msg
    _folders(tmp_path / "split", {"x": 3, "y": 3}, prefix="train")  # train/x and valid/x are one class: fine
    _folders(tmp_path / "split", {"x": 2, "y": 2}, prefix="valid")
    assert D.load_data(tmp_path / "split").report.class_counts == {"x": 5, "y": 5}
