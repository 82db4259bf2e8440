"""The interpretation report: its numbers agree with each other and with metrics.json; missing artefacts say so.

    .venv/bin/pytest tests/test_report.py -q
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from petclf.calibrate import ece, fit_temperature, reliability_bins, softmax

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("summary", "confusion", "confused", "top-losses", "per-class", "calibration", "data-quality")


# ---------------------------------------------------------------------------------------------------- calibration


def test_ece_is_zero_when_confidence_matches_accuracy():
    """Half the images at 0.5 confidence (half right), half at 1.0 (all right): perfectly calibrated."""
    probs = np.array([[0.5, 0.5 - 1e-9, 1e-9]] * 4 + [[1.0, 0.0, 0.0]] * 4)
    targs = np.array([0, 1, 0, 1, 0, 0, 0, 0])
    assert ece(probs, targs) == pytest.approx(0.0, abs=1e-6)


def test_ece_of_an_overconfident_model():
    """Always 90% sure, right half the time: ECE is the 0.4 gap, and every image sits in the (0.867, 0.933] bin."""
    probs = np.tile([0.9, 0.1], (10, 1))
    targs = np.array([0, 1] * 5)
    bins = reliability_bins(probs, targs, 15)
    assert [b["count"] for b in bins].index(10) == 13
    assert sum(b["count"] for b in bins) == 10
    assert ece(probs, targs) == pytest.approx(0.4)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 10))
    true_t = 2.5
    p = softmax(logits, true_t)
    targs = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)  # one draw per row from softmax(logits / 2.5)
    t = fit_temperature(logits, targs)
    assert t == pytest.approx(true_t, rel=0.1)
    assert ece(softmax(logits, t), targs) < ece(softmax(logits), targs)


def test_fit_temperature_never_makes_the_fit_worse():
    """All predictions right: NLL keeps falling as T -> 0; the fit stops at a sane bound instead of running away."""
    logits = np.eye(5)[np.arange(50) % 5] * 3.0
    t = fit_temperature(logits, np.arange(50) % 5)
    assert 0.05 <= t <= 1.0


# ---------------------------------------------------------------------------------------------------- helpers


def copy_run(tiny_run, dest: Path, synth_dir: Path | None, artefacts: bool = True) -> Path:
    """A copy of the tiny run (never the shared one: the report writes its temperature into the bundle); with
    `artefacts`, also what `petclf train` leaves beside it (made here where the fixture's run lacks them)."""
    from matplotlib.figure import Figure

    from petclf.config import TrainConfig, save_config
    from petclf.data import load_pets

    run_dir, learn = tiny_run
    run = dest / "run"
    run.mkdir(parents=True)
    for name in ("model.json", "model.safetensors"):
        shutil.copy(run_dir / name, run / name)
    if not artefacts:
        return run
    for name in ("metrics.json", "config.yaml", "lr_find.png", "data_report.json"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, run / name)
    if not (run / "metrics.json").is_file():
        valid_loss, err, acc = (float(v) for v in learn.validate())
        history = [{"epoch": 0, "phase": "unfrozen", "train_loss": valid_loss, "valid_loss": valid_loss,
                    "error_rate": err, "accuracy": acc, "seconds": 1.0}]
        (run / "metrics.json").write_text(json.dumps({"error_rate": err, "accuracy": acc, "valid_loss": valid_loss,
                                                      "history": history, "lr": 3e-3, "train_seconds": 12.5}))
    if not (run / "config.yaml").is_file():
        save_config(TrainConfig(data=str(synth_dir), arch="resnet18", size=64, presize=80), run / "config.yaml")
    if not (run / "lr_find.png").is_file():  # the fixture trains with a fixed lr, so lr_find never ran
        fig = Figure(figsize=(4, 3))
        fig.subplots().semilogx([1e-5, 1e-3, 1e-1], [2.0, 1.0, 3.0])
        fig.savefig(run / "lr_find.png")
    if not (run / "data_report.json").is_file():
        load_pets(synth_dir, seed=42).report.save(run)
    return run


def html_images(html: str) -> list[str]:
    """The src of every <img> in the page."""
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


# ---------------------------------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def full_report(tiny_run, synth_dir, tmp_path_factory):
    """(run copy, report dict, html) for a run with every artefact `petclf train` leaves."""
    from petclf.report import write_report

    tmp = tmp_path_factory.mktemp("report")
    run = copy_run(tiny_run, tmp, synth_dir)
    paths = write_report(run, out=tmp / "out", workers=0)
    return run, json.loads(paths["json"].read_text()), paths["html"].read_text(), paths


@pytest.mark.slow
def test_report_numbers_agree_with_each_other_and_with_metrics_json(full_report, tiny_run):
    run, r, _, _ = full_report
    metrics = json.loads((run / "metrics.json").read_text())
    s, cm = r["summary"], np.array(r["confusion"]["counts"])
    n_valid = len(tiny_run[1].dls.valid_ds)
    assert cm.sum() == r["confusion"]["total"] == s["n_evaluated"] == n_valid
    assert s["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert s["accuracy"] == pytest.approx(1 - s["error_rate"])
    assert s["error_rate"] == pytest.approx(metrics["error_rate"], abs=1e-6)
    assert s["valid_loss"] == pytest.approx(metrics["valid_loss"], rel=1e-4)
    assert s["recorded"]["error_rate"] == metrics["error_rate"] and s["agrees_with_recorded"] is True
    assert s["accuracy"] <= s["top5_accuracy"] <= 1 and s["accuracy"] <= s["cat_dog_accuracy"] <= 1
    assert r["training"]["train_seconds"] == metrics["train_seconds"]
    assert r["training"]["history"] == metrics["history"] and len(metrics["history"]) >= 1

    rows = r["per_class"]["classes"]
    assert sum(c["support"] for c in rows) == cm.sum()
    order = r["confusion"]["classes"]
    for c in rows:
        i = order.index(c["class"])
        assert c["support"] == cm[i].sum()
        assert c["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
    assert [c["f1"] for c in rows] == sorted(c["f1"] for c in rows)
    species = r["confusion"]["species"]
    assert species == sorted(species)  # cats first, then dogs

    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = [(p["actual"], p["predicted"], p["count"]) for p in r["most_confused"]]
    assert sorted(x[2] for x in pairs) == sorted(off[off >= r["min_val"]].tolist())
    for a, p, count in pairs:
        assert off[order.index(a), order.index(p)] == count
    assert [x[2] for x in pairs] == sorted((x[2] for x in pairs), reverse=True)

    top = r["top_losses"]
    assert len(top) == min(9, n_valid)
    assert [t["loss"] for t in top] == sorted((t["loss"] for t in top), reverse=True)
    for t in top:
        assert t["loss"] == pytest.approx(-math.log(t["actual_probability"]), rel=1e-3)


@pytest.mark.slow
def test_report_stores_the_temperature_and_keeps_the_bundle_loadable(full_report):
    from petclf.bundle import load_network, read_manifest

    run, r, _, _ = full_report
    cal = r["calibration"]
    assert cal["fitted"] and cal["stored"] and cal["n_bins"] == 15
    assert 0 <= cal["ece_before"] <= 1 and 0 <= cal["ece_after"] <= 1
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert read_manifest(run)["temperature"] == pytest.approx(cal["temperature"])
    load_network(run)  # the weights checksum still matches


@pytest.mark.slow
def test_report_html_is_one_self_contained_page_with_every_section(full_report):
    _, r, html, paths = full_report
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    srcs = html_images(html)
    assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html
    assert "not recorded" not in html
    for name in ("confusion_matrix.png", "reliability.png", "training_curves.png", "lr_find.png"):
        assert f"figures/{name}" in r["figures"]
    for rel in r["figures"]:
        assert (paths["dir"] / rel).read_bytes().startswith(PNG_MAGIC)
    n_examples = sum(len(p["examples"]) for p in r["most_confused"])
    n_label_errors = len(r["data_quality"]["label_errors"])
    assert len(srcs) == len(r["figures"]) == 4 + 2 * len(r["top_losses"]) + n_examples + n_label_errors


@pytest.mark.slow
def test_report_without_run_artefacts_says_not_recorded(tiny_run, synth_dir, tmp_path):
    """A bare bundle (no metrics.json, config.yaml, lr_find.png): those parts say so; the rest is computed."""
    from typer.testing import CliRunner

    from petclf.cli import app

    run = copy_run(tiny_run, tmp_path, synth_dir, artefacts=False)
    res = CliRunner().invoke(app, ["report", "--model", str(run), "--data", str(synth_dir)])
    assert res.exit_code == 0, res.output
    out = run / "report"  # the default: beside the model
    assert f"report: {out / 'report.html'}" in res.output
    r, html = json.loads((out / "report.json").read_text()), (out / "report.html").read_text()
    assert r["training"]["history"] is None and r["summary"]["recorded"]["error_rate"] is None
    assert r["summary"]["agrees_with_recorded"] is None
    assert "figures/training_curves.png" not in r["figures"] and "figures/lr_find.png" not in r["figures"]
    assert html.count("not recorded") >= 3
    assert r["data_quality"]["source"] == "this report's scan of the data"

    for split, says in (("test", "--split test needs"), (str(tmp_path / "missing.txt"), "--split must be")):
        res = CliRunner().invoke(app, ["report", "--model", str(run), "--data", str(synth_dir), "--split", split])
        assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output

    res = CliRunner().invoke(app, ["report", "--model", str(run), "--data", str(synth_dir), "--device", "tpu"])
    assert res.exit_code == 2 and "--device must be" in res.output and len(res.output.strip().splitlines()) == 1

    # Again into the same folder with fewer top losses (and --device auto, the CLI's documented default): no figure
    # of the first report is left behind.
    assert (out / "figures" / "top_losses" / "03_cam.png").is_file()
    res = CliRunner().invoke(app, ["report", "--model", str(run), "--data", str(synth_dir), "--top-losses", "2",
                                   "--device", "auto"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in (out / "figures").rglob("*.png"))
    assert on_disk == r["figures"] and len(r["top_losses"]) == 2


@pytest.mark.slow
def test_report_on_a_file_split_with_bad_files_and_a_planted_label_error(tiny_run, bad_synth, tmp_path):
    """Evaluate a hand-picked list of images: the data layer's skipped files are listed, the temperature is not
    refitted on a non-validation split, and a confidently-wrong image is flagged as a suspected label error."""
    from petclf.bundle import read_manifest
    from petclf.data import synth_pets
    from petclf.report import write_report

    run = copy_run(tiny_run, tmp_path, None, artefacts=False)
    data, planted = bad_synth
    data = shutil.copytree(data, tmp_path / "data")
    # The same breed images, generated again, filed under the wrong breed: the model should disagree loudly.
    synth_pets(tmp_path / "fresh", n_classes=4, per_class=3, size=64, seed=7)
    classes = sorted({p.name.rsplit("_", 1)[0] for p in (tmp_path / "fresh").glob("*.jpg")})
    wrong = {c: classes[(i + 2) % 4] for i, c in enumerate(classes)}  # a cat becomes a dog and vice versa
    mislabelled = []
    for p in sorted((tmp_path / "fresh").glob("*.jpg")):
        breed = p.name.rsplit("_", 1)[0]
        name = f"{wrong[breed]}_8{len(mislabelled)}.jpg"
        shutil.copy(p, data / name)
        mislabelled.append(name)
    split_file = tmp_path / "split.txt"
    split_file.write_text("\n".join(mislabelled + ["Abyssinian_1.jpg", "Bengal_2.jpg"]) + "\n")

    rule = (0.5, 1.0)  # the tiny model is rarely 90% sure of anything; the rule is the same
    paths = write_report(run, data=data, split=str(split_file), out=tmp_path / "out", workers=0, top_k=20,
                         label_error=rule)
    r = json.loads(paths["json"].read_text())
    assert r["summary"]["n_evaluated"] == len(mislabelled) + 2
    assert not r["calibration"]["fitted"] and read_manifest(run)["temperature"] == 1.0
    skipped = {f["file"] for f in r["data_quality"]["skipped"]}
    assert skipped == {name for name, verdict in planted.items() if verdict == "skipped"}
    rule = r["data_quality"]["label_error_rule"]
    assert (rule["min_probability"], rule["min_loss"]) == (0.5, 1.0)
    flagged = r["data_quality"]["label_errors"]
    assert flagged, "no planted mislabelled image was flagged"
    for f in flagged:
        assert f["predicted"] != f["actual"] and f["probability"] >= rule["min_probability"]
        assert f["loss"] >= rule["min_loss"] and f["file"] in mislabelled
    top = {t["file"]: t for t in r["top_losses"]}
    assert {f["file"] for f in flagged} == {n for n, t in top.items() if t["predicted"] != t["actual"]
                                            and t["probability"] >= rule["min_probability"]
                                            and t["loss"] >= rule["min_loss"]}


def test_report_cli_user_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from petclf.cli import app

    res = CliRunner().invoke(app, ["report", "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "no model at" in res.output and "Traceback" not in res.output


def test_update_manifest_keeps_the_weights_and_refuses_to_touch_them(tmp_path):
    from petclf.bundle import load_network, make_manifest, read_manifest, update_manifest, write_bundle
    from petclf.model import FASTAI_HEAD, build_model

    net = build_model("resnet18", 3)
    write_bundle(net, tmp_path, make_manifest("resnet18", FASTAI_HEAD, ["Bengal", "beagle", "pug"], 64, 80,
                                              [0.5] * 3, [0.25] * 3))
    before = read_manifest(tmp_path)
    update_manifest(tmp_path, temperature=1.7)
    after = read_manifest(tmp_path)
    assert after["temperature"] == 1.7 and after["weights"] == before["weights"]
    load_network(tmp_path)
    with pytest.raises(ValueError):
        update_manifest(tmp_path, weights={"sha256": "0" * 64})
