"""petclf.synth: synthetic Pets-style data is deterministic (its planted bad files are checked in test_data.py)."""

from __future__ import annotations

from petclf.synth import synth_pets


def test_synthetic_data_is_deterministic(tmp_path):
    synth_pets(tmp_path / "a", n_classes=2, per_class=2, size=16, seed=3)
    synth_pets(tmp_path / "b", n_classes=2, per_class=2, size=16, seed=3)
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


def test_folders_and_csv_layouts_use_own_class_names(tmp_path):
    import csv

    import pytest

    from petclf.errors import DataError
    from petclf.labels import PETS_BREEDS
    from petclf.synth import LABELS_CSV, synth_data

    synth_data(tmp_path / "f", "folders", n_classes=3, per_class=5, size=16, split_dirs=True)
    names = {p.name for p in (tmp_path / "f" / "train").iterdir()}
    assert names == {"Crème brûlée", "Red fox", "blue whale"} and not names & PETS_BREEDS
    assert sorted(p.name for p in (tmp_path / "f" / "valid" / "Red fox").iterdir()) == ["5.jpg"]
    synth_data(tmp_path / "c", "csv", n_classes=2, per_class=5, size=16)
    with open(tmp_path / "c" / LABELS_CSV, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows].count("valid") == 2 and all((tmp_path / "c" / r["file"]).is_file() for r in rows)
    with pytest.raises(DataError, match="--layout pets"):
        synth_data(tmp_path / "x", "folders", bad=True)
