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

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("summary", "confusion", "confused", "top-losses", "per-class", "calibration", "data-quality")


# ---------------------------------------------------------------------------------------------------- helpers


def copy_run(tiny_run, dest: Path, synth_dir: Path | None, artefacts: bool = True) -> Path:
    """A copy of the tiny run (its bundle, so the shared run stays untouched); with `artefacts`, also what
    `petclf train` leaves beside it (made here where the fixture's run lacks them)."""
    from matplotlib.figure import Figure

    from petclf.config import TrainConfig, save_config
    from petclf.data import load_data

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
        load_data(synth_dir, seed=42).report.save(run)
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
    n_valid = len(tiny_run.learn.dls.valid_ds)
    assert cm.sum() == r["confusion"]["total"] == s["n_evaluated"] == n_valid
    assert s["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert s["accuracy"] == pytest.approx(1 - s["error_rate"])
    assert s["error_rate"] == pytest.approx(metrics["error_rate"], abs=1e-6)
    assert s["valid_loss"] == pytest.approx(metrics["valid_loss"], rel=1e-4)
    assert s["recorded"]["error_rate"] == metrics["error_rate"] and s["agrees_with_recorded"] is True
    assert s["accuracy"] <= s["top5_accuracy"] <= 1 and s["accuracy"] <= s["group_accuracy"] <= 1
    a = r["answers"]  # how the evaluated photos were answered: the four shares cover every photo
    assert a["n"] == n_valid and a["unsure_below"] == json.loads((run / "model.json").read_text())["unsure_below"]
    assert a["sure_right"] + a["sure_wrong"] + a["unsure_listed"] + a["unsure_missed"] == pytest.approx(1.0)
    assert a["sure_right"] <= s["accuracy"] + 1e-9 and a["group_right"] == pytest.approx(s["group_accuracy"])
    assert s["group_name"] == "species" and s["noun"] == "breed"
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
    species = r["confusion"]["groups"]
    assert species == sorted(species) and set(species) == {"cat", "dog"}  # cats first, then dogs

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
    if r["probability_temperature"] == 1:  # the loss is the network's own (T = 1), the probabilities not
        for t in top:
            assert t["loss"] == pytest.approx(-math.log(t["actual_probability"]), rel=1e-3)


@pytest.mark.slow
def test_report_probabilities_are_the_calibrated_ones_predict_shows(tiny_run, synth_dir, tmp_path):
    """One set of numbers: the top losses' probabilities are softmax(logits / T) with the bundle's T, as
    predict and the demo show them (they once were the raw T = 1 ones), and the page says so."""
    from petclf.predict import load_model
    from petclf.report import write_report

    run = copy_run(tiny_run, tmp_path, synth_dir)
    manifest = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**manifest, "temperature": 2.5}))
    paths = write_report(run, out=tmp_path / "out", workers=0)
    r = json.loads(paths["json"].read_text())
    predictor = load_model(run, backend="torch")
    assert r["probability_temperature"] == predictor.temperature == 2.5
    for t in r["top_losses"][:3]:
        probs = dict(predictor.topk(t["path"], len(predictor.classes)))
        assert probs[t["predicted"]] == pytest.approx(t["probability"], abs=2e-3)
        assert probs[t["actual"]] == pytest.approx(t["actual_probability"], abs=2e-3)
    assert "calibrated with the bundle's temperature (T = 2.5)" in " ".join(paths["html"].read_text().split())


def test_top_k_accuracy_only_below_the_number_of_classes_and_each_error_says_what_it_is():
    """"top-2 accuracy" on a 2-class model is always 100 %: not shown. The error's name says which photos."""
    from dataclasses import replace
    from types import SimpleNamespace

    from petclf.labels import error_name, plural
    from petclf.report_numbers import summary

    for c, k in ((2, None), (3, 2), (10, 5)):
        targs = np.arange(20) % c
        probs = np.full((20, c), 0.1 / (c - 1))
        probs[np.arange(20), targs] = 0.9
        pets = SimpleNamespace(root=".", report=SimpleNamespace(layout="pets", n_images=20), train_idx=[])
        cm = np.zeros((c, c), int)
        np.add.at(cm, (targs, probs.argmax(1)), 1)
        s = summary(replace(_evaluation(probs, targs), pets=pets), cm)
        assert s["top5_k"] == k and (s["top5_accuracy"] is None) == (k is None)
        assert s["error_name"] == "validation error"
    asked = (("valid", "out-of-fold"), ("test", "folders train/ + test/"), ("all", "all"),
             ("valid", "random"), ("names.txt", "names.txt"))
    assert [error_name(*a) for a in asked] == ["cross-validation error", "test error", "error on new photos",
                                               "validation error", "error on the named photos"]
    assert (plural("class"), plural("breed")) == ("classes", "breeds")


@pytest.mark.slow
def test_report_shows_the_bundles_temperature_and_never_writes_into_the_model(full_report, tiny_run):
    """The bundle is written once, by training: `predict` answers the same before and after a report."""
    from petclf.bundle import read_manifest

    run, r, _, _ = full_report
    for name in ("model.json", "model.safetensors"):
        assert (run / name).read_bytes() == (tiny_run.run_dir / name).read_bytes()
    cal, manifest = r["calibration"], read_manifest(run)
    assert cal["temperature"] == manifest.temperature and cal["n_bins"] == 15
    assert cal["recorded"] == manifest.calibration  # how training chose it, cross-validated on validation
    assert 0 <= cal["ece_before"] <= 1 and 0 <= cal["ece_after"] <= 1


@pytest.mark.slow
def test_report_html_is_one_self_contained_page_with_every_section(full_report):
    _, r, html, paths = full_report
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html
    srcs = html_images(html)
    assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs)
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html
    assert "not recorded" not in html and "How these photos were answered" in html
    for name in ("confusion_matrix.png", "reliability.png", "training_curves.png", "lr_find.png"):
        assert f"figures/{name}" in r["figures"]
    for rel in r["figures"]:
        assert (paths["dir"] / rel).read_bytes().startswith(PNG_MAGIC)
    n_examples = sum(len(p["examples"]) for p in r["most_confused"])
    n_label_errors = len(r["data_quality"]["label_errors"])
    assert len(srcs) == len(r["figures"]) == 4 + 2 * len(r["top_losses"]) + n_examples + n_label_errors


@pytest.mark.slow
def test_report_without_run_artefacts_says_not_recorded(cli, tiny_run, synth_dir, tmp_path):
    """A bare bundle (no metrics.json, config.yaml, lr_find.png): those parts say so; the rest is computed."""
    run = copy_run(tiny_run, tmp_path, synth_dir, artefacts=False)
    res = cli("report", "--model", run, "--data", synth_dir)
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
        res = cli("report", "--model", run, "--data", synth_dir, "--split", split)
        assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) == 1, res.output

    res = cli("report", "--model", run, "--data", synth_dir, "--device", "tpu")
    assert res.exit_code == 2 and "device must be one of" in res.output and "Traceback" not in res.output

    # Again into the same folder with fewer top losses (and --device auto, the CLI's documented default): no figure
    # of the first report is left behind.
    assert (out / "figures" / "top_losses" / "03_cam.png").is_file()
    res = cli("report", "--model", run, "--data", synth_dir, "--top-losses", "2", "--device", "auto")
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in (out / "figures").rglob("*.png"))
    assert on_disk == r["figures"] and len(r["top_losses"]) == 2


@pytest.mark.slow
def test_report_on_a_file_split_with_bad_files_and_planted_label_errors(tiny_run, bad_synth, tmp_path):
    """Evaluate a hand-picked list of images (out-of-sample: another synthetic draw, 3 of them filed under the wrong
    breed): the data layer's skipped files are listed, the bundle's temperature is used as it is, and what the
    label-error finder lists are planted mislabels, not the model's plain mistakes."""
    from petclf.bundle import read_manifest
    from petclf.labels import breed_of
    from petclf.report import write_report
    from petclf.synth import synth_pets

    run = copy_run(tiny_run, tmp_path, None, artefacts=False)
    data, planted = bad_synth
    data = shutil.copytree(data, tmp_path / "data")
    synth_pets(tmp_path / "fresh", n_classes=4, per_class=3, size=64, seed=7)
    classes = sorted({p.name.rsplit("_", 1)[0] for p in (tmp_path / "fresh").glob("*.jpg")})
    wrong = {c: classes[(i + 2) % 4] for i, c in enumerate(classes)}  # a cat becomes a dog and vice versa
    mislabelled = []
    for p in sorted((tmp_path / "fresh").glob("*.jpg"))[::4]:
        name = f"{wrong[p.name.rsplit('_', 1)[0]]}_8{len(mislabelled)}.jpg"
        shutil.copy(p, data / name)
        mislabelled.append(name)
    good = sorted(p.name for p in data.glob("*.jpg")
                  if p.name not in mislabelled and "_90" not in p.name and breed_of(p.name))
    split_file = tmp_path / "split.txt"
    split_file.write_text("\n".join(mislabelled + good) + "\n")

    paths = write_report(run, data=data, split=str(split_file), out=tmp_path / "out", workers=0, top_k=20)
    r = json.loads(paths["json"].read_text())
    assert r["summary"]["n_evaluated"] == len(mislabelled) + len(good)
    assert r["calibration"]["temperature"] == read_manifest(run).temperature
    skipped = {f["file"] for f in r["data_quality"]["skipped"]}
    assert skipped == {name for name, verdict in planted.items() if verdict == "skipped"}
    flagged = {f["file"] for f in r["data_quality"]["label_errors"]}
    mistakes = {t["file"] for t in r["top_losses"] if t["predicted"] != t["actual"]}
    assert flagged & set(mislabelled), "no planted mislabelled image was found"
    assert len(flagged - set(mislabelled)) < len(mistakes - set(mislabelled)) or not mistakes - set(mislabelled)


def _evaluation(probs: np.ndarray, targs: np.ndarray):
    """An Evaluation over given probabilities (no model run): for the pure numbers."""
    from petclf.bundle import Manifest
    from petclf.evaluation import Evaluation, Run

    n, c = probs.shape
    classes = [f"breed{i}" for i in range(c)]
    manifest = Manifest("x", {"kind": "linear"}, [{"name": k, "species": "cat"} for k in classes], 8, 8, [0.5] * 3,
                        [0.5] * 3)
    logits = np.log(probs)
    losses = -logits[np.arange(n), targs]
    return Evaluation(Path("."), manifest, Run(), None, None, "valid", "random",
                      [Path(f"img{i}.jpg") for i in range(n)], logits, targs, losses, 1.0)


def test_confident_learning_lists_wrong_labels_not_the_models_mistakes():
    """40 images of 4 breeds: two carry the wrong label (the model is sure of another breed, as sure as it is of
    that breed's own images); two are the model's honest mistakes (unsure, 40-45 % on another breed)."""
    from petclf.report_numbers import label_issues

    rng = np.random.default_rng(0)
    targs = np.repeat(np.arange(4), 10)
    probs = np.full((40, 4), 0.02)
    probs[np.arange(40), targs] = rng.uniform(0.85, 0.95, 40)
    for i, other in ((3, 2), (25, 0)):  # wrong labels: the photo is plainly of `other`
        probs[i] = 0.02
        probs[i, other] = 0.93
    for i, other in ((12, 3), (33, 1)):  # model mistakes on correctly labelled photos
        probs[i] = 0.1
        probs[i, other], probs[i, targs[i]] = 0.45, 0.4
    probs /= probs.sum(1, keepdims=True)
    found = {e["index"] for e in label_issues(_evaluation(probs, targs), probs)}
    assert found == {3, 25}


def test_rates_come_with_wilson_intervals_and_absent_classes_are_na():
    from petclf.calibrate import wilson
    from petclf.report_numbers import per_class

    lo, hi = wilson(12, 74)  # the issue's real run: 12 errors in 74 images
    assert 0.09 < lo < 0.10 and 0.26 < hi < 0.27 and wilson(0, 0) is None
    targs = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1])  # breed2 has no image; breed0 has only 3 (small)
    probs = np.eye(3)[[0, 0, 1, 1, 1, 1, 1, 1, 0]] * 0.9 + 0.1 / 3
    rows = {r["class"]: r for r in per_class(_evaluation(probs, targs))["classes"]}
    assert rows["breed2"]["recall"] is None and rows["breed2"]["precision"] is None and rows["breed2"]["support"] == 0
    assert rows["breed0"]["small"] and not rows["breed1"]["small"]
    assert rows["breed0"]["recall"] == pytest.approx(2 / 3) and rows["breed0"]["recall_ci"] == wilson(2, 3)
    assert rows["breed1"]["precision"] == pytest.approx(5 / 6)


def test_a_seed_0_run_is_judged_on_its_own_validation_photos(synth_dir, tmp_path):
    """The run's config is read typed: `seed: 0` is 0, not "unset, so 42" (the report once judged a --seed 0
    run on the seed-42 split, 14 of its 16 images from the run's own training half)."""
    from conftest import tiny_config

    from petclf.data import load_data
    from petclf.evaluation import evaluate
    from petclf.train import train

    run = train(tiny_config(synth_dir, tmp_path / "run", seed=0, epochs=1), latest=False).run_dir
    own, other = load_data(synth_dir, seed=0), load_data(synth_dir, seed=42)
    assert own.valid_idx != other.valid_idx  # else the test could not tell the two apart
    ev = evaluate(run, workers=0)
    assert sorted(map(str, ev.items)) == sorted(str(own.items[i]) for i in own.valid_idx)
    assert not {str(p) for p in ev.items} & {str(own.items[i]) for i in own.train_idx}


@pytest.mark.slow
def test_report_split_all_judges_every_photo_of_a_new_labelled_folder(cli, tiny_run, tmp_path):
    """A new folder of the model's classes: every photo is evaluated (it once said "leaves 0 training and 185
    validation images"); on the run's own data `--split all` would judge training photos, so it is refused."""
    from petclf.synth import synth_pets

    new = tmp_path / "new"
    synth_pets(new, n_classes=4, per_class=5, size=64, seed=9)
    res = cli("report", "--model", tiny_run.run_dir, "--data", new, "--split", "all", "-o", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "rep" / "report.json").read_text())["summary"]
    assert (s["n_train"], s["n_evaluated"], s["split_used"]) == (0, 20, "all")
    assert s["error_name"] == "error on new photos"
    own = cli("report", "--model", tiny_run.run_dir, "--split", "all", "--out", tmp_path / "rep2")
    assert own.exit_code == 2 and "--split all judges every photo of a new labelled folder" in own.output
    assert len(own.output.strip().splitlines()) == 1


def test_report_cli_user_errors_are_one_line(cli, tmp_path):
    res = cli("report", "--model", tmp_path / "nope")
    assert res.exit_code == 2 and "no model at" in res.output and "Traceback" not in res.output


def test_an_unwritable_report_folder_fails_before_the_work(cli, tiny_run, tmp_path):
    """The check comes first: a report that cannot be written says so at once, not after evaluating the model."""
    (tmp_path / "file").write_text("not a folder")
    res = cli("report", "--model", tiny_run.run_dir, "--out", tmp_path / "file" / "report")
    assert res.exit_code == 2 and "cannot write to" in res.output and "predicting" not in res.output


def test_a_probe_run_is_judged_by_its_out_of_fold_predictions(tiny_run, synth_dir, tmp_path):
    """A probe run trained on every photo: `--split valid` reads oof.json instead of judging the model on its own
    training photos, and the page says so."""
    from petclf.data import load_data
    from petclf.oof import OOF_NAME, OOF_NOTE
    from petclf.report import write_report

    run = copy_run(tiny_run, tmp_path, synth_dir)
    pets = load_data(synth_dir, seed=42)
    classes = [c["name"] for c in json.loads((run / "model.json").read_text())["classes"]]
    labels = np.array([classes.index(label) for label in pets.labels])
    logits = np.eye(len(classes))[labels] * 5.0
    logits[:3] = np.roll(logits[:3], 1, axis=1)  # three photos the out-of-fold models got wrong
    (run / OOF_NAME).write_text(json.dumps({"files": [str(p) for p in pets.items], "labels": labels.tolist(),
                                            "logits": logits.tolist(), "classes": classes}))
    paths = write_report(run, workers=0)
    s = json.loads(paths["json"].read_text())["summary"]
    assert s["split_used"] == "out-of-fold" and s["note"] == OOF_NOTE
    assert s["n_evaluated"] == len(pets.items) and s["error_rate"] == pytest.approx(3 / len(pets.items))
    assert OOF_NOTE in paths["html"].read_text()
    timing = json.loads(paths["json"].read_text())["timing"]  # nothing was evaluated: no speed to claim
    assert timing["read_out_of_fold"] and timing["inference_seconds"] is timing["images_per_second"] is None
    page = " ".join(paths["html"].read_text().split())
    assert f"Read the out-of-fold predictions of {len(pets.items)} images" in page and "images/s" not in page
    assert s["error_name"] == "cross-validation error"


@pytest.mark.slow
def test_a_bundle_without_open_set_signals_says_they_are_off(full_report):
    _, r, html, _ = full_report
    o = r["open_set"]  # the tiny run's backbone has random weights: neither signal was fitted
    assert o["on"] is False and "open-set signals off" in o["why"] and "random weights" in o["why"]
    assert "Off for this bundle: open-set signals off" in " ".join(html.split())


def _pin_signals(run: Path, items: list[Path], labels: list[str]) -> None:
    """Give a copy of the tiny run open-set signals and a not-a-pet detector, fitted on its own photos' features
    (its backbone has random weights, so a random stand-in for the ImageNet head: the answers' rules, not their
    sense, are what is checked)."""
    from petclf.bundle import read_manifest
    from petclf.notapet import fit_detector, save_means
    from petclf.openset import fit_open_set, save_arrays
    from petclf.predict import load_model

    predictor = load_model(run, backend="torch")
    probs, feats = predictor.probs(predictor.preprocess(items)), predictor.net.outputs(predictor.preprocess(items))[1]
    classes = read_manifest(run).class_names
    y = np.array([classes.index(label) for label in labels])
    rng = np.random.default_rng(0)
    entry, arrays = fit_open_set(feats, y, len(classes), probs, rng.normal(0, 0.05, (1000, feats.shape[1])),
                                 np.zeros(1000), "a random stand-in head")
    det, means = fit_detector(feats, y, len(classes), "the tiny run's photos")
    raw = json.loads((run / "model.json").read_text())
    raw["open_set"] = {**entry, **save_arrays(run, arrays)}
    raw["not_a_pet"] = {**det, **save_means(run, means)}
    (run / "model.json").write_text(json.dumps(raw))


@pytest.mark.slow
def test_the_report_counts_each_open_set_answer_as_predict_gives_it(tiny_run, synth_dir, tmp_path):
    from petclf.data import load_data
    from petclf.predict import load_model
    from petclf.report import write_report
    from petclf.report_numbers import ANSWER_KINDS, answer_kind

    run = copy_run(tiny_run, tmp_path, synth_dir)
    pets = load_data(synth_dir, seed=42)
    _pin_signals(run, pets.items, pets.labels)
    paths = write_report(run, workers=0)
    r = json.loads(paths["json"].read_text())
    o = r["open_set"]
    assert o["on"] is True and o["signals"] == "open-set" and o["n"] == r["summary"]["n_evaluated"]
    assert sum(o["counts"].values()) == o["n"] and set(o["counts"]) == set(ANSWER_KINDS)
    predictor = load_model(run, backend="torch")
    judged = [pets.items[i] for i in pets.valid_idx]
    said = [answer_kind(predictor.answer(p)) for p in judged]
    assert {k: said.count(k) for k in ANSWER_KINDS} == o["counts"]  # the same answers as `petclf predict`
    wrong = {p.name for p, k in zip(judged, said, strict=True) if k in ("other", "not_a_pet", "none")}
    assert o["n_wrong"] == len(wrong) and {w["file"] for w in o["wrong"]} <= wrong
    page = " ".join(paths["html"].read_text().split())
    assert 'id="open-set-counts"' in page and f"a known breed, sure</td><td class=\"n\">{o['counts']['known_sure']}" \
        in page
