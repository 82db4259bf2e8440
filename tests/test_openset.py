"""The open-set signals (petclf.openset) and the three answers they give: a known breed, a cat or dog of another
breed, not a cat or a dog; on a toy ImageNet head whose classes a feature direction picks, and in the bundle."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from petclf.bundle import manifest_problem
from petclf.errors import BundleError
from petclf.labels import display_name
from petclf.notapet import class_means
from petclf.openset import (
    FILE,
    METHOD,
    SURE_RULE,
    VERSION,
    OpenSet,
    fit_open_set,
    leave_one_out_coverage,
    leave_one_out_named,
    named_cosine,
    save_arrays,
    sure_threshold,
)
from petclf.verdict import make_verdict

D = 8
ROWS = {"beagle-like": 162, "corgi-like": 263, "tabby-like": 281, "coffee-like": 967}  # ImageNet class indices
DIRECTION = {name: i for i, name in enumerate(ROWS)}  # a feature direction per ImageNet class


def toy_head() -> tuple[np.ndarray, np.ndarray]:
    """An ImageNet head that maps feature direction i to one class, strongly."""
    w, b = np.zeros((1000, D), np.float32), np.zeros(1000, np.float32)
    for name, row in ROWS.items():
        w[row, DIRECTION[name]] = 8.0
    return w, b


def photos(name: str, n: int, seed: int, noise: float = 0.2) -> np.ndarray:
    """`n` feature vectors near one direction."""
    x = np.random.default_rng(seed).normal(0, noise, (n, D)) + 0.1
    x[:, DIRECTION[name]] += 1.0
    return x


def fitted() -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """A model of two breeds, beagle (dog) and a tabby (cat), fitted on 12 photos each."""
    x = np.concatenate([photos("beagle-like", 12, 0), photos("tabby-like", 12, 1)])
    y = np.repeat([0, 1], 12)
    oof = np.eye(2)[y] * 0.9 + 0.05
    entry, arrays = fit_open_set(x, y, 2, oof, *toy_head(), "toy")
    return entry, arrays, x, y


def test_the_three_signals_tell_a_known_breed_another_breed_and_no_pet():
    entry, arrays, _, _ = fitted()
    assert entry["method"] == METHOD and entry["version"] == VERSION and entry["covered_classes"] == 2
    det = OpenSet(arrays["weight"].astype(np.float32), arrays["bias"], arrays["covered"].astype(bool),
                  arrays["class_means"], *(entry[k] for k in ("pet_threshold", "cosine_threshold", "known_threshold",
                                                              "sure_below")))
    names = ("beagle-like", "corgi-like", "tabby-like", "coffee-like")
    s = det(np.concatenate([photos(n, 1, 9, noise=0.0) for n in names]))
    assert s.pet.tolist() == [True, True, True, False]
    assert s.known[:3].tolist() == [True, False, True]  # the corgi-like dog: a dog of a breed the model never saw
    assert s.species[:3].tolist() == ["dog", "dog", "cat"] and (s.species_prob[:3] > 0.9).all()


def test_a_sure_breed_needs_the_photo_near_the_class_it_names():
    entry, arrays, x, y = fitted()
    assert entry["sure_rule"] == SURE_RULE and -1 <= entry["named_threshold"] <= 1
    det = OpenSet(arrays["weight"].astype(np.float32), arrays["bias"], arrays["covered"].astype(bool),
                  arrays["class_means"], *(entry[k] for k in ("pet_threshold", "cosine_threshold", "known_threshold",
                                                              "sure_below")), entry["named_threshold"])
    both = np.concatenate([photos("beagle-like", 1, 9, noise=0.0), photos("tabby-like", 1, 9, noise=0.0)])
    assert det(both, np.array([0, 1])).agrees.tolist() == [True, True]
    assert det(both, np.array([1, 0])).agrees.tolist() == [False, False]  # the breed head names the other one
    assert det(both).agrees.all()  # no class named: nothing to be far from
    signals = {"pet": True, "known": True, "species": "dog", "species_prob": 0.9}
    probs = {"beagle": 0.9, "pug": 0.05, "Bengal": 0.05}
    assert verdict_for(signals, probs).breed_sure
    v = verdict_for({**signals, "agrees": False}, probs)
    assert v.answer == "known" and not v.breed_sure and v.breed_text == "Beagle 90 % or Pug 5 %"


def test_leave_one_out_named_cosine_leaves_the_photo_out():
    x, y = photos("beagle-like", 6, 3), np.zeros(6, int)
    loo = leave_one_out_named(x, y, 1, y)
    i = 2
    want = named_cosine(x[i:i + 1], class_means(np.delete(x, i, 0), y[1:], 1), np.array([0]))[0]
    assert loo[i] == pytest.approx(want, abs=1e-6)  # the means are float32
    assert (loo < named_cosine(x, class_means(x, y, 1), y)).all()  # with itself in the mean every photo is nearer


def test_leave_one_out_coverage_leaves_the_photo_out():
    q = np.full((3, 1000), 1e-6)
    q[0, 162], q[1, 162], q[2, 200] = 1.0, 1.0, 1.0  # two photos share a class, one is alone in its
    cov = leave_one_out_coverage(q / q.sum(1, keepdims=True))
    assert cov[0] > 0.9 and cov[1] > 0.9 and cov[2] < 0.1


def test_the_sure_threshold_is_the_lowest_that_keeps_sure_and_wrong_rare():
    y = np.zeros(100, int)
    probs = np.zeros((100, 2))
    probs[:, 0] = np.linspace(0.5, 1.0, 100)  # right, at every confidence
    probs[:, 1] = 1 - probs[:, 0]
    probs[:10] = probs[:10, ::-1]  # 10 confidently wrong at 0.5 ... 0.55 -> their top is class 1 at 0.95 ... 1.0
    t = sure_threshold(probs, y, most_wrong=0.03)
    sure_wrong = ((probs.max(1) >= t) & (probs.argmax(1) != y)).mean()
    assert sure_wrong <= 0.03 and ((probs.max(1) >= t - 0.01) & (probs.argmax(1) != y)).mean() > 0.03
    assert sure_threshold(np.eye(2)[[1, 1]], np.array([0, 0])) == 1.0  # always wrong: never sure


def verdict_for(signals: dict, probs: dict[str, float]):
    groups = {"beagle": "dog", "pug": "dog", "Bengal": "cat"}
    gp = {"dog": probs["beagle"] + probs["pug"], "cat": probs["Bengal"]}
    return make_verdict(probs, gp, {b: display_name(b) for b in groups}, groups, "species", open_set=signals)


def test_a_dog_of_another_breed_names_the_species_and_never_a_sure_breed():
    v = verdict_for({"pet": True, "known": False, "species": "dog", "species_prob": 0.97},
                    {"beagle": 0.31, "pug": 0.09, "Bengal": 0.60})  # the breed head leans to the cat
    assert v.answer == "other" and not v.breed_sure and v.not_a_pet is False and v.species == "dog"
    assert v.species_text == "Dog, 97 %"
    assert v.breed_text == "None of the 3 breeds this model knows; closest: Beagle"


def test_not_a_cat_or_a_dog_and_a_known_breed():
    v = verdict_for({"pet": False, "known": False, "species": "cat", "species_prob": 0.6},
                    {"beagle": 0.9, "pug": 0.05, "Bengal": 0.05})
    assert v.answer == "not_a_pet" and v.not_a_pet and v.species is None and not v.breed_sure
    assert v.species_text == "Not a cat or a dog" and v.breed_text.startswith("No breed")
    v = verdict_for({"pet": True, "known": True, "species": "dog", "species_prob": 0.9},
                    {"beagle": 0.9, "pug": 0.05, "Bengal": 0.05})
    assert v.answer == "known" and v.breed_sure and v.breed_text == "Beagle, 90 %" and v.species_text == "Dog, 95 %"


def test_the_bundle_keeps_the_head_pinned(tmp_path):
    entry, arrays, x, _ = fitted()
    entry |= save_arrays(tmp_path, arrays)
    m = SimpleNamespace(n_classes=2, open_set=entry)  # the two fields of a Manifest the loader reads
    loaded = OpenSet.load(tmp_path, m)
    assert loaded is not None and loaded(x[:1]).known[0] and loaded.named_threshold == entry["named_threshold"]
    before_rule = {k: v for k, v in entry.items() if k != "sure_rule"}
    older = OpenSet.load(tmp_path, SimpleNamespace(n_classes=2, open_set=before_rule))
    assert older.named_threshold is None and older(x[:1], np.array([1])).agrees[0]  # fitted before the rule
    newer = SimpleNamespace(open_set={**entry, "version": VERSION + 1})
    assert OpenSet.load(tmp_path, newer) is None  # newer: says nothing
    assert OpenSet.load(tmp_path, SimpleNamespace(open_set={"method": "off", "why": "x"})) is None
    data = bytearray((tmp_path / FILE).read_bytes())
    data[-2] ^= 0xFF
    (tmp_path / FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch"):
        OpenSet.load(tmp_path, m)


def test_the_manifest_check_refuses_a_broken_open_set_entry(tiny_run):
    m = json.loads((tiny_run.run_dir / "model.json").read_text())
    assert m["open_set"]["method"] == "off" and "random weights" in m["open_set"]["why"]
    good = {"method": METHOD, "version": 1, "pet_threshold": 0.5, "known_threshold": 0.4, "sure_below": 0.8,
            "cosine_threshold": 0.6, "file": FILE, "sha256": "0" * 64}
    assert manifest_problem({**m, "open_set": good}) is None
    assert "pet_threshold" in manifest_problem({**m, "open_set": {**good, "pet_threshold": float("nan")}})
    assert "open_set.file" in manifest_problem({**m, "open_set": {**good, "file": "../x"}})


def test_every_output_format_says_the_answer_with_format_2_keys():
    from petclf.formats import FORMAT
    from petclf.predict import Prediction, row_dict, to_csv, to_table

    probs = {"Bengal": 0.6, "beagle": 0.31, "pug": 0.09}
    v = verdict_for({"pet": True, "known": False, "species": "dog", "species_prob": 0.97}, probs)
    row = Prediction("corgi.jpg", probs, {"cat": 0.6, "dog": 0.4}, verdict=v)
    d = row_dict(row)
    assert d["answer"] == "other" and d["group"] == "dog" and d["group_prob"] == 0.97  # the answer's species
    assert d["class_id"] == "Bengal" and d["verdict"]["likely"] == ["beagle"] and not d["verdict"]["class_sure"]
    assert {"format", "file", "class_id", "class", "prob", "top", "group", "group_prob", "not_a_pet",
            "not_a_pet_score", "verdict", "error"} <= set(d) and d["format"] == FORMAT  # format 2's keys
    head, line = to_csv([row]).splitlines()
    assert head.endswith("verdict_group,verdict_class,answer") and line.endswith(",other")
    assert "Dog, 97 %; None of the 3 breeds this model knows; closest: Beagle" in " ".join(to_table([row]).split())


def test_a_bundle_without_the_signals_says_only_what_it_can(tiny_run, tmp_path):
    """Random weights (the signals are off, saying why) and an older bundle (no `open_set` entry at all): on either
    backend no photo is called another breed or not a pet, since nothing in the bundle can tell."""
    import shutil

    from petclf.predict import load_model

    old = tmp_path / "old"
    shutil.copytree(tiny_run.run_dir, old, ignore=shutil.ignore_patterns("checkpoints", "export.pkl"))
    m = json.loads((old / "model.json").read_text())
    del m["open_set"]
    (old / "model.json").write_text(json.dumps(m))
    photos = [str(p) for p in tiny_run.learn.dls.valid_ds.items[:4]]
    said = {}
    for run_dir in (tiny_run.run_dir, old):
        for backend in ("torch", "onnx"):
            p = load_model(run_dir, backend=backend)
            assert p.open_set is None
            said[run_dir, backend] = [(v.answer, v.not_a_pet, v.species_text, v.breed_text)
                                      for v in (p.answer(f) for f in photos)]
    assert len(set(map(tuple, said.values()))) == 1  # the same words from both bundles and both backends
    for answer, not_a_pet, species, breed in said[old, "onnx"]:
        assert answer == "known" and not_a_pet is None  # no detector either: no claim about pets at all
        assert "this model knows" not in breed and not species.startswith("Not a")
