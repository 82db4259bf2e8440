"""The README's two pictures, from a real run: the demo page with a prediction, and the top of the report.

    make demo                              # a model at exports/latest (or pass --model RUN)
    python docs/make_screenshots.py        # writes docs/demo.png and docs/report.png

Starts `petclf serve` as a user would (on 127.0.0.1, a free port, Gradio's analytics off), uploads a photo in
headless Debian Chromium driven by Playwright (`/usr/bin/chromium`; never `playwright install`), and opens the run's
report.html (made with `petclf report` when the run has none).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
TIMEOUT_MS = 60_000  # any single browser step
VIEW = {"width": 1280, "height": 900}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def petclf(*args: str) -> list[str]:
    """The `petclf` command of this checkout."""
    return [sys.executable, "-m", "petclf", *args]


def env() -> dict[str, str]:
    """This checkout first on the path; Gradio's analytics off."""
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONWARNINGS": "ignore"}


def fail(msg: str, code: int = 2) -> None:
    """One line to stderr and exit: 2 for bad input, 1 when the job failed."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Until `url` answers (or the server died, or time ran out)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"petclf serve exited with code {proc.returncode}", 1)
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    fail(f"{url} did not answer in {seconds:.0f} s", 1)


def first_photo(model: Path) -> Path:
    """A photo of the run's own data (the demo's synthetic breeds): what its model knows."""
    import json

    root = Path(json.loads((model / "model.json").read_text())["data"]["root"])
    return sorted(root.glob("*.jpg"))[0]


def shoot_demo(browser, model: Path, photo: Path, out: Path) -> None:
    """`petclf serve`, a photo uploaded, the labels and Grad-CAM on screen: out/demo.png."""
    port = free_port()
    proc = subprocess.Popen(petclf("serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)),
                            env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/", proc)
        page = browser.new_page(viewport=VIEW)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("input[type=file]").first.set_input_files(str(photo))
        page.locator("[data-testid='label-output-value']").first.wait_for(state="visible")
        page.locator("#gradcam img").first.wait_for(state="visible")
        page.wait_for_timeout(500)  # the overlay fades in
        page.screenshot(path=str(out / "demo.png"), full_page=True)
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def shoot_report(browser, model: Path, out: Path) -> None:
    """The top of the run's report.html (summary, curves, confusion matrix): out/report.png."""
    html = model / "report" / "report.html"
    if not html.is_file():
        subprocess.run(petclf("report", "--model", str(model)), env=env(), cwd=ROOT, check=True)
    page = browser.new_page(viewport={"width": VIEW["width"], "height": 1400})
    page.goto(html.resolve().as_uri())
    page.screenshot(path=str(out / "report.png"))
    page.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, take both screenshots, say where they are."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "exports" / "latest", help="run folder (default: latest)")
    ap.add_argument("--photo", type=Path, help="photo to upload (default: the first of the run's own data)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs", help="folder for demo.png and report.png")
    args = ap.parse_args(argv)
    model = args.model.resolve()
    if not (model / "model.json").is_file():
        fail(f"no model at {args.model}: run `make demo` first, or pass --model RUN")
    if not Path(CHROMIUM).is_file():
        fail(f"{CHROMIUM} not found: `make browser` installs Debian's Chromium")
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            shoot_demo(browser, model, args.photo or first_photo(model), args.out)
            shoot_report(browser, model, args.out)
        finally:
            browser.close()
    print(f"wrote {args.out / 'demo.png'} and {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
