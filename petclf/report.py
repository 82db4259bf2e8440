"""Interpretation report: where a trained model fails and why, as one self-contained HTML page.

    petclf report --model exports/latest --split valid --out exports/latest/report

    from petclf.report import write_report
    paths = write_report("exports/latest")             # {"html": ..., "json": ..., "dir": ...}

One pass of the model over the split (fastai `Learner.get_preds(with_loss=True)`, with a progress bar) gives
the raw outputs; fastai's `ClassificationInterpretation` and scikit-learn turn them into the numbers;
matplotlib draws the figures, which are saved as PNG and embedded as data URIs in `report.html` (no CDN, opens
offline). `report.json` holds every number. The bundle is only read: its temperature was fitted when it was
trained.

Pipeline, one module a step: `evaluation.evaluate` (model + data -> outputs), `report_numbers.compute_report`
(outputs -> numbers), `draw_figures` (numbers + model -> PNGs), `plots.render_html` (numbers + PNGs -> page);
`write_report` runs all four.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from petclf.bundle import Manifest, read_manifest, resolve_bundle_dir
from petclf.config import DEFAULT_MODEL, REPORT_BS
from petclf.evaluation import (
    Evaluation,
    ReportError,  # noqa: F401 - the report's error, where callers look for it
    evaluate,
    read_json,
)
from petclf.image import encode
from petclf.io import check_writable, write_atomic
from petclf.plots import plot_confusion, plot_history, plot_reliability, png, render_html
from petclf.progress import bar_unless
from petclf.report_numbers import MIN_VAL, TOP_K, compute_report

THUMB = 192  # largest side of top-loss and label-error images, in pixels
THUMB_SMALL = 128  # ... and of the confused pairs' examples, shown smaller


# ---------------------------------------------------------------------------------------------------- figures

def _inputs(learn, items: list[Path]) -> torch.Tensor:
    """The preprocessed tensors of `items`, exactly as validation saw them."""
    dl = learn.dls.test_dl(items, num_workers=0)
    return torch.cat([b[0] for b in dl])


def _to_image(x: torch.Tensor, mean: list[float], std: list[float]):
    """A normalised 3xHxW tensor back to a PIL image."""
    from PIL import Image

    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    a = ((x.detach().cpu().float() * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(a)


def _thumbpng(img, side: int = THUMB) -> bytes:
    """`img` scaled so its longest side is at most `side` pixels, as PNG bytes."""
    img = img.copy()
    img.thumbnail((side, side))
    return encode(img, "PNG", optimize=True)


def example_images(ev: Evaluation, entries: list[dict[str, Any]], cam: bool = False,
                   side: int = THUMB) -> dict[str, bytes]:
    """PNG thumbnails of report entries (`index`, `image`), plus Grad-CAM of the predicted class (`cam`)."""
    from petclf.cam import gradcam, overlay

    if not entries:
        return {}
    x = _inputs(ev.learn, [ev.items[e["index"]] for e in entries])
    images = [_to_image(xi, ev.manifest.mean, ev.manifest.std) for xi in x]
    out = {e["image"]: _thumbpng(img, side) for e, img in zip(entries, images, strict=True)}
    if cam:
        pos = {c: i for i, c in enumerate(ev.classes)}
        model = ev.learn.model
        heat = gradcam(model, x.to(next(model.parameters()).device), [pos[e["predicted"]] for e in entries])
        cams = [overlay(img, h) for img, h in zip(images, heat, strict=True)]
        out.update({e["cam"]: _thumbpng(c, side) for e, c in zip(entries, cams, strict=True)})
    return out


def draw_figures(report: dict[str, Any], ev: Evaluation) -> dict[str, bytes]:
    """Every figure of the report as {relative file name: PNG bytes}."""
    figures = {"confusion_matrix.png": png(plot_confusion(report["confusion"])),
               "reliability.png": png(plot_reliability(report["calibration"]))}
    if report["training"]["history"]:
        figures["training_curves.png"] = png(plot_history(report["training"]["history"]))
    if ev.run.lr_find is not None:
        figures["lr_find.png"] = ev.run.lr_find.read_bytes()
    figures.update(example_images(ev, report["top_losses"], cam=True))
    pairs = [e for p in report["most_confused"] for e in p["examples"]]
    figures.update(example_images(ev, pairs, side=THUMB_SMALL))
    figures.update(example_images(ev, report["data_quality"]["label_errors"]))
    return figures


# ---------------------------------------------------------------------------------------------------- output


def _remove_old_figures(out: Path) -> None:
    """Delete the figures an earlier report in `out` listed, so none outlives the report that made it."""
    old = read_json(out / "report.json") or {}
    for rel in old.get("figures", []):
        path = (out / rel).resolve()
        if path.suffix == ".png" and (out / "figures").resolve() in path.parents:
            path.unlink(missing_ok=True)


def save_outputs(report: dict[str, Any], figures: dict[str, bytes], out: str | Path) -> dict[str, Path]:
    """Write figures (PNG), `report.json` and `report.html` into `out`; returns their paths."""
    out = Path(out)
    _remove_old_figures(out)
    for name, data in figures.items():
        (out / "figures" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "figures" / name).write_bytes(data)
    report = {**report, "figures": sorted(f"figures/{name}" for name in figures)}
    json_path = write_atomic(out / "report.json", json.dumps(report, indent=1))
    html_path = write_atomic(out / "report.html", render_html(report, figures))
    return {"dir": out, "html": html_path, "json": json_path}


def write_report(model: str | Path = DEFAULT_MODEL, data: str | Path | None = None, split: str = "valid",
                 out: str | Path | None = None, bs: int = REPORT_BS, device: str | None = None,
                 workers: int | None = None, min_val: int = MIN_VAL, top_k: int = TOP_K,
                 progress: bool = False, labels: str | Path | None = None,
                 manifest: Manifest | None = None) -> dict[str, Path]:
    """Evaluate, compute, draw and write the report (default `out`: MODEL/report); the model folder's files
    are only read, its manifest once (or not at all when the caller passes the one it read)."""
    start = time.perf_counter()
    model_dir = resolve_bundle_dir(model)
    manifest = manifest or read_manifest(model_dir)  # a missing or corrupt model: said before anything else
    out = check_writable(out if out is not None else model_dir / "report")  # before the long part, not after
    ev = evaluate(model_dir, data, split, bs=bs, device=device, workers=workers, progress=progress,
                  labels=labels, manifest=manifest)
    report = compute_report(ev, min_val=min_val, top_k=top_k)
    with bar_unless(not progress, "drawing the figures (Grad-CAM of the top losses)"):
        figures = draw_figures(report, ev)
    report["timing"]["total_seconds"] = time.perf_counter() - start
    return save_outputs(report, figures, out)
