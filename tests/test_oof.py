"""petclf.oof: a damaged oof.json is one line naming it, never a bare exception (BAD_INPUTS row 28's spirit)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from petclf.errors import BundleError
from petclf.oof import read_oof, save_oof


@pytest.mark.parametrize("text, why", [
    ("{\"files\": [", "Expecting value"),
    ("[1, 2]", "not a JSON object"),
    ('{"files": ["a.jpg"], "labels": [0], "logits": [[1.0, 2.0, 3.0]], "classes": ["a", "b"]}',
     "1 rows of 3 logits for 2 classes do not match"),
    ('{"files": ["a.jpg"], "labels": [5], "logits": [[1.0, 2.0]], "classes": ["a", "b"]}', "class numbers below 2"),
    ('{"files": ["a.jpg"], "labels": [0], "logits": [["x", {}]], "classes": ["a", "b"]}', "rows of numbers"),
    (b"\xff\xfe", "codec"),
])
def test_a_damaged_oof_json_is_one_line_naming_it(tmp_path, text, why):
    path = tmp_path / "oof.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BundleError) as err:
        read_oof(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"corrupt {path}: ") and why in msg and "\n" not in msg


def test_a_sound_oof_json_reads_back(tmp_path):
    save_oof(tmp_path, [tmp_path / "a.jpg", tmp_path / "b.jpg"], ["a", "b"], np.array([0, 1]),
             np.array([[2.0, 0.0], [0.0, 1.0]]), "5-fold cross-validation")
    oof = read_oof(tmp_path)
    assert oof["labels"] == [0, 1] and len(oof["logits"]) == 2 and read_oof(tmp_path / "none") is None


@pytest.mark.slow
def test_report_on_a_run_with_a_corrupt_oof_json_says_so_in_one_line(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "oof.json").write_text(json.dumps({"files": "not a list"}))
    res = cli("report", "--model", run, "--out", tmp_path / "rep")
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.output.strip().splitlines()[-1] == (
        f"error: corrupt {run / 'oof.json'}: files, labels, logits and classes must be lists; it holds the run's "
        "out-of-fold predictions (train the run again to remake it)")
