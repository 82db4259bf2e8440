"""Each layout end to end, as a user runs it: data check -> train -> predict -> report -> the demo answering a
gradio_client call on 127.0.0.1. Tiny sizes (resnet18 from random weights, 64 px, a few images per class)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PRESIZE, SIZE
from helpers import HANG_GUARD_S, Output, free_port, wait_for

from petclf.labels import PETS_BREEDS
from petclf.synth import LABELS_CSV, synth_data

TINY = ["--arch", "resnet18", "--no-pretrained", "--bs", "8", "--size", SIZE, "--presize", PRESIZE, "--workers",
        "0", "--threads", "1", "--seed", "42"]
CLASSES, PER_CLASS = 3, 10


def _check_train_predict_report(cli, data: Path, run: Path, *flags, tiny: list = TINY) -> dict:
    """data check, train, predict and report through the CLI; returns the report's JSON."""
    check = cli("data", "check", "--data", data)
    assert check.exit_code == 0, check.output
    res = cli("train", "--data", data, *tiny, "--out", run, *flags)
    assert res.exit_code == 0, res.output
    pred = cli("predict", run / "examples", "--model", run, "-f", "json")
    assert pred.exit_code == 0, pred.output
    rows = json.loads(pred.stdout)
    manifest = json.loads((run / "model.json").read_text())
    table = cli("predict", run / "examples", "--model", run)
    pets = all(c["name"] in PETS_BREEDS for c in manifest["classes"])
    assert table.exit_code == 0 and ("top breeds" if pets else "top classes") in table.stdout, table.output
    assert rows and all(r["class_id"] in [c["name"] for c in manifest["classes"]] for r in rows)
    rep = cli("report", "--model", run)
    assert rep.exit_code == 0, rep.output
    return {"check": check.output, "train": res.output, "manifest": manifest, "rows": rows,
            "report": json.loads((run / "report" / "report.json").read_text()),
            "html": (run / "report" / "report.html").read_text()}


def _settings(folder: Path, **values) -> Path:
    """A --config file of `values` (settings with no flag of their own)."""
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _ask(url: str, photo: Path):
    """The demo's /classify answer for one photo, through gradio_client."""
    from gradio_client import Client, handle_file

    return Client(url, verbose=False).predict(handle_file(str(photo)), api_name="/classify")


def _serve_in_process(run: Path):
    """build_demo as `petclf serve` builds it (title and examples from the model), on a free local port."""
    from petclf.app import build_demo, example_files, launch_kwargs
    from petclf.predict import load_model

    predictor = load_model(run)
    demo = build_demo(predictor, examples=example_files(predictor.manifest, run))
    demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
    return demo


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["fastbook", "probe"])
@pytest.mark.parametrize("layout,per_class", [("pets", 3), ("folders", 3), ("csv", 5)])
def test_the_smallest_data_of_each_layout_trains_predicts_and_reports(cli, tmp_path, layout, per_class, recipe):
    """2 classes: 3 photos each (a random split of 6 validates 1), or 5 (the csv's split column validates the 5th);
    no --bs: the batch fits the few training photos."""
    data, run = tmp_path / layout, tmp_path / "runs" / layout
    synth_data(data, layout, n_classes=2, per_class=per_class, size=SIZE)
    labels = ["--labels", data / LABELS_CSV] if layout == "csv" else []
    tiny = [f for f in TINY if f not in ("--bs", "8")]
    got = _check_train_predict_report(cli, data, run, *labels, "--recipe", recipe, "--epochs", "1",
                                       "--freeze-epochs", "0", "--config",
                                       _settings(tmp_path, probe_size=SIZE, lr_find_steps=5), tiny=tiny)
    sizes, s = got["manifest"]["data"]["sizes"], got["report"]["summary"]
    assert sizes["train"] + sizes["valid"] == 2 * per_class
    assert s["n_evaluated"] == (2 * per_class if recipe == "probe" else sizes["valid"])
    if recipe == "fastbook":
        assert f"batch size 2 instead of 32: the {sizes['train']} training images give" in got["train"]


@pytest.mark.slow
def test_pets_layout_end_to_end_with_the_probe(cli, tmp_path):
    data, run = tmp_path / "pets", tmp_path / "runs" / "pets"
    synth_data(data, "pets", n_classes=CLASSES, per_class=PER_CLASS, size=SIZE)
    got = _check_train_predict_report(cli, data, run, "--recipe", "probe",
                                       "--config", _settings(tmp_path, probe_size=SIZE))
    assert "layout pets:" in got["check"] and "species" in got["check"]
    assert got["manifest"]["data"]["layout"] == "pets" and got["manifest"]["group_name"] == "species"
    assert all(r["group"] in ("cat", "dog") for r in got["rows"])
    s = got["report"]["summary"]
    assert s["group_name"] == "species" and s["split_used"] == "out-of-fold" and "species accuracy" in got["html"]
    assert "head: Linear trained on crops of the feature maps (30 epochs, from the probe at C = " \
           "10)" in " ".join(got["html"].split())  # 10, not 10.0
    demo = _serve_in_process(run)
    try:
        breeds, species, _ = _ask(demo.local_url, next((run / "examples").iterdir()))
        assert breeds["label"] and species["label"] in ("cat", "dog")
        page = json.dumps(demo.config)
        assert "Which breed is this pet?" in page and "cat_chelsea" in page  # Pets wording, shipped pet photos
    finally:
        demo.close()


@pytest.mark.slow
def test_folders_layout_end_to_end_with_lr_find_and_petclf_serve_title(cli, tmp_path):
    import requests

    data, run = tmp_path / "mine", tmp_path / "runs" / "mine"
    synth_data(data, "folders", n_classes=CLASSES, per_class=PER_CLASS, size=SIZE, split_dirs=True)
    got = _check_train_predict_report(cli, data, run, "--epochs", "1", "--freeze-epochs", "0",
                                       "--config", _settings(tmp_path, lr_find_steps=5))
    assert "layout folders: 3 class folders" in got["check"] and "species" not in got["check"]
    m = got["manifest"]
    assert m["data"]["layout"] == "folders" and m["data"]["split"] == "folders train/ + valid/"
    assert [c["name"] for c in m["classes"]] == ["Crème brûlée", "Red fox", "blue whale"] and "group_name" not in m
    assert not any("species" in r for r in got["rows"])  # no groups: no species column
    s = got["report"]["summary"]
    assert s["layout"] == "folders" and s["group_name"] is None and s["n_evaluated"] == CLASSES * 2
    assert "accuracy</span>" in got["html"] and "species" not in got["html"] and "breed" not in got["html"]
    assert json.loads((run / "metrics.json").read_text())["lr_find"]["suggestion"] > 0  # lr_find ran on it
    shutil.copytree(data / "valid", data / "test")  # a test part beside valid/: what `report --split test` reads
    rep = cli("report", "--model", run, "--split", "test", "--out", tmp_path / "test-report")
    assert rep.exit_code == 0, rep.output
    s = json.loads((tmp_path / "test-report" / "report.json").read_text())["summary"]
    assert s["split_used"] == "folders train/ + test/" and s["n_evaluated"] == CLASSES * 2
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "petclf", "serve", "--model", str(run), "--port", str(port),
                               "--title", "Which dessert or animal?", "--unsure-below", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, log = f"http://127.0.0.1:{port}/", Output(server.stderr)
    try:
        config = wait_for("the demo's /config", lambda: requests.get(url + "config", timeout=30).json(), server,
                          log.text)
        page = json.dumps(config, ensure_ascii=False)
        assert "Which dessert or animal?" in page and "Cat or dog" not in page and "cat_chelsea" not in page
        assert '"orig_name": "01.jpg"' in page  # the examples: the validation photos the run kept
        classes, groups, answer = _ask(url, data / "valid" / "Red fox" / "5.jpg")
        assert answer["class_id"] in {"Crème brûlée", "Red fox", "blue whale"} and not groups
        assert answer["class_sure"] is (answer["prob"] >= 1.0)  # --unsure-below 1: short of certainty, unsure
    finally:
        server.terminate()
        server.wait(HANG_GUARD_S)


@pytest.mark.slow
def test_csv_layout_end_to_end_with_groups_and_resume(cli, tmp_path):
    from conftest import tiny_config
    from stop import StopAfter

    from petclf.train import train

    data, run = tmp_path / "csvdata", tmp_path / "runs" / "csv"
    synth_data(data, "csv", n_classes=CLASSES, per_class=PER_CLASS, size=SIZE)
    kinds = tmp_path / "kinds.csv"
    kinds.write_text("label,kind\nCrème brûlée,food\nRed fox,animal\nblue whale,animal\n", encoding="utf-8")
    cfg = tiny_config(data, run, labels=str(data / LABELS_CSV), groups=str(kinds), epochs=2, threads=1, bs=8)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cbs=[StopAfter(4)])  # 3 batches an epoch: stopped in the second
    res = cli("train", "--resume", run, "--threads", "1")
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["labels"] == str((data / LABELS_CSV).resolve()) and saved["groups"] == str(kinds.resolve())
    m = json.loads((run / "model.json").read_text())
    assert m["data"]["layout"] == "csv" and m["group_name"] == "kind"
    assert {c["name"]: c["group"] for c in m["classes"]}["Crème brûlée"] == "food"
    check = cli("data", "check", "--data", data, "--groups", kinds)
    assert "layout csv:" in check.output and "kind" in check.output
    rep = cli("report", "--model", run)
    assert rep.exit_code == 0, rep.output
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["summary"]["group_name"] == "kind" and report["confusion"]["groups"] == ["animal", "animal", "food"]
    assert "kind accuracy" in (run / "report" / "report.html").read_text()
    demo = _serve_in_process(run)
    try:
        classes, kind, answer = _ask(demo.local_url, data / "images" / "photo-0001.jpg")
        assert answer["class_id"] in {"Crème brûlée", "Red fox", "blue whale"}
        assert {c["label"] for c in kind["confidences"]} == {"food", "animal"}
        page = json.dumps(demo.config, ensure_ascii=False)
        assert "Which class is this?" in page and '"Kind"' in page
    finally:
        demo.close()


@pytest.mark.slow
def test_petclf_demo_and_lr_find_on_a_users_own_layouts(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's `exports/latest`, if it wrote one, would land here
    res = cli("demo", "--layout", "folders", "--epochs", "1", "--out", tmp_path / "demo")  # the layout is under test
    assert res.exit_code == 0, res.output
    (run,) = [p for p in (tmp_path / "demo" / "runs").iterdir() if p.is_dir() and not p.is_symlink()]
    manifest = json.loads((run / "model.json").read_text())
    assert manifest["data"]["layout"] == "folders" and "group_name" not in manifest
    photo = next((tmp_path / "demo" / "data-folders").rglob("*.jpg"))
    pred = cli("predict", photo, "--model", run)
    assert pred.exit_code == 0 and "top classes" in pred.stdout and photo.parent.name in pred.stdout, pred.output

    data = tmp_path / "mine"
    synth_data(data, "csv", n_classes=CLASSES, per_class=PER_CLASS, size=SIZE)
    res = cli("lr-find", "--data", data, "--labels", data / LABELS_CSV, "--arch", "resnet18", "--no-pretrained",
              "--bs", "8", "--size", SIZE, "--presize", PRESIZE, "--workers", "0", "--out", tmp_path / "lr",
              "--config", _settings(tmp_path, lr_find_steps=5))  # the fewest steps: a curve and a plot all the same
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lr" / "lr_find.png").is_file() and f"{CLASSES} classes" in res.output


@pytest.mark.slow
def test_a_test_folder_is_never_trained_on_and_report_split_test_predicts_it(cli, tmp_path):
    """train/ + test/ and no valid/: the probe trains and cross-validates on train/ alone (oof.json lists no
    test photo), and `report --split test` predicts the test photos with the model (no out-of-fold lookup)."""
    data, run = tmp_path / "tt", tmp_path / "runs" / "tt"
    synth_data(data, "folders", n_classes=CLASSES, per_class=PER_CLASS, size=SIZE, split_dirs=True)
    (data / "valid").rename(data / "test")
    n_train, n_test = (sum(1 for p in (data / h).rglob("*.jpg")) for h in ("train", "test"))
    res = cli("train", "--data", data, *TINY, "--out", run, "--recipe", "probe",
              "--config", _settings(tmp_path, probe_size=SIZE))
    assert res.exit_code == 0, res.output
    oof = json.loads((run / "oof.json").read_text())
    assert len(oof["files"]) == n_train and not any("/test/" in f for f in oof["files"])
    assert json.loads((run / "model.json").read_text())["data"]["sizes"]["train"] == n_train
    rep = cli("report", "--model", run, "--split", "test", "--out", tmp_path / "test-report")
    assert rep.exit_code == 0, rep.output
    report = json.loads((tmp_path / "test-report" / "report.json").read_text())
    s = report["summary"]
    assert s["split_used"] == "folders train/ + test/" and s["note"] is None
    assert (s["n_train"], s["n_evaluated"]) == (n_train, n_test)
    assert report["timing"]["inference_seconds"] > 0 and report["timing"]["images_per_second"] is not None
    assert all("/test/" in e["path"] for e in report["top_losses"])
