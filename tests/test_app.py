"""The Gradio demo, live on 127.0.0.1 and called through `gradio_client`, plus its pure parts called directly."""

from __future__ import annotations

import html
import http.client
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import HANG_GUARD_S, free_port
from PIL import Image

from petclf.app import (
    CAM_SIDE,
    answer_labels,
    answer_markdown,
    build_demo,
    example_files,
    headline,
    make_explain,
    model_card,
)
from petclf.labels import CAT_BREEDS, DOG_BREEDS, display_name, pets_groups
from petclf.predict import SIGNALS, Batcher, load_model
from petclf.serve import launch_kwargs
from petclf.verdict import make_verdict


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return load_model(tiny_run.run_dir)


@pytest.fixture(scope="module")
def images(tiny_run) -> list[Path]:
    return [Path(p) for p in tiny_run.learn.dls.valid_ds.items[:6]]


@pytest.fixture(scope="module")
def server(predictor):
    """(demo, url) of the demo served on a free 127.0.0.1 port for this module."""
    demo = build_demo(predictor)
    demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
    yield demo, demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[1], verbose=False)


def classify(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/classify")


# ---------------------------------------------------------------------------------------------------- pure parts


def test_batcher_groups_concurrent_calls_and_keeps_rows_apart(predictor, images):
    from concurrent.futures import ThreadPoolExecutor

    xs = [predictor.preprocess([p]) for p in images * 2]
    want = predictor.probs(np.concatenate(xs))
    batcher = Batcher(predictor, max_batch=4)
    try:
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(batcher, xs))
    finally:
        batcher.close()
    assert np.abs(np.concatenate(got) - want).max() < 1e-5


PETS = list(CAT_BREEDS + DOG_BREEDS)


def pets_verdict(probs: dict[str, float], species: dict[str, float], **kw):
    """A verdict for all 37 breeds, the rest of the probability spread evenly."""
    rest = (1 - sum(probs.values())) / (len(PETS) - len(probs))
    full = {b: probs.get(b, rest) for b in PETS}
    full = dict(sorted(full.items(), key=lambda bp: -bp[1]))
    return make_verdict(full, species, {b: display_name(b) for b in PETS}, pets_groups(PETS), "species", **kw)


def test_model_card_and_verdict(predictor):
    card = html.unescape(model_card(replace(predictor.manifest, metrics={"error_rate": 0.0725, "epochs": 4})))
    assert "resnet18" in card and "7.25%" in card and predictor.manifest.created in card and "epochs" in card
    assert "Abyssinian" in card and "American Bulldog" in card
    assert "| Another breed, not a pet | off (the backbone started from random weights" in card  # says why
    sure = pets_verdict({"Bengal": 0.9}, {"cat": 0.95, "dog": 0.05})
    assert answer_markdown(sure) == "**Cat, 95 %**  \n**Breed:** Bengal, 90 %"


def test_the_model_card_names_its_error_and_says_when_calibration_was_not_possible(predictor):
    from petclf.calibrate import choose_temperature

    probe = replace(predictor.manifest, metrics={"error_rate": 0.0919},
                    recipe={"name": "probe", "estimate": "5-fold cross-validation"})
    card = html.unescape(model_card(probe))
    assert "| Cross-validation error | 9.19% |" in card and "Validation error" not in card
    fastbook = replace(predictor.manifest, metrics={"error_rate": 0.0725}, recipe={"name": "fastbook"})
    assert "| Validation error | 7.25% |" in html.unescape(model_card(fastbook))
    targs = np.arange(40) % 4
    cal = choose_temperature(np.eye(4)[targs] + 0.01, targs)  # every held-out image right: the fit hits T_MIN
    card = html.unescape(model_card(replace(predictor.manifest, temperature=cal["temperature"], calibration=cal)))
    assert "| Temperature | 1 (calibration was not possible:" in card


def test_an_unsure_answer_lists_no_class_at_0_percent():
    """The Arctic fox once got "British Shorthair 49 % or Russian Blue 0 %"."""
    probs = {"British_Shorthair": 0.49, "Russian_Blue": 0.004, "beagle": 0.505}
    v = pets_verdict(probs, {"cat": 0.51, "dog": 0.49})
    assert v.likely == [("British_Shorthair", 0.49)] and "0 %" not in v.breed_text and not v.breed_sure


def test_a_sure_species_and_an_unsure_breed_is_never_not_a_cat_or_a_dog():
    """The Russian Blue a user once met: breed 40 %, cat 96 %, once said 'Not sure this is a cat or a dog'."""
    v = pets_verdict({"Russian_Blue": 0.40, "Egyptian_Mau": 0.28, "British_Shorthair": 0.12, "beagle": 0.02},
                     {"cat": 0.96, "dog": 0.04}, not_a_pet=False, score=0.6)
    said = answer_markdown(v)
    assert "not a cat or a dog" not in said.lower() and "not sure this is a cat" not in said.lower()
    assert said.startswith("**Cat, 96 %**")
    assert "Russian Blue 40 % or Egyptian Mau 28 % or British Shorthair 12 %" in said
    assert v.species == "cat" and not v.breed_sure and not v.not_a_pet
    # a dog breed never shows up among a sure cat's likely breeds, however the rest is spread
    v = pets_verdict({"Russian_Blue": 0.40, "beagle": 0.30}, {"cat": 0.66, "dog": 0.34})
    assert [b for b, _ in v.likely][:1] == ["Russian_Blue"] and "beagle" not in dict(v.likely)
    # only the open-set signals say "not a cat or a dog"; the detector alone says none of the breeds it knows
    v = pets_verdict({"Russian_Blue": 0.40}, {"cat": 0.96, "dog": 0.04}, not_a_pet=True, score=0.2)
    assert answer_markdown(v).startswith("**None of the 37 breeds this model knows.**") and v.species is None
    assert not v.breed_sure and headline(v, PETS_DISPLAY) == "None of the 37 breeds"
    v = pets_verdict({"Russian_Blue": 0.40}, {"cat": 0.96, "dog": 0.04}, open_set=NOT_A_PET)
    assert answer_markdown(v).startswith("**Not a cat or a dog.**") and v.species is None and not v.breed_sure
    assert headline(v, PETS_DISPLAY) == "Not a pet"


NOT_A_PET = {"pet": False, "known": False, "species": "cat", "species_prob": 0.7}
ANOTHER_DOG = {"pet": True, "known": False, "species": "dog", "species_prob": 0.97}
PETS_DISPLAY = {b: display_name(b) for b in PETS}


def test_a_dog_of_another_breed_reads_naturally_and_the_headline_agrees_with_the_panel():
    """A corgi on a 37-breed model: once 'Shiba Inu, 100 %'; now the species, and the closest breed as a hint."""
    v = pets_verdict({"shiba_inu": 0.31, "Bengal": 0.5}, {"cat": 0.55, "dog": 0.45}, open_set=ANOTHER_DOG)
    said = answer_markdown(v)
    assert said == ("**Dog, 97 %**  \n**Breed:** None of the 37 breeds this model knows; closest: Shiba Inu")
    assert headline(v, PETS_DISPLAY) == "A dog of another breed" and v.answer == "other" and not v.breed_sure


def _signals(pet: bool, known: bool, species: str = "dog", species_prob: float = 0.97) -> np.void:
    """One photo's open-set signals, as `Predictor.outputs` gives them (no detector score)."""
    row = np.zeros(1, SIGNALS)[0]
    row["score"], row["pet"], row["known"] = np.nan, pet, known
    row["species"], row["species_prob"], row["pet_mass"], row["coverage"] = species, species_prob, 0.9, 0.5
    return row


def _check_panels_agree(v, breeds, species, predictor) -> None:
    """The headline of each panel is the answer, and its bars are only what that answer could be."""
    names = {predictor.display[c] for c in predictor.classes}
    bars = [c.label for c in breeds.confidences or []]
    if v.answer == "known":
        said = breeds.label.split(" or ")
        assert bars[0] == said[0] and set(said) <= set(bars) and set(bars) <= names
        assert species.label == (v.species or "not sure")
        if v.species:  # a sure species: no breed of the other one among the bars
            assert {predictor.groups[c] for c in predictor.classes if predictor.display[c] in bars} == {v.species}
            assert max(species.confidences, key=lambda c: c.confidence).label == v.species
    elif v.answer == "other":
        assert breeds.label == f"A {v.species} of another breed" and not set(bars) & names
        assert bars[0] == f"another {v.species} breed" and all(b.startswith("another ") for b in bars)
        assert species.label == v.species
        assert max(species.confidences, key=lambda c: c.confidence).label == v.species
    else:  # not a pet, or none of the breeds: no bar pretends to be an answer
        assert breeds.label in ("Not a pet", f"None of the {len(names)} breeds") and breeds.confidences is None
        assert species.label in ("not a pet", "not sure") and species.confidences is None


def test_each_answers_headline_and_panels_agree(predictor, images):
    """Issue 22: "A dog of another breed" above "German Shorthaired 100 %" bars; now no panel contradicts its
    headline, for a known breed (sure, unsure), another breed, not a pet, and none of the breeds."""
    seen = set()
    for path in images[:3]:
        p = predictor.probs(predictor.preprocess([path]))[0]
        verdicts = [predictor.verdict(p, None, 0.0), predictor.verdict(p, None, 1.0),
                    predictor.verdict(p, _signals(True, True)), predictor.verdict(p, _signals(True, False)),
                    predictor.verdict(p, _signals(True, False, "cat", 0.8)),
                    predictor.verdict(p, _signals(False, False)),
                    make_verdict(predictor.to_dict(p), predictor.group_probs(p), predictor.display, predictor.groups,
                                 predictor.group_name, True, 0.1, noun=predictor.noun)]
        for v in verdicts:
            _check_panels_agree(v, *answer_labels(v, p, predictor), predictor)
            seen.add((v.answer, v.breed_sure))
    assert {"known", "other", "not_a_pet", "none"} == {a for a, _ in seen} and {True, False} <= {s for _, s in seen}


def test_explain_gives_the_predictors_verdict_with_or_without_the_map(predictor, images):
    batcher = Batcher(predictor)
    explain = make_explain(predictor, batcher)
    try:
        for path in images[:3]:
            expected = answer_markdown(predictor.answer(path))
            cam, said = explain(str(path), True)  # the verdict comes from Grad-CAM's own forward pass here
            assert said == expected and cam.size == (max(predictor.pre.presize, CAM_SIDE),) * 2
            assert explain(str(path), False) == (None, expected)  # and from the batched forward pass here
    finally:
        batcher.close()


def test_examples_ship_with_the_package():
    names = [Path(p).name for p in example_files()]
    assert "cat_chelsea.jpg" in names and len(names) >= 3


# ---------------------------------------------------------------------------------------------------- live server


@pytest.mark.slow
def test_classify_endpoint_equals_the_predictor(client, predictor, images):
    for path in images[:4]:
        breeds, species, answer = classify(client, path)
        row = next(predictor.predict_paths([path]))
        v = row.verdict
        # the bars are the answer's possible classes: the top 5 of the species the model is sure of
        want = [(b, q) for b, q in row.probs.items() if v.species is None or predictor.groups[b] == v.species][:5]
        got = [(c["label"], c["confidence"]) for c in breeds["confidences"]]
        assert [b for b, _ in got] == [predictor.display[b] for b, _ in want]
        assert max(abs(g - w) for (_, g), (_, w) in zip(got, want, strict=True)) < 1e-6
        assert species["label"] == (v.species or "not sure")
        assert {c["label"]: c["confidence"] for c in species["confidences"]} == pytest.approx(row.group_probs)
        assert breeds["label"] == " or ".join(predictor.display[b] for b, _ in v.likely)
        top = row.top(1)[0][0]
        assert answer["format"] == 2 and answer["class_id"] == top and answer["class"] == predictor.display[top]
        assert answer["group_text"] == v.species_text and answer["class_text"] == v.breed_text
        assert answer["not_a_pet"] is None and answer["not_a_pet_score"] is None  # random weights: no detector
        assert not [k for k in answer if "breed" in k or "species" in k]


@pytest.mark.slow
def test_concurrent_callers_get_their_own_answers(server, predictor, images):
    from gradio_client import Client

    clients = [Client(server[1], verbose=False) for _ in range(4)]
    jobs = [(clients[i % 4], images[i % len(images)]) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: classify(*job), jobs))
    for (_, path), (_, _, answer) in zip(jobs, results, strict=True):
        assert answer["class_id"] == predictor.topk(path, 1)[0][0]


def _bad_uploads(images) -> dict[str, bytes]:
    good = images[0].read_bytes()
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # 144 Mpx: over petclf's limit, tiny on disk
    return {"empty.jpg": b"", "text.jpg": b"I am a text file", "truncated.jpg": good[: len(good) // 3],
            "bomb.png": bomb.getvalue()}


@pytest.mark.slow
def test_bad_uploads_get_one_friendly_line(client, images, tmp_path, capfd, caplog):
    from gradio_client.exceptions import AppError

    expected = {"empty.jpg": "not an image", "text.jpg": "not an image", "truncated.jpg": "truncated",
                "bomb.png": "limit"}
    for name, data in _bad_uploads(images).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AppError) as err:
            classify(client, tmp_path / name)
        msg = str(err.value)
        assert msg.startswith("Could not read this image") and expected[name] in msg, msg
        assert "Traceback" not in msg and "File \"" not in msg
    assert "Traceback" not in capfd.readouterr().err  # the server's log: one line per rejected upload
    assert sum("upload rejected: Could not read this image" in r.getMessage() for r in caplog.records) == 4


@pytest.mark.slow
def test_tiny_and_odd_images_are_classified(client, predictor, tmp_path):
    Image.new("RGB", (1, 1), (200, 120, 40)).save(tmp_path / "dot.png")
    Image.new("RGBA", (4000, 10), (0, 0, 0, 0)).save(tmp_path / "strip.png")
    for name in ("dot.png", "strip.png"):
        breeds, species, _ = classify(client, tmp_path / name)
        assert 1 <= len(breeds["confidences"]) <= min(5, len(predictor.classes))
        assert species["label"] in ("cat", "dog", "not sure")


@pytest.mark.slow
def test_oversized_upload_is_refused(client, tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.write(b"\xff\xd8\xff")
        f.truncate(25 * 2**20)
    with pytest.raises(Exception) as err:  # refused at upload time, before the function runs
        classify(client, big)
    assert "Traceback" not in str(err.value)


def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side `..` normalisation)."""
    host, port = url.split("//")[1].strip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


@pytest.mark.slow
def test_no_files_beyond_its_own_are_served(server, tiny_run):
    demo, url = server
    assert demo.allowed_paths == [] and demo.max_file_size == launch_kwargs()["max_file_size"]
    cwd_dotfile = Path.cwd() / ".git" / "config"
    attempts = ["/gradio_api/file=../../etc/passwd", "/gradio_api/file=..%2F..%2F..%2Fetc%2Fpasswd",
                "/gradio_api/file=/etc/passwd", "/file=../../etc/passwd", "/gradio_api/file=%2Fetc%2Fpasswd",
                f"/gradio_api/file={cwd_dotfile}", f"/gradio_api/file={Path.cwd() / '.venv' / 'pyvenv.cfg'}",
                f"/gradio_api/file={tiny_run.run_dir / 'model.safetensors'}",
                f"/gradio_api/file={tiny_run.run_dir}/model.json",
                "/gradio_api/file=.env", "/static/../../../../etc/passwd", "/assets/..%2F..%2F..%2Fsetup.cfg"]
    for path in attempts:
        status, body = _raw_get(url, path)
        assert status >= 400, (path, status)
        assert b"root:" not in body and b"[core]" not in body and b"petclf-bundle" not in body, path


@pytest.mark.slow
def test_a_full_queue_says_busy_instead_of_hanging(predictor, images):
    """BAD_INPUTS row 10: more simultaneous requests than the queue holds are turned away, not kept waiting."""
    from gradio_client import Client

    demo = build_demo(predictor, queue_size=2)
    demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
    pool = ThreadPoolExecutor(16)  # 16 users, each with its own session, 3 photos in a row
    try:
        per_user = list(pool.map(lambda u: _user_session(Client, demo.local_url, images, u), range(16),
                                 timeout=HANG_GUARD_S))
    except TimeoutError:
        pytest.fail(f"16 users still waiting after {HANG_GUARD_S} s (hang guard): a full queue kept them", False)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        demo.close()
    outcomes = [o for user in per_user for o in user]
    busy = [o for o in outcomes if o != "ok"]
    assert "ok" in outcomes and busy, outcomes
    assert all("queue" in o.lower() or "busy" in o.lower() for o in busy), busy


def _user_session(client_cls, url, images, user: int) -> list[str]:
    """One browser-like user: a client of its own (gradio_client's shared stream is not meant for 16 threads)."""
    client = client_cls(url, verbose=False)
    return [_try_classify(client, images[(user + i) % len(images)]) for i in range(3)]


def _try_classify(client, path) -> str:
    try:
        classify(client, path)
        return "ok"
    except Exception as e:  # noqa: BLE001 - the message is the result
        return f"{type(e).__name__}: {e}"
