"""petclf.synth: synthetic Pets-style data is deterministic (its planted bad files are checked in test_data.py)."""

from __future__ import annotations

from petclf.synth import synth_pets


def test_synthetic_data_is_deterministic(tmp_path):
    synth_pets(tmp_path / "a", n_classes=2, per_class=2, size=16, seed=3)
    synth_pets(tmp_path / "b", n_classes=2, per_class=2, size=16, seed=3)
    for f in (tmp_path / "a").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
