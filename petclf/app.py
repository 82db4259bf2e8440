"""The Gradio demo: upload, paste or snap a pet photo and see the breed, cat or dog, and where the model looked.

    petclf serve --model exports/latest                  # http://127.0.0.1:7860
    python -m petclf.app exports/latest                  # the same, without the CLI

    from gradio_client import Client, handle_file
    breeds, species = Client("http://127.0.0.1:7860/").predict(handle_file("cat.jpg"), api_name="/classify")

    from petclf.app import build_demo                    # in a notebook: build, then launch it yourself
    demo = build_demo(load_model("exports/latest"))

Loads only the pickle-free bundle, once. Uploads are decoded by `petclf.image.load_rgb` (size limits, bomb refusal,
EXIF), never by Gradio's own PIL call; bad uploads get one friendly line, never a traceback. Concurrent requests
to `classify` are grouped into one forward pass (`Batcher`), run by onnxruntime when the bundle has a
verified model.onnx (faster on CPU); Grad-CAM (`explain`) always uses the torch network.
"""

from __future__ import annotations

import base64
import gc
import logging
import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from petclf.cam import gradcam_logits, overlay
from petclf.config import DEFAULT_MODEL, SERVE_HOST, SERVE_PORT, TOPK
from petclf.errors import ImageError, PetclfError
from petclf.image import MAX_BYTES, load_rgb
from petclf.labels import pretty_breed as pretty
from petclf.predict import Predictor, load_model
from petclf.preprocess import valid_resize

UNSURE_BELOW = 0.5  # below this top-breed probability the demo says it is not sure this is a cat or a dog
MAX_FILE_SIZE = MAX_BYTES  # uploads above this are refused by the server before they reach petclf
QUEUE_SIZE = 64  # waiting requests beyond this are told the demo is busy instead of hanging
CONCURRENCY = 8  # classify requests decoded at once; their forward passes are batched together
MAX_BATCH = 8  # most images in one batched forward pass
DECODE_THREADS = 2  # threads that decode and preprocess uploads for classify
TINY = 32  # images with a side below this many pixels get a warning
CAM_SIDE = 336  # the Grad-CAM overlay is drawn at least this many pixels wide
CAM_CONCURRENCY = 2  # Grad-CAM needs a backward pass through the head; keep it from starving classify
EXAMPLES_DIR = Path(__file__).parent / "examples"  # shipped example photos, the only files the demo serves

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
            p = self.predictor.probs(np.concatenate([x for x, _ in items]))
        except Exception as e:  # noqa: BLE001 - hand the failure to every waiting caller
            for _, f in items:
                f.set_exception(e)
            return
        for i, (_, f) in enumerate(items):
            f.set_result(p[i:i + 1])

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
        """The upload's server-side path, or the bytes of a base64 data URL."""
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            try:
                return base64.b64decode(payload.url.split(",", 1)[1], validate=True)
            except (ValueError, IndexError):
                raise rejected("That upload is not an image.") from None
        return payload.path


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


def model_card(manifest: dict[str, Any]) -> str:
    """Markdown for the model card panel: arch, classes, validation metrics, training date."""
    classes = manifest["classes"]
    cats = [pretty(c["name"]) for c in classes if c.get("species") == "cat"]
    dogs = [pretty(c["name"]) for c in classes if c.get("species") == "dog"]
    metrics = manifest.get("metrics") or {}
    err = metrics.get("error_rate", metrics.get("valid_error"))
    inp = manifest["input"]
    rows = [("Architecture", f"`{manifest['arch']}` (timm) with a fastai head"),
            ("Classes", f"{len(classes)}: {len(cats)} cat and {len(dogs)} dog breeds"),
            ("Validation error", f"{err:.2%}" if isinstance(err, (int, float)) else "not recorded"),
            ("Trained", str(manifest.get("created", "unknown"))),
            ("Input", f"{inp['size']} px (centre crop of a {inp['presize']} px resize)"),
            ("Temperature", f"{float(manifest.get('temperature') or 1.0):.3g}")]
    rows += [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in metrics.items()
             if k not in ("error_rate", "valid_error") and isinstance(v, (int, float, str))]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"| | |\n|---|---|\n{table}\n\n**Cats:** {', '.join(cats) or '-'}\n\n"
            f"**Dogs:** {', '.join(dogs) or '-'}")


def verdict(probs: dict[str, float], species: dict[str, str], threshold: float = UNSURE_BELOW) -> str:
    """The sentence under the label: the best guess, or that the model is not sure this is a cat or a dog."""
    breed, p = next(iter(probs.items()))
    if p < threshold:
        return (f"**Not sure this is a cat or a dog.** Best guess: {pretty(breed)} at {p:.0%}. "
                "Try a clear photo of one pet.")
    return f"**{pretty(breed)}** ({species[breed]}), {p:.0%} sure."


def decode(image: str | bytes) -> Image.Image:
    """Decode one upload through `load_rgb`, turning any failure into a friendly `gr.Error`."""
    try:
        return load_rgb(image)
    except PetclfError as e:
        raise rejected(friendly(e)) from None
    except Exception:  # noqa: BLE001 - log it for us, show the visitor one line
        log.exception("unexpected error decoding an upload")
        raise rejected(friendly(RuntimeError())) from None


def make_classify(predictor: Predictor, batcher: Batcher, decoder: ThreadPoolExecutor):
    """The `classify` endpoint: image -> ({breed: prob} top 5, {cat: p, dog: p})."""

    def classify(image: str | bytes | None) -> tuple[dict[str, float] | None, dict[str, float] | None]:
        if image is None:
            return None, None
        x = decoder.submit(lambda: predictor.preprocess([decode(image)])).result()
        p = batcher(x)[0]
        top = dict(list(predictor.to_dict(p).items())[:TOPK])
        return {pretty(b): v for b, v in top.items()}, predictor.species_probs(p)

    return classify


def make_explain(predictor: Predictor, batcher: Batcher, threshold: float = UNSURE_BELOW):
    """The UI's second step: (Grad-CAM overlay or None, verdict sentence) for the same image."""

    def explain(image: str | bytes | None, show_cam: bool) -> tuple[Image.Image | None, str]:
        if image is None:
            return None, ""
        img = decode(image)
        if min(img.size) < TINY:
            gr.Warning(f"This image is only {img.size[0]}x{img.size[1]} pixels; the prediction may be poor.")
        x = predictor.preprocess([img])
        if not show_cam or not predictor.has_model:
            return None, verdict(predictor.to_dict(batcher(x)[0]), predictor.species, threshold)
        model = predictor.model
        x = torch.from_numpy(x).to(next(model.parameters()).device)
        heats, logits = gradcam_logits(model, x)  # the top class's map; its forward pass gives the verdict
        probs = predictor.to_dict(predictor.softmax(logits.numpy())[0])
        seen = valid_resize(img, max(predictor.pre.presize, CAM_SIDE))  # the crop the model saw, big enough to read
        return overlay(seen, heats[0]), verdict(probs, predictor.species, threshold)

    return explain


def example_files() -> list[str]:
    """The shipped example photos."""
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def build_demo(predictor: Predictor, threshold: float = UNSURE_BELOW, queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    """The demo's Blocks: image in; breeds, cat/dog, Grad-CAM and a verdict out; a model card panel."""
    batcher = Batcher(predictor, max_batch=MAX_BATCH)
    # decoding and preprocessing run on a few long-lived threads rather than on Gradio's many request threads:
    # each thread that allocates gets its own glibc malloc arena, and with a dozen threads passing multi-megabyte
    # images around the arenas fragmented (the server grew ~40 KB per request under bench_predict's load)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="petclf-decode")
    has_cam = predictor.has_model  # Grad-CAM needs the torch network's gradients, whatever runs classify
    if has_cam:
        predictor.model  # noqa: B018 - load it now (ONNX backend: lazily), not during the first visitor's request
    classify, explain = make_classify(predictor, batcher, decoder), make_explain(predictor, batcher, threshold)
    with gr.Blocks(title="petclf: which pet breed?") as demo:
        gr.Markdown("# Which breed is this pet?\nUpload, paste or snap a photo of a cat or a dog "
                    f"({len(predictor.classes)} Oxford-IIIT Pets breeds).")
        with gr.Row():
            with gr.Column():
                image = UploadedImage(label="Photo", sources=["upload", "webcam", "clipboard"], type="filepath")
                show_cam = gr.Checkbox(value=has_cam, interactive=has_cam,
                                       label="Show where the model looked (Grad-CAM)")
                gr.Examples(example_files(), inputs=image, label="Examples")
            with gr.Column():
                breeds = gr.Label(num_top_classes=TOPK, label="Breed")
                species = gr.Label(num_top_classes=2, label="Cat or dog")
                note = gr.Markdown(elem_id="verdict")
                cam = gr.Image(label="Where the model looked", interactive=False, type="pil", elem_id="gradcam")
        with gr.Accordion("Model card", open=False):
            gr.Markdown(model_card(predictor.manifest))
        image.change(classify, image, [breeds, species], api_name="classify", concurrency_limit=CONCURRENCY) \
             .success(explain, [image, show_cam], [cam, note], api_visibility="private",
                      concurrency_limit=CAM_CONCURRENCY, concurrency_id="explain")
        show_cam.change(explain, [image, show_cam], [cam, note], api_visibility="private",
                        concurrency_id="explain")
    demo.queue(max_size=queue_size, default_concurrency_limit=CONCURRENCY)
    return demo


def launch_kwargs(host: str = SERVE_HOST, port: int = SERVE_PORT, share: bool = False) -> dict[str, Any]:
    """Safe `launch` settings: file size limit, nothing served beyond the demo's own files."""
    return {"server_name": host, "server_port": port, "share": share, "max_file_size": MAX_FILE_SIZE,
            "allowed_paths": [], "show_error": False, "ssr_mode": False}


def main(model_dir: str | Path = DEFAULT_MODEL, host: str = SERVE_HOST, port: int = SERVE_PORT, share: bool = False,
         backend: str = "auto") -> None:
    """Load the bundle once (`auto`: classify with onnxruntime when model.onnx verifies), build the demo, serve."""
    demo = build_demo(load_model(model_dir, backend=backend))
    # torch, fastai, Gradio and the model leave ~630,000 long-lived objects that every full collection would walk
    # (350-380 ms holding the GIL, measured on this demo); frozen, they keep those pauses out of request latency
    gc.freeze()
    demo.launch(**launch_kwargs(host, port, share))


if __name__ == "__main__":
    main(*sys.argv[1:2])
