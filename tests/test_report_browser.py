"""The report page in a real browser: headless Chromium (Debian's, through Playwright) loads every image, logs no
error, and the 37-class confusion matrix is shown large enough to read.

    .venv/bin/pytest tests/test_report_browser.py -q        # `make browser` installs /usr/bin/chromium if missing
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def all_breeds_run(out: Path, data: Path) -> Path:
    """A 37-breed bundle with random weights, and the artefacts `petclf train` leaves beside it."""
    from matplotlib.figure import Figure

    from petclf.bundle import make_manifest, write_bundle
    from petclf.config import TrainConfig, save_config
    from petclf.data import load_data
    from petclf.model import FASTAI_HEAD, build_model

    pets = load_data(data, seed=42)
    write_bundle(build_model("resnet18", len(pets.vocab)), out,
                 make_manifest("resnet18", FASTAI_HEAD, pets.vocab, 64, 80, [0.485, 0.456, 0.406],
                               [0.229, 0.224, 0.225]))
    history = [{"epoch": i, "phase": "frozen" if i == 0 else "unfrozen", "train_loss": 3.6 - 0.5 * i,
                "valid_loss": 3.7 - 0.4 * i, "error_rate": 0.95 - 0.1 * i, "accuracy": 0.05 + 0.1 * i,
                "seconds": 2.0} for i in range(4)]
    (out / "metrics.json").write_text(json.dumps({"error_rate": 0.65, "accuracy": 0.35, "valid_loss": 2.5,
                                                  "history": history, "lr": 2e-3, "train_seconds": 8.0}))
    save_config(TrainConfig(data=str(data), arch="resnet18", size=64, presize=80), out / "config.yaml")
    fig = Figure(figsize=(4, 3))
    fig.subplots().semilogx([1e-6, 1e-4, 1e-2, 1], [3.6, 3.0, 2.0, 9.0])
    fig.savefig(out / "lr_find.png")
    pets.report.save(out)
    return out


def open_page(browser, html: Path, screenshot: Path) -> dict:
    """Load `html` in headless Chromium; return console errors, image sizes and the confusion matrix's width."""
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    try:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(html.resolve().as_uri(), wait_until="load")
        widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        cm_width = page.evaluate("document.querySelector('#confusion img').getBoundingClientRect().width")
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    return {"errors": errors, "widths": widths, "cm_width": cm_width}


def test_report_page_loads_every_image_without_console_errors(browser, tmp_path):
    from petclf.report import write_report
    from petclf.synth import synth_pets

    data = tmp_path / "data"
    synth_pets(data, n_classes=37, per_class=3, size=64, seed=5, bad=True)
    run = all_breeds_run(tmp_path / "run", data)
    paths = write_report(run, out=tmp_path / "out", workers=0)
    shot = tmp_path / "report.png"
    page = open_page(browser, paths["html"], shot)
    print(f"screenshot: {shot}")
    assert page["errors"] == []
    assert page["widths"] and all(w > 0 for w in page["widths"]), page["widths"]
    report = json.loads(paths["json"].read_text())
    assert len(page["widths"]) == len(report["figures"])
    assert len(report["confusion"]["classes"]) == 37
    assert page["cm_width"] >= 1000  # 37 rows of labels need the page's full width to stay legible
    assert shot.stat().st_size > 100_000
