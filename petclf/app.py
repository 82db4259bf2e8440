"""The Gradio demo: upload, paste or snap a pet photo and see the breed, cat or dog, and where the model
looked.

    petclf serve --model exports/latest                  # http://127.0.0.1:7860
    python -m petclf.app exports/latest                  # the same, without the CLI

    from gradio_client import Client, handle_file
    breeds, species, answer = Client("http://127.0.0.1:7860/").predict(handle_file("cat.jpg"),
                                                                       api_name="/classify")

`/classify` returns three values; each panel's headline is the answer, and its bars only what it could be:
- `breeds`: {"label": headline, "confidences": [{"label": display name, "confidence": p}, ...] or null}.
  The headline names the answer: "Russian Blue" when sure, "Russian Blue or Egyptian Mau" when not (bars:
  the top 5 breeds, of the species the model is sure of); "A dog of another breed" for a cat or dog of a
  breed the model does not know (bars: "another dog breed", "another cat breed" with the open-set signals'
  species probabilities; the words beside the panels name the closest breed, as closest); "Not a pet"
  when it is not a cat or a dog, and "None of the 37 breeds" from a bundle without open-set signals whose
  detector flags the photo (no bars: no breed is the answer).
- `species`: {"label": "cat" | "dog" | "not sure" | "not a pet", "confidences": [{"label": "cat", ...},
  ...] or null}; null for a model without groups (a user's own classes). For another breed the bars are the
  open-set signals'; under "not a pet" and for none of the breeds there are none.
- `answer`: the answers as data, in the neutral keys of `petclf predict`'s JSON (format 2,
  `petclf.formats.FORMAT`): {"format": 2, "class_id": the top class id (the machine key), "class": its
  display name, "prob", "group": the group (Pets: species) the model is sure of or null, "group_prob",
  "not_a_pet": true | false | null (no detector), "not_a_pet_score", "class_sure", "likely": [{"class_id",
  "class", "prob"}] (the answer's two or three classes when unsure, the one when sure, the closest for
  another breed), "group_text", "class_text" (the answers in words, as the page shows them), "answer":
  "known" | "other" | "not_a_pet" | "none" (`petclf.verdict.ANSWERS`)}. Format 1 (unversioned) said
  breed_id, breed, species, species_prob, breed_sure, species_text, breed_text.

    from petclf.app import build_demo                    # in a notebook: build, then launch it yourself
    demo = build_demo(load_model("exports/latest"))

Loads only the pickle-free bundle, once. What a visitor may send (uploads decoded by petclf, request size
limits, one friendly line for a bad upload) and the launch are `petclf.serve`'s; uploads and Grad-CAM
images leave Gradio's cache after `CACHE_SECONDS`; Gradio's telemetry is off unless
GRADIO_ANALYTICS_ENABLED=True. Concurrent requests to `classify` are grouped into one forward pass
(`petclf.predict.Batcher`), run by onnxruntime when the bundle has a verified model.onnx (faster on CPU);
Grad-CAM (`explain`) always uses the torch network.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from gradio.components.label import LabelConfidence, LabelData
from PIL import Image

from petclf.address import exposure_warning, parse_auth  # noqa: F401 - re-exported (petclf serve's checks)
from petclf.bundle import Manifest, class_groups, display_names, resolve_bundle_dir
from petclf.cam import gradcam_logits, overlay
from petclf.config import DEFAULT_MODEL, SERVE_HOST, SERVE_PORT, TOPK
from petclf.formats import FORMAT
from petclf.labels import error_kind, pets_groups, plural
from petclf.predict import Batcher, Predictor, load_model
from petclf.preprocess import valid_resize
from petclf.serve import (  # noqa: F401 - LIMITS, MAX_*, UploadedImage, launch_kwargs: re-exported
    LIMITS,
    MAX_DATA_URL,
    MAX_REQUEST_BYTES,
    GuardedBlocks,
    UploadedImage,
    decode,
    keep_memory_trimmed,
    launch_kwargs,
    run_server,
    safe_files,
)
from petclf.text import as_markdown
from petclf.verdict import Verdict

CACHE_SECONDS = 900  # uploads and Grad-CAM images leave Gradio's cache this long after they were written
QUEUE_SIZE = 64  # waiting requests beyond this are told the demo is busy instead of hanging
CONCURRENCY = 8  # classify requests decoded at once; their forward passes are batched together
MAX_BATCH = 8  # most images in one batched forward pass
DECODE_THREADS = 2  # threads that decode and preprocess uploads for classify
TINY = 32  # images with a side below this many pixels get a warning
CAM_SIDE = 336  # the Grad-CAM overlay is drawn at least this many pixels wide
CAM_CONCURRENCY = 2  # Grad-CAM needs a backward pass through the head; keep it from starving classify
EXAMPLES_DIR = Path(__file__).parent / "examples"  # shipped example photos (of pets), for a Pets model
RUN_EXAMPLES = "examples"  # in a run folder: validation photos training kept, for a model of other classes
PETS_TITLE, OTHER_TITLE = "Which breed is this pet?", "Which class is this?"  # default headings


def detector_line(entry: dict[str, Any] | None) -> str:
    """The model card's line on the not-a-pet detector."""
    if not entry or entry.get("method") == "off":
        return f"no detector ({entry['why']})" if entry and entry.get("why") else "no detector"
    flagged = f", flags {entry['pets_flagged']:.1%} of them" if "pets_flagged" in entry else ""
    return f"{entry['method']}, threshold {entry['threshold']:.3f} (fitted on {entry.get('fitted_on', '?')}{flagged})"


def open_set_line(entry: dict[str, Any] | None) -> str:
    """The model card's line on the open-set signals (another breed; not a cat or a dog)."""
    if not entry or entry.get("method") == "off":
        return f"off ({entry['why']})" if entry and entry.get("why") else "off"
    return (f"{entry['method']}: {entry.get('covered_classes', '?')} ImageNet classes covered, sure from "
            f"{entry['sure_below']:.2f} (fitted on {entry.get('fitted_on', '?')})")
def temperature_line(manifest: Manifest) -> str:
    """The model card's line on calibration: the temperature, and why it is 1 when none could be fitted."""
    t = f"{manifest.temperature:.3g}"
    why = (manifest.calibration or {}).get("not_possible")
    return f"{t} ({why})" if why else t


def model_card(manifest: Manifest) -> str:
    """Markdown for the model card panel: arch, classes, validation metrics, training date."""
    classes = manifest.classes
    group_name, groups = class_groups(manifest)
    names = display_names(manifest)
    by_group: dict[str, list[str]] = {}  # {group: its classes' names}, or every class under "classes"
    for c in classes:
        by_group.setdefault(groups.get(c["name"], "classes"), []).append(names[c["name"]])
    metrics = manifest.metrics or {}
    err = metrics.get("error_rate", metrics.get("valid_error"))
    per_group = ", ".join(f"{len(v)} {g}" for g, v in by_group.items())
    rows = [("Architecture", f"{manifest.arch} (timm) with a fastai head"),
            ("Classes", f"{len(classes)}" + (f" ({group_name}: {per_group})" if groups else "")),
            (error_kind({"recipe": manifest.recipe}).capitalize(),
             f"{err:.2%}" if isinstance(err, (int, float)) else "not recorded"),
            ("Trained", str(manifest.created or "unknown")),
            ("Input", f"{manifest.size} px (centre crop of a {manifest.presize} px resize)"),
            ("Temperature", temperature_line(manifest)),
            ("Not a pet", detector_line(manifest.not_a_pet)),
            ("Another breed, not a pet", open_set_line(manifest.open_set))]
    rows += [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in metrics.items()
             if k not in ("error_rate", "valid_error") and isinstance(v, (int, float, str))]
    # every cell and name is text (a bundle someone sent can name anything): only petclf's ** and | are syntax
    table = "\n".join(f"| {as_markdown(k)} | {as_markdown(v)} |" for k, v in rows)
    return f"| | |\n|---|---|\n{table}\n\n" + "\n\n".join(
        f"**{as_markdown(g.capitalize())}:** {as_markdown(', '.join(v))}" for g, v in by_group.items())


def answer_markdown(v: Verdict, noun: str = "Breed") -> str:
    """The answers under the labels, in words: the species (or that this is not a pet), then the breed;
    Markdown whose names are text."""
    v = replace(v, species_text=as_markdown(v.species_text), breed_text=as_markdown(v.breed_text))
    if v.answer in ("not_a_pet", "none"):
        seen = "" if v.not_a_pet_score is None else f" (similarity {v.not_a_pet_score:.2f})"
        return (f"**{v.species_text}.** This photo does not look like the photos the model was trained on{seen}, "
                f"so it names no {noun.lower()}.")
    species = f"**{v.species_text}**" if v.species_text else ""
    which = f"**{noun}:** {v.breed_text}" if v.breed_sure or v.answer == "other" else \
        f"**{noun}:** not sure, {v.breed_text}"
    return "  \n".join(t for t in (species, which) if t)


def headline(v: Verdict, display: dict[str, str], noun: str = "breed") -> str:
    """The class label's big name: the sure breed, the likely ones joined by 'or', 'A dog of another
    breed', 'Not a pet', or (a bundle without open-set signals) 'None of the 37 breeds'."""
    if v.answer == "not_a_pet":
        return "Not a pet"
    if v.answer == "none":
        return f"None of the {len(display)} {plural(noun)}"
    if v.answer == "other":
        return f"A {v.species} of another {noun}"
    return " or ".join(display.get(b, b) for b, _ in v.likely)


def answer_data(v: Verdict, p: np.ndarray, predictor: Predictor) -> dict[str, Any]:
    """The `answer` output: both answers as data in neutral keys (`petclf.formats.FORMAT`), the class id
    as the machine key (see the module docstring)."""
    top = predictor.classes[int(np.argmax(p))]
    d = v.to_dict(predictor.display)
    return {"format": FORMAT, "class_id": top, "class": predictor.display[top],
            "prob": round(float(p.max()), 6),
            "group": v.species, "group_prob": d["species_prob"], "not_a_pet": v.not_a_pet,
            "not_a_pet_score": d["not_a_pet_score"], "class_sure": v.breed_sure,
            "likely": [{"class_id": c, "class": predictor.display.get(c, c), "prob": round(q, 6)}
                       for c, q in v.likely],
            "group_text": v.species_text, "class_text": v.breed_text, "answer": v.answer}


def bars(named: list[tuple[str, float]]) -> list[LabelConfidence]:
    """Probability bars, most likely first."""
    return [LabelConfidence(label=k, confidence=q) for k, q in sorted(named, key=lambda kq: -kq[1])]


def answer_groups(v: Verdict, group_probs: dict[str, float]) -> dict[str, float]:
    """The group probabilities the answer rests on: for another breed the open-set signals' species (the breed
    head's own sum is about the 37 breeds), else the summed class probabilities."""
    if v.answer != "other" or v.species not in group_probs:
        return group_probs
    rest = (1 - v.species_prob) / max(len(group_probs) - 1, 1)
    return {g: v.species_prob if g == v.species else rest for g in group_probs}


def class_bars(v: Verdict, p: np.ndarray, predictor: Predictor) -> list[LabelConfidence] | None:
    """The class label's bars, each one a possible answer: a known class's top `TOPK` (of the group the
    model is sure of), the species for another breed (named as the headline names it), none where no class
    is the answer."""
    if v.answer == "known":
        ranked = [(c, q) for c, q in predictor.to_dict(p).items()
                  if v.species is None or predictor.groups.get(c) == v.species]
        return bars([(predictor.display[c], q) for c, q in ranked[:TOPK]])
    if v.answer == "other":  # the closest breed is no answer: the words beside the panels name it, as closest
        gp = answer_groups(v, predictor.group_probs(p))
        return bars([(f"another {g} {predictor.noun}", q) for g, q in gp.items()])
    return None


def answer_labels(v: Verdict, p: np.ndarray, predictor: Predictor) -> tuple[LabelData, LabelData | None]:
    """The class and group labels (Pets: breed, cat or dog): headlines from the answers, and bars only for
    what the headline could be (none under "Not a pet" or "None of the N breeds")."""
    classes = LabelData(label=headline(v, predictor.display, predictor.noun),
                        confidences=class_bars(v, p, predictor))
    if not predictor.groups:
        return classes, None
    if v.answer in ("not_a_pet", "none"):
        return classes, LabelData(label="not a pet" if v.answer == "not_a_pet" else "not sure")
    gp = answer_groups(v, predictor.group_probs(p))
    return classes, LabelData(label=v.species or "not sure", confidences=bars(list(gp.items())))


class AnswerLabel(gr.Label):
    """`gr.Label` that shows a headline of its own (the answer) above the probability bars."""

    is_template = True  # the browser renders it as a plain gr.Label

    def postprocess(self, value: Any) -> Any:
        """`LabelData` as it is (its headline need not be the top bar); anything else as gr.Label does."""
        return value if isinstance(value, LabelData) else super().postprocess(value)


def make_classify(predictor: Predictor, batcher: Batcher, decoder: ThreadPoolExecutor,
                  threshold: float | None = None):
    """The `classify` endpoint: image -> (class label, group label, answer data): see the module
    docstring."""

    def classify(image: str | bytes | None) -> tuple[LabelData | None, LabelData | None, dict | None]:
        if image is None:
            return None, None, None
        x = decoder.submit(lambda: predictor.preprocess([decode(image)])).result()
        p, s = batcher.outputs(x)
        v = predictor.verdict(p[0], None if s is None else s[0], threshold)
        return *answer_labels(v, p[0], predictor), answer_data(v, p[0], predictor)

    return classify


def make_explain(predictor: Predictor, batcher: Batcher, threshold: float | None = None):
    """The UI's second step: (Grad-CAM overlay or None, the answers in words) for the same image; `threshold`:
    the breed answer's `unsure_below` (default: the bundle's)."""
    noun = predictor.noun.capitalize()

    def said(p: np.ndarray, s: np.ndarray | None) -> str:
        return answer_markdown(predictor.verdict(p[0], None if s is None else s[0], threshold), noun)

    def explain(image: str | bytes | None, show_cam: bool) -> tuple[Image.Image | None, str]:
        if image is None:
            return None, ""
        img = decode(image)
        if min(img.size) < TINY:
            gr.Warning(f"This image is only {img.size[0]}x{img.size[1]} pixels; the prediction may be poor.")
        x = predictor.preprocess([img])
        # the detector reads the pooled features, which Grad-CAM's pass does not give
        answer = said(*batcher.outputs(x))
        if not show_cam or not predictor.has_model:
            return None, answer
        model = predictor.model
        heats, _ = gradcam_logits(model, torch.from_numpy(x).to(next(model.parameters()).device))
        seen = valid_resize(img, max(predictor.pre.presize, CAM_SIDE))  # the model's crop, big enough to read
        return overlay(seen, heats[0]), answer

    return explain


def text_markdown(value: str = "", **kw: Any) -> gr.Markdown:
    """A Markdown panel for text petclf wrote around `as_markdown` names: no LaTeX ($$ in a name stays $$),
    and Gradio's HTML sanitiser on as a second guard."""
    return gr.Markdown(value, latex_delimiters=[], sanitize_html=True, **kw)


def is_pets_model(manifest: Manifest) -> bool:
    """True when every class is an Oxford-IIIT Pets breed: the shipped pet photos and Pets wording fit it."""
    return pets_groups(manifest.class_names) is not None


def example_files(manifest: Manifest | None = None, model_dir: str | Path | None = None) -> list[str]:
    """The demo's examples: the shipped pet photos for a Pets model (or no model given), else the
    validation photos its run kept (`RUN_EXAMPLES` in the model folder: its regular files only, no symlink
    followed), else none."""
    folder = EXAMPLES_DIR if manifest is None or is_pets_model(manifest) else \
        Path(model_dir) / RUN_EXAMPLES if model_dir is not None else None
    if folder is None:
        return []
    root = EXAMPLES_DIR if folder == EXAMPLES_DIR else Path(model_dir)
    return [str(p) for p in safe_files(folder, root, (".jpg", ".jpeg", ".png", ".webp"))]


def default_title(manifest: Manifest) -> str:
    """The heading from the model: Pets wording for a Pets model, neutral otherwise."""
    return PETS_TITLE if is_pets_model(manifest) else OTHER_TITLE


def analytics_enabled() -> bool:
    """Gradio's telemetry: off unless GRADIO_ANALYTICS_ENABLED=True (Gradio's own default is on)."""
    return os.environ.get("GRADIO_ANALYTICS_ENABLED", "False") == "True"


def build_demo(predictor: Predictor, threshold: float | None = None, queue_size: int = QUEUE_SIZE,
               cache_seconds: int = CACHE_SECONDS, title: str | None = None,
               examples: list[str] | None = None) -> gr.Blocks:
    """The demo's Blocks: image in; classes (Pets: breeds), their groups (Pets: cat/dog), Grad-CAM and a
    verdict out; a model card panel. `title` and `examples` default to the model's (`default_title`,
    `example_files`).

    Files in Gradio's cache (uploads, whatever their type, and Grad-CAM images) are deleted `cache_seconds`
    after they were written, checked every quarter of that."""
    batcher = Batcher(predictor, max_batch=MAX_BATCH)
    # decoding and preprocessing run on a few long-lived threads rather than on Gradio's many request threads:
    # each thread that allocates gets its own glibc malloc arena, and with a dozen threads passing
    # multi-megabyte images around the arenas fragmented (the server grew ~40 KB per request under
    # bench_predict's load)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="petclf-decode")
    keep_memory_trimmed()  # a near-limit data URL passes through Gradio's threads too: their arenas kept it
    has_cam = predictor.has_model  # Grad-CAM needs the torch network's gradients, whatever runs classify
    if has_cam:
        predictor.model  # noqa: B018 - load it now (ONNX: lazily), not in the first visitor's request
    classify = make_classify(predictor, batcher, decoder, threshold)
    explain = make_explain(predictor, batcher, threshold)
    pets = is_pets_model(predictor.manifest)
    title = title or default_title(predictor.manifest)
    examples = example_files(predictor.manifest) if examples is None else examples
    intro = (f"a cat or a dog ({len(predictor.classes)} Oxford-IIIT Pets breeds)" if pets else
             f"one of {len(predictor.classes)} classes: " + ", ".join(predictor.display[c] for c in predictor.classes))
    with GuardedBlocks(title=f"petclf: {title}", analytics_enabled=analytics_enabled(),
              delete_cache=(max(1, cache_seconds // 4), cache_seconds)) as demo:
        text_markdown(f"# {as_markdown(title)}\nUpload, paste or snap a photo of {as_markdown(intro)}.")
        with gr.Row():
            with gr.Column():
                image = UploadedImage(label="Photo", sources=["upload", "webcam", "clipboard"], type="filepath")
                show_cam = gr.Checkbox(value=has_cam, interactive=has_cam,
                                       label="Show where the model looked (Grad-CAM)")
                if examples:
                    gr.Examples(examples, inputs=image, label="Examples")
            with gr.Column():
                note = text_markdown(elem_id="verdict")
                breeds = AnswerLabel(num_top_classes=TOPK, label="Breed" if pets else "Class", elem_id="breeds")
                species = AnswerLabel(num_top_classes=TOPK, elem_id="species", visible=bool(predictor.groups),
                                      label="Cat or dog" if pets else (predictor.group_name or "group").capitalize())
                answer = gr.JSON(visible=False)  # the answers as data, for API callers
                cam = gr.Image(label="Where the model looked", interactive=False, type="pil", elem_id="gradcam")
        with gr.Accordion("Model card", open=False):
            text_markdown(model_card(predictor.manifest))
        image.change(classify, image, [breeds, species, answer], api_name="classify", concurrency_limit=CONCURRENCY) \
             .success(explain, [image, show_cam], [cam, note], api_visibility="private",
                      concurrency_limit=CAM_CONCURRENCY, concurrency_id="explain")
        show_cam.change(explain, [image, show_cam], [cam, note], api_visibility="private",
                        concurrency_id="explain")
    demo.queue(max_size=queue_size, default_concurrency_limit=CONCURRENCY)
    return demo


def main(model_dir: str | Path = DEFAULT_MODEL, host: str = SERVE_HOST, port: int = SERVE_PORT,
         share: bool = False, backend: str = "auto", auth: tuple[str, str] | None = None,
         title: str | None = None, unsure_below: float | None = None) -> None:
    """Load the bundle once (`auto`: classify with onnxruntime when model.onnx verifies), build the demo
    and serve it (`petclf.serve.run_server`: the address is checked before the model loads)."""

    def build() -> gr.Blocks:
        predictor = load_model(model_dir, backend=backend)
        return build_demo(predictor, threshold=unsure_below, title=title,
                          examples=example_files(predictor.manifest, resolve_bundle_dir(model_dir)))

    run_server(build, host, port, share, auth)


if __name__ == "__main__":
    main(*sys.argv[1:2])
