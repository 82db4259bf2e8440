"""The demo in a real browser: headless Debian Chromium driven by Playwright uploads a photo and reads the label.

Uses the system Chromium (`make browser` installs it with apt); never `playwright install`. Set PETCLF_SCREENSHOTS=DIR
to keep the screenshot.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import free_port

from petclf.app import build_demo, example_files, launch_kwargs
from petclf.predict import load_model

TIMEOUT_MS = 300_000  # hang guard for any single browser step (idle: a few seconds)


@pytest.mark.slow
@pytest.mark.browser
def test_upload_shows_breed_verdict_and_gradcam(browser, tiny_run, tmp_path):
    predictor = load_model(tiny_run.run_dir)
    photo = next(p for p in example_files() if Path(p).name == "cat_chelsea.jpg")
    likely = [predictor.display[b] for b, _ in predictor.answer(photo).likely]
    want = " or ".join(likely)  # the breed label's headline: the sure breed, or the likely ones
    demo = build_demo(predictor)
    demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
    shots = Path(os.environ.get("PETCLF_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(demo.local_url)
        page.locator("input[type=file]").first.set_input_files(photo)
        label = page.locator("[data-testid='label-output-value']").first
        label.wait_for(state="visible")
        page.wait_for_function("w => document.querySelector(\"[data-testid='label-output-value']\")"
                               "?.textContent.trim() === w", arg=want, timeout=TIMEOUT_MS)
        assert label.inner_text().strip() == want
        page.locator("#verdict").get_by_text(likely[0], exact=False).first.wait_for(state="visible")
        page.locator("#gradcam img").first.wait_for(state="visible")
        cam_src = page.locator("#gradcam img").first.get_attribute("src")
    finally:
        page.screenshot(path=str(shots / "demo.png"), full_page=True)
        demo.close()
    assert cam_src and "/gradio_api/file=" in cam_src
    assert (shots / "demo.png").stat().st_size > 10_000
    print(f"screenshot: {shots / 'demo.png'}")
