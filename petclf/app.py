"""The Gradio demo: upload, paste or snap a pet photo and see the breed, cat or dog, and where the model looked.

    petclf serve --model exports/latest                  # http://127.0.0.1:7860
    python -m petclf.app exports/latest                  # the same, without the CLI

    from gradio_client import Client, handle_file
    breeds, species, answer = Client("http://127.0.0.1:7860/").predict(handle_file("cat.jpg"), api_name="/classify")

`/classify` returns three values:
- `breeds`: {"label": headline, "confidences": [{"label": display name, "confidence": p}, ...]} (top 5). The headline
  is the answer's name: "Russian Blue" when sure, "Russian Blue or Egyptian Mau" when not, "A dog of another breed"
  for a cat or dog of a breed the model does not know, "Not a pet" when it is not a cat or a dog, "None of the 37
  breeds" from a bundle without open-set signals (the bars still show the breeds' probabilities).
- `species`: {"label": "cat" | "dog" | "not sure" | "not a pet", "confidences": [{"label": "cat", ...}, ...]}; for a
  model without groups (a user's own classes) it is null. For another breed the bars are the open-set signals'.
- `answer`: the answers as data: {"breed_id": top class id (the machine key), "breed": its display name, "prob",
  "species": the group the model is sure of or null, "species_prob", "not_a_pet": true | false | null (no detector),
  "not_a_pet_score", "breed_sure", "likely": [{"breed_id", "breed", "prob"}] (the answer's two or three breeds when
  unsure, the one when sure, the closest for another breed), "species_text", "breed_text" (the answers in words, as
  the page shows them), "answer": "known" | "other" | "not_a_pet" | "none" (`petclf.verdict.ANSWERS`)}.

    from petclf.app import build_demo                    # in a notebook: build, then launch it yourself
    demo = build_demo(load_model("exports/latest"))

Loads only the pickle-free bundle, once. Uploads are decoded by `petclf.image.load_rgb` (size limits, bomb refusal,
EXIF), never by Gradio's own PIL call; bad uploads and malformed API payloads get one friendly line, never a
traceback. Request bodies over `MAX_REQUEST_BYTES` are refused (413) before they are read; uploads and Grad-CAM
images leave Gradio's cache after `CACHE_SECONDS`; Gradio's telemetry is off unless GRADIO_ANALYTICS_ENABLED=True.
Concurrent requests to `classify` are grouped into one forward pass (`Batcher`), run by onnxruntime when the
bundle has a verified model.onnx (faster on CPU); Grad-CAM (`explain`) always uses the torch network.
"""

from __future__ import annotations

import base64
import gc
import logging
import os
import queue
import shutil
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from gradio.components.label import LabelConfidence, LabelData
from gradio.exceptions import InvalidPathError
from PIL import Image
from pydantic import ValidationError

from petclf.address import ServeError, check_address, exposure_warning, parse_auth  # noqa: F401 - re-exported
from petclf.bundle import Manifest, class_groups, display_names, resolve_bundle_dir
from petclf.cam import gradcam_logits, overlay
from petclf.config import DEFAULT_MODEL, SERVE_HOST, SERVE_PORT, TOPK
from petclf.errors import ImageError, PetclfError
from petclf.image import MAX_BYTES, load_rgb
from petclf.labels import error_kind, pets_groups, plural
from petclf.predict import Predictor, load_model
from petclf.preprocess import valid_resize
from petclf.serve import Limits, keep_memory_trimmed, middleware, private_cache, safe_files, stop_like_ctrl_c
from petclf.text import as_markdown
from petclf.verdict import Verdict

MAX_FILE_SIZE = MAX_BYTES  # uploads above this are refused by the server before they reach petclf
MAX_DATA_URL = -(-MAX_BYTES // 3) * 4  # longest base64 text that decodes to at most MAX_BYTES (checked before decoding)
MAX_REQUEST_BYTES = MAX_DATA_URL + 2**20  # any request body above this is refused (413) before it is read: one
# image as a base64 data URL plus room for the JSON around it; Gradio's max_file_size covers only /upload's files
LIMITS = Limits(max_request_bytes=MAX_REQUEST_BYTES)  # upload budget, cache cap, login throttle (petclf.serve)
CACHE_SECONDS = 900  # uploads and Grad-CAM images are deleted from Gradio's cache this long after they were written
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

log = logging.getLogger("petclf.app")


class Batcher:
    """Groups concurrent `probs` calls from server threads into one forward pass (dynamic batching).

    Callers decode and preprocess in their own threads, then wait here; one worker thread takes whatever has
    queued up (at most `max_batch`), runs the network once, and hands each caller its row. Gradio's own
    `batch=True` waits for a batch to fill (`max_batch_size`, `batch_wait`) and batches the whole request,
    decoding included; this batches only the forward pass, which is where batching pays (bench_predict.py).
    """

    def __init__(self, predictor: Predictor, max_batch: int = 8, timeout: float = 60.0):
        self.predictor, self.max_batch, self.timeout = predictor, max_batch, timeout
        self._q: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="petclf-batcher", daemon=True)
        self._worker.start()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (1 x n_classes) for one preprocessed image (1 x 3 x H x W)."""
        return self.outputs(x)[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities 1 x n_classes, not-a-pet score (1,) or None) for one preprocessed image."""
        fut: Future = Future()
        self._q.put((x, fut))
        return fut.result(self.timeout)

    def _take(self) -> list[tuple[np.ndarray, Future] | None]:
        items = [self._q.get()]
        while len(items) < self.max_batch:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                break
        return items

    def _run(self) -> None:
        while True:
            items = self._take()
            live = [it for it in items if it is not None]
            if live:
                self._forward(live)
            if len(live) < len(items):  # close() was called
                return

    def _forward(self, items: list[tuple[np.ndarray, Future]]) -> None:
        try:
            p, s = self.predictor.outputs(np.concatenate([x for x, _ in items]))
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting caller
            for _, f in items:
                f.set_exception(e)
            return
        for i, (_, f) in enumerate(items):
            f.set_result((p[i:i + 1], None if s is None else s[i:i + 1]))

    def close(self) -> None:
        """Stop the worker thread once the queue drains."""
        self._q.put(None)
        self._worker.join(5)


class UploadedImage(gr.Image):
    """`gr.Image` that passes the uploaded file's path (or a pasted data URL's bytes) on undecoded.

    Gradio's own preprocessing opens every upload with PIL before our checks run; petclf decodes it itself.
    """

    is_template = True  # the browser renders it as a plain gr.Image

    def preprocess(self, payload: Any) -> str | bytes | None:
        """The upload's server-side path, or the bytes of a base64 data URL no longer than `MAX_DATA_URL`."""
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            b64 = payload.url.partition(",")[2]
            if len(b64) > MAX_DATA_URL:  # refuse by length: decoding it first is what held the memory
                raise rejected(f"Could not read this image: over the {MAX_BYTES // 2**20} MB limit. "
                               "Try a smaller JPEG or PNG photo.")
            try:
                return base64.b64decode(b64, validate=True)
            except ValueError:
                raise rejected("That upload is not an image.") from None
        if payload.path is None:
            raise rejected("Send the image as an upload (its path from /gradio_api/upload) or a base64 data URL.")
        if "\0" in payload.path:
            raise rejected("Malformed request: a file path holds a NUL byte.")
        path = Path(payload.path)
        if not (path.resolve().is_relative_to(Path(self.GRADIO_CACHE).resolve()) and path.is_file()):
            # without `meta`, Gradio hands any path through unchecked; never open server files for a visitor, nor
            # tell them what is where (a folder in the cache is not an upload)
            raise rejected("That file was not uploaded to this demo: upload it first (/gradio_api/upload).")
        return payload.path


class Demo(gr.Blocks):
    """`gr.Blocks` whose malformed API requests get one line, and whose sessions do not keep data URLs.

    Gradio's own checks of a request's inputs raise ValueErrors (pydantic's, a path not uploaded, too few inputs)
    that reached the client as `{"error": null}` and the log as a traceback: here they are one line each. And
    Gradio keeps every session's last input in its session state (up to 10,000 sessions, with no time limit): for a
    base64 data URL that is the whole image, tens of MB per session, so it is dropped once the request is read."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False) -> Any:
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except ValidationError:
            raise rejected("Malformed request: send one image as an upload path or a base64 data URL "
                           '({"path": ..., "meta": {"_type": "gradio.FileData"}}).') from None
        except InvalidPathError:
            raise rejected("That file was not uploaded to this demo: upload it first (/gradio_api/upload).") from None
        except ValueError as e:
            if "null byte" in str(e):  # from Gradio's own path check, before ours
                raise rejected("Malformed request: a file path holds a NUL byte.") from None
            if len(inputs) >= len(block_fn.inputs):
                raise
            raise rejected(f"Malformed request: {block_fn.name} takes {len(block_fn.inputs)} input(s), "
                           f"got {len(inputs)}.") from None
        finally:
            if state is not None:
                forget_data_urls(state, block_fn.inputs)


def forget_data_urls(state: Any, blocks: list) -> None:
    """Drop base64 data URLs from the values a Gradio session keeps for `blocks`."""
    for block in blocks:
        props = state.config_values.get(block._id, {}).get("props", {})
        value = props.get("value")
        if isinstance(value, dict) and str(value.get("url") or "").startswith("data:"):
            props["value"] = None


def rejected(msg: str) -> gr.Error:
    """The error for an upload petclf cannot use: the visitor sees `msg`; the server log gets one line, not
    Gradio's traceback (a bad upload is an everyday event, not a server fault)."""
    log.warning("upload rejected: %s", msg)
    return gr.Error(msg, print_exception=False)


def friendly(e: Exception) -> str:
    """One line a visitor can act on."""
    if isinstance(e, ImageError):
        reason = str(e).split(": ", 1)[-1]
        return f"Could not read this image: {reason}. Try a JPEG or PNG photo."
    return "Something went wrong with this image. Try another photo."


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


def verdict(v: Verdict, noun: str = "Breed") -> str:
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
    """The breed label's big name: the sure breed, the likely ones joined by 'or', 'A dog of another breed', 'Not a
    pet', or (a bundle without open-set signals) 'None of the 37 breeds'."""
    if v.answer == "not_a_pet":
        return "Not a pet"
    if v.answer == "none":
        return f"None of the {len(display)} {plural(noun)}"
    if v.answer == "other":
        return f"A {v.species} of another {noun}"
    return " or ".join(display.get(b, b) for b, _ in v.likely)


def answer_data(v: Verdict, p: np.ndarray, predictor: Predictor) -> dict[str, Any]:
    """The `answer` output: both answers as data, the class id as the machine key (see the module docstring)."""
    top = int(np.argmax(p))
    d = v.to_dict(predictor.display)
    return {"breed_id": predictor.classes[top], "breed": predictor.display[predictor.classes[top]],
            "prob": round(float(p[top]), 6), **{k: d[k] for k in ("species", "species_prob", "not_a_pet",
                                                                  "not_a_pet_score", "breed_sure", "likely",
                                                                  "species_text", "breed_text", "answer")}}


def labels(v: Verdict, p: np.ndarray, predictor: Predictor) -> tuple[LabelData, LabelData | None]:
    """The breed and species labels: headlines from the answers, bars from the probabilities."""
    top = list(predictor.to_dict(p).items())[:TOPK]
    breeds = LabelData(label=headline(v, predictor.display, predictor.noun), confidences=[
        LabelConfidence(label=predictor.display[b], confidence=q) for b, q in top])
    if not predictor.groups:
        return breeds, None
    gp = predictor.group_probs(p)
    if v.answer == "other" and v.species in gp:  # the bars agree with the headline: the open-set signals' species
        gp = {g: v.species_prob if g == v.species else (1 - v.species_prob) / (len(gp) - 1) for g in gp}
    name = {"not_a_pet": "not a pet", "none": "not sure"}.get(v.answer) or v.species or "not sure"
    return breeds, LabelData(label=name, confidences=[LabelConfidence(label=g, confidence=q) for g, q in
                                                      sorted(gp.items(), key=lambda gq: -gq[1])])


class AnswerLabel(gr.Label):
    """`gr.Label` that shows a headline of its own (the answer) above the probability bars."""

    is_template = True  # the browser renders it as a plain gr.Label

    def postprocess(self, value: Any) -> Any:
        """`LabelData` as it is (its headline need not be the top bar); anything else as gr.Label does."""
        return value if isinstance(value, LabelData) else super().postprocess(value)


def decode(image: str | bytes) -> Image.Image:
    """Decode one upload through `load_rgb`, turning any failure into a friendly `gr.Error`."""
    try:
        return load_rgb(image)
    except PetclfError as e:
        raise rejected(friendly(e)) from None
    except Exception:  # noqa: BLE001 - log it for us, show the visitor one line
        log.exception("unexpected error decoding an upload")
        raise rejected(friendly(RuntimeError())) from None


def make_classify(predictor: Predictor, batcher: Batcher, decoder: ThreadPoolExecutor,
                  threshold: float | None = None):
    """The `classify` endpoint: image -> (breed label, species label, answer data): see the module docstring."""

    def classify(image: str | bytes | None) -> tuple[LabelData | None, LabelData | None, dict | None]:
        if image is None:
            return None, None, None
        x = decoder.submit(lambda: predictor.preprocess([decode(image)])).result()
        p, s = batcher.outputs(x)
        v = predictor.verdict(p[0], None if s is None else s[0], threshold)
        return *labels(v, p[0], predictor), answer_data(v, p[0], predictor)

    return classify


def make_explain(predictor: Predictor, batcher: Batcher, threshold: float | None = None):
    """The UI's second step: (Grad-CAM overlay or None, the answers in words) for the same image; `threshold`:
    the breed answer's `unsure_below` (default: the bundle's)."""
    noun = predictor.noun.capitalize()

    def said(p: np.ndarray, s: np.ndarray | None) -> str:
        return verdict(predictor.verdict(p[0], None if s is None else s[0], threshold), noun)

    def explain(image: str | bytes | None, show_cam: bool) -> tuple[Image.Image | None, str]:
        if image is None:
            return None, ""
        img = decode(image)
        if min(img.size) < TINY:
            gr.Warning(f"This image is only {img.size[0]}x{img.size[1]} pixels; the prediction may be poor.")
        x = predictor.preprocess([img])
        answer = said(*batcher.outputs(x))  # the detector reads the pooled features, which Grad-CAM does not give
        if not show_cam or not predictor.has_model:
            return None, answer
        model = predictor.model
        heats, _ = gradcam_logits(model, torch.from_numpy(x).to(next(model.parameters()).device))
        seen = valid_resize(img, max(predictor.pre.presize, CAM_SIDE))  # the crop the model saw, big enough to read
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
    """The demo's examples: the shipped pet photos for a Pets model (or no model given), else the validation photos
    its run kept (`RUN_EXAMPLES` in the model folder: its regular files only, no symlink followed), else none."""
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
    """The demo's Blocks: image in; classes (Pets: breeds), their groups (Pets: cat/dog), Grad-CAM and a verdict
    out; a model card panel. `title` and `examples` default to the model's (`default_title`, `example_files`).

    Files in Gradio's cache (uploads, whatever their type, and Grad-CAM images) are deleted `cache_seconds`
    after they were written, checked every quarter of that."""
    batcher = Batcher(predictor, max_batch=MAX_BATCH)
    # decoding and preprocessing run on a few long-lived threads rather than on Gradio's many request threads:
    # each thread that allocates gets its own glibc malloc arena, and with a dozen threads passing multi-megabyte
    # images around the arenas fragmented (the server grew ~40 KB per request under bench_predict's load)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="petclf-decode")
    keep_memory_trimmed()  # a near-limit data URL passes through Gradio's threads too: their arenas kept it
    has_cam = predictor.has_model  # Grad-CAM needs the torch network's gradients, whatever runs classify
    if has_cam:
        predictor.model  # noqa: B018 - load it now (ONNX backend: lazily), not during the first visitor's request
    classify = make_classify(predictor, batcher, decoder, threshold)
    explain = make_explain(predictor, batcher, threshold)
    pets = is_pets_model(predictor.manifest)
    title = title or default_title(predictor.manifest)
    examples = example_files(predictor.manifest) if examples is None else examples
    intro = (f"a cat or a dog ({len(predictor.classes)} Oxford-IIIT Pets breeds)" if pets else
             f"one of {len(predictor.classes)} classes: " + ", ".join(predictor.display[c] for c in predictor.classes))
    with Demo(title=f"petclf: {title}", analytics_enabled=analytics_enabled(),
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


def launch_kwargs(host: str = SERVE_HOST, port: int = SERVE_PORT, share: bool = False,
                  auth: tuple[str, str] | None = None, limits: Limits = LIMITS) -> dict[str, Any]:
    """Safe `launch` settings: request and file size limits, `limits`' guards (petclf.serve), nothing served
    beyond the demo's own files."""
    return {"server_name": host, "server_port": port, "share": share, "auth": auth, "max_file_size": MAX_FILE_SIZE,
            "allowed_paths": [], "show_error": False, "ssr_mode": False,
            "app_kwargs": {"middleware": middleware(limits)}}


def main(model_dir: str | Path = DEFAULT_MODEL, host: str = SERVE_HOST, port: int = SERVE_PORT, share: bool = False,
         backend: str = "auto", auth: tuple[str, str] | None = None, title: str | None = None,
         unsure_below: float | None = None) -> None:
    """Load the bundle once (`auto`: classify with onnxruntime when model.onnx verifies), build the demo, serve."""
    check_address(host, port)
    if warning := exposure_warning(host, share, auth):
        print(warning, file=sys.stderr)
    predictor = load_model(model_dir, backend=backend)
    cache = private_cache()
    stop_like_ctrl_c()
    try:
        demo = build_demo(predictor, threshold=unsure_below, title=title,
                          examples=example_files(predictor.manifest, resolve_bundle_dir(model_dir)))
        # torch, fastai, Gradio and the model leave ~630,000 long-lived objects that every full collection would
        # walk (350-380 ms holding the GIL, measured on this demo); frozen, they keep those pauses out of requests
        gc.freeze()
        demo.launch(**launch_kwargs(host, port, share, auth))
    except OSError as e:
        if "port" not in str(e).lower():
            raise
        raise ServeError(f"port {port} is in use on {host}: pass another with --port") from None
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # uploads, half-written ones too, and Grad-CAM images


if __name__ == "__main__":
    main(*sys.argv[1:2])
