"""Check petclf's whole GPU path on a CUDA machine and record what it measured (goals: BENCHMARKS.md, "GPU").

    tools/gpu_check.sh --wheels .whl OUT_DIR              # on the GPU machine (docs/internals.md, "GPU check")
    tools/gpu_check.sh --device cpu OUT_DIR               # the same steps at tiny sizes on a CPU (make test)
    python tools/gpu_check.py [--device cuda|cpu] [--steps facts,data,train] [--work DIR] [--keep] OUT_DIR

Steps, each timed; one that fails is recorded with its error and the next one runs:
  facts    GPU name, memory, driver, torch / CUDA / cuDNN versions, CPU cores, package versions
  data     Pets-like synthetic JPEGs: 37 breeds of ~500 x 375 photos, 3,885 images (3,108 to train)
  train    `petclf train --device cuda --no-pretrained`, the default recipe: lr_find, 5 epochs, bundle + ONNX
           check + metrics.json; the wall time and each stage's
  bench    benchmarks/bench_train.py on the device: compute bound (a), data pipeline (b), training loop (c), memory
  predict  `petclf predict` on a folder, and folder prediction on the device against the raw batched forward
  report   `petclf report --device cuda` (Grad-CAM on the device included)
  lr_find  `petclf lr-find --device cuda`
  resume   a run interrupted with SIGINT after its first epoch (exit 130), then `--resume`d to its last epoch
OUT_DIR gets gpu_check.log (every command with its output) and gpu_check.json (each step's status, error, seconds and
figures, and the speed goals; rewritten after every step, so a run cut short keeps what it measured), plus the
report page, its JSON and the lr_find plot. The data and the runs go to a temp work folder, deleted at the end
unless --keep (a --work folder is kept). Exit code: 0 every step passed, 1 a step failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from petclf.config import DEFAULT_BS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TRAIN_GOAL_S = 90.0  # the default recipe on 3,000+ training images, one H100-class GPU: a retrain you can wait for
LOOP_GOAL = 0.9  # bench (c) >= LOOP_GOAL x min((a), (b)); bench_train.py holds the same goal
PREDICT_GOAL = 0.9  # folder prediction on the GPU >= PREDICT_GOAL x the raw batched forward
PREDICT_BS = 32  # `petclf predict`'s default batch, used on both sides of the comparison
PHOTO_SHAPES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500))  # Pets' usual (w, h); landscape most
PHOTO_ODDS = (0.6, 0.2, 0.1, 0.05, 0.05)


@dataclass(frozen=True)
class Scale:
    """How big each step is: the full sizes on a GPU, the smallest that still exercises every step on a CPU."""

    classes: int
    per_class: int
    photo_scale: float  # x Pets' 500 x 375
    arch: str
    size: int
    presize: int
    bs: int
    epochs: int
    freeze_epochs: int
    bench_steps: int  # timed steps of bench (a)
    bench_epochs: int  # epochs of bench (c); the last is reported
    resume_epochs: int
    predict_images: int
    cli_images: int  # `petclf predict` runs on the CPU (it has no --device), so on fewer images
    channels_last: str
    threads: int | None  # torch threads; None: petclf's default (every core)
    lr_find_steps: int
    timeout: float  # seconds any one command may run


D = TrainConfig()
SCALES = {
    # the default recipe (petclf's defaults) on 37 x 105 = 3,885 photos
    "cuda": Scale(37, 105, 1.0, D.arch, D.size, D.presize, DEFAULT_BS, D.epochs, D.freeze_epochs, 30, 2, 3, 1024, 256,
                  D.channels_last, D.threads, D.lr_find_steps, 300),
    # On the CPU, the default layout: oneDNN's channels_last kernels took ~13 s to build at first use here, longer
    # than the whole tiny run. One thread: with the cores busy with other work, two threads waiting for each other
    # at every parallel region made lr_find 3 x slower (47 s against 15 s on 2 shared cores). The smallest run that
    # still takes every path: resnet10t (half resnet18's blocks, so half its ONNX export), one epoch, lr_find's
    # fewest steps; the resume step keeps two epochs, the least an interrupt can fall between.
    "cpu": Scale(4, 8, 0.2, "resnet10t", 64, 80, 8, 1, 0, 2, 1, 2, 16, 8, "off", 1, 5, 300),
}


class StepFailed(Exception):
    """A step's check did not hold; `figures` keeps what was measured before it failed."""

    def __init__(self, msg: str, figures: dict | None = None):
        super().__init__(msg)
        self.figures = figures or {}


# ---------------------------------------------------------------------------------------------------- context


@dataclass
class Check:
    """One run of the check: where things go, the device, the sizes, the log and the results so far."""

    out: Path
    work: Path
    device: str
    scale: Scale
    log_file: object = None
    result: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict)  # what later steps need from earlier ones (data folder, run folder)

    @property
    def cuda(self) -> bool:
        """True on the GPU, where the speed goals apply."""
        return self.device.startswith("cuda")

    def log(self, line: str, echo: bool = False) -> None:
        """A line to gpu_check.log (and to stdout with `echo`)."""
        self.log_file.write(line + "\n")
        self.log_file.flush()
        if echo:
            print(line, flush=True)

    def save(self) -> None:
        """gpu_check.json as it stands now, written atomically."""
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.result, indent=1))
        os.replace(tmp, self.out / "gpu_check.json")

    def env(self) -> dict[str, str]:
        """This process's and the children's environment: no hub, no user cache, unbuffered output, figures
        without a display."""
        env = {"HF_HUB_OFFLINE": "1", "PETCLF_CACHE_DIR": str(self.work / "cache"), "PYTHONUNBUFFERED": "1",
               "MPLBACKEND": "Agg"}
        if self.scale.threads:  # torch's thread count where petclf does not set it (predict, report)
            env["OMP_NUM_THREADS"] = str(self.scale.threads)
        return env


class Cmd:
    """A child process whose merged output goes to the log line by line, each line with its time since start."""

    def __init__(self, check: Check, name: str, argv: list[str], timeout: float | None = None):
        self.check, self.name, self.argv = check, name, argv
        self.lines: list[tuple[float, str]] = []
        check.log(f"$ {shlex.join(argv)}")
        self.t0, self.wall0 = time.monotonic(), time.time()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=check.work)
        self.timed_out, self.timeout = False, timeout or check.scale.timeout
        self.timer = threading.Timer(self.timeout, self._kill)
        self.timer.start()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _kill(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def _read(self) -> None:
        for line in self.proc.stdout:
            t = time.monotonic() - self.t0
            self.lines.append((t, line.rstrip()))
            self.check.log(f"[{t:7.2f}] {line.rstrip()}")

    def first(self, prefix: str) -> float | None:
        """Seconds from start to the first output line starting with `prefix` (None if none yet)."""
        return next((t for t, line in list(self.lines) if line.startswith(prefix)), None)

    def last(self, prefix: str) -> float | None:
        """Seconds from start to the last output line starting with `prefix`."""
        return next((t for t, line in reversed(list(self.lines)) if line.startswith(prefix)), None)

    def wait(self) -> tuple[int, float]:
        """(exit code, seconds); a command past its time limit is a failed step."""
        rc = self.proc.wait()
        seconds = time.monotonic() - self.t0
        self.timer.cancel()
        self.reader.join(timeout=10)
        self.check.log(f"exit {rc} after {seconds:.2f} s")
        if self.timed_out:
            raise StepFailed(f"`{self.name}` ran past its {self.timeout:.0f} s limit")
        return rc, seconds


def petclf(check: Check, *args: str, timeout: float | None = None) -> Cmd:
    """`petclf ARGS` as a child process (`python -m petclf`: the console script may not be installed)."""
    return Cmd(check, f"petclf {args[0]}", [sys.executable, "-m", "petclf", *args], timeout)


def must(rc: int, cmd: Cmd, want: int = 0) -> None:
    """Fail the step when a command exited otherwise than `want`, quoting its last line."""
    if rc != want:
        tail = next((line for _, line in reversed(cmd.lines) if line.strip()), "")
        raise StepFailed(f"`{cmd.name}` exited {rc} (expected {want}): {tail}")


def train_flags(check: Check) -> list[str]:
    """`--config FILE` with this mode's sizes (lr-find has no --channels-last); on a GPU nothing, so the default
    recipe is petclf's own defaults."""
    s = check.scale
    if check.cuda:
        return []
    path = check.work / "tiny.yaml"
    settings = {"arch": s.arch, "size": s.size, "presize": s.presize, "bs": s.bs, "epochs": s.epochs,
                "freeze_epochs": s.freeze_epochs, "channels_last": s.channels_last, "threads": s.threads,
                "lr_find_steps": s.lr_find_steps}
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    return ["--config", str(path)]


# ---------------------------------------------------------------------------------------------------- 1 facts


def nvidia_smi() -> dict:
    """What `nvidia-smi` says about GPU 0 (empty if it is not there)."""
    q = "name,memory.total,driver_version,compute_cap,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return dict(zip(q.split(","), (v.strip() for v in out.splitlines()[0].split(",")), strict=False))


def package_versions() -> dict[str, str | None]:
    """Versions of what petclf's GPU path runs on."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "torchvision", "fastai", "fastcore", "timm", "accelerate", "onnx", "onnxruntime", "numpy",
             "pillow", "scikit-learn", "matplotlib", "pandas", "safetensors")
    found = {}
    for n in names:
        try:
            found[n] = version(n)
        except PackageNotFoundError:
            found[n] = None
    return found


def step_facts(check: Check) -> dict:
    """GPU, driver, memory, torch and CUDA versions, cores: what the figures were measured on."""
    import torch

    facts = {"python": platform.python_version(), "platform": platform.platform(),
             "cpu_cores": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
             "torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "cudnn_benchmark": torch.backends.cudnn.benchmark, "packages": package_versions(),
             "nvidia_smi": nvidia_smi() if check.cuda or shutil.which("nvidia-smi") else {}}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                     capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported(),
                     gpu_count=torch.cuda.device_count())
    if check.cuda and not torch.cuda.is_available():
        raise StepFailed("torch sees no CUDA GPU", facts)
    check.log(json.dumps(facts, indent=1))
    return facts


# ---------------------------------------------------------------------------------------------------- 2 data


def photo(seed: tuple[int, ...], cls: int, n_classes: int, scale: float):
    """A Pets-like photo: smooth coloured background with grain, and an animal-sized striped blob whose hue and
    stripe angle say the class, at a random place; Pets' sizes and aspect ratios, so decoding costs the same."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = PHOTO_SHAPES[rng.choice(len(PHOTO_SHAPES), p=PHOTO_ODDS)]
    w, h = max(16, round(w * scale)), max(16, round(h * scale))
    low = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    hue = cls / n_classes
    color = 255 * np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1)
    angle = np.pi * (cls % 4) / 4
    stripes = 0.55 + 0.45 * (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi * 6) > 0)
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.18, 0.32)
    blob = (((xx - cx) * w / h) ** 2 + (yy - cy) ** 2 < r**2)[..., None]
    img = np.where(blob, color * stripes[..., None] * rng.uniform(0.8, 1.1), np.asarray(low, np.float32))
    img += rng.normal(0, 8, (h, w, 1)).astype(np.float32)  # grain, so the JPEGs are not unnaturally small
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_photo(job: tuple[Path, str, int, int, int, float]) -> int:
    """Write one photo as `<breed>_<k>.jpg`; returns its size in bytes."""
    folder, breed, cls, k, n_classes, scale = job
    path = folder / f"{breed}_{k}.jpg"
    photo((cls, k), cls, n_classes, scale).save(path, quality=90)
    return path.stat().st_size


def step_data(check: Check) -> dict:
    """Pets-like synthetic photos, written by every core."""
    from petclf.synth import synth_classes

    s = check.scale
    folder = check.work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder, b, c, k, s.classes, s.photo_scale) for c, b in enumerate(synth_classes(s.classes))
            for k in range(1, s.per_class + 1)]
    cores = len(os.sched_getaffinity(0))
    if len(jobs) < 100 or cores == 1:
        sizes = [write_photo(j) for j in jobs]
    else:  # spawned, not forked: the facts step has started CUDA in this process, and a fork would copy it
        with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
            sizes = list(pool.map(write_photo, jobs, chunksize=32))
    check.shared["data"] = folder
    train = len(jobs) - int(len(jobs) * D.valid_pct)  # as fastai's RandomSplitter cuts it
    return {"images": len(jobs), "classes": s.classes, "train_images_about": train,
            "mean_kb": round(sum(sizes) / len(sizes) / 1024, 1), "photo_scale": s.photo_scale, "folder": str(folder)}


# ---------------------------------------------------------------------------------------------------- 3 train


def file_time(path: Path) -> float | None:
    """Modification time of `path`, or None."""
    return path.stat().st_mtime if path.exists() else None


def train_stages(cmd: Cmd, metrics: dict, run: Path, wall: float) -> dict:
    """Seconds of each stage of a run, from its output lines, metrics.json and the files' times."""
    last_epoch = cmd.last("epoch ")
    end_epochs = cmd.wall0 + last_epoch if last_epoch is not None else None
    t_bundle, t_onnx, t_metrics = (file_time(run / n) for n in ("model.json", "model.onnx.json", "metrics.json"))
    lrf = (metrics.get("lr_find") or {}).get("seconds")
    device_line = cmd.first("device ")
    stages = {"startup_s": round(device_line, 2) if device_line is not None else None, "lr_find_s": lrf,
              "epochs_s": [h["seconds"] for h in metrics.get("history", [])],
              "finish_s": round(wall - last_epoch, 2) if last_epoch is not None else None}
    if end_epochs and t_bundle and t_onnx and t_metrics:
        stages.update(validate_and_bundle_s=round(t_bundle - end_epochs, 2), onnx_s=round(t_onnx - t_bundle, 2),
                      export_pkl_and_metrics_s=round(t_metrics - t_onnx, 2))
    return stages


def step_train(check: Check) -> dict:
    """The default recipe from random weights on the device: it must finish, export a checked bundle, write
    metrics.json; figures are the wall time and each stage's."""
    s = check.scale
    run = check.work / "runs" / "train"
    cmd = petclf(check, "train", "--device", check.device, "--no-pretrained", "--data", str(check.shared["data"]),
                 "--out", str(run), *train_flags(check))
    rc, wall = cmd.wait()
    must(rc, cmd)
    metrics = json.loads((run / "metrics.json").read_text())
    manifest = json.loads((run / "model.json").read_text())
    device_line = next((line for _, line in cmd.lines if line.startswith("device ")), "")
    figures = {"wall_s": round(wall, 2), **train_stages(cmd, metrics, run, wall), "device_line": device_line,
               "train_images": manifest["data"]["sizes"]["train"], "valid_images": manifest["data"]["sizes"]["valid"],
               "images_per_second": metrics["images_per_second"], "error_rate": metrics["error_rate"],
               "lr": metrics["lr"], "epochs": len(metrics["history"])}
    onnx_info = run / "model.onnx.json"
    if onnx_info.is_file():
        info = json.loads(onnx_info.read_text())
        figures["onnx"] = {k: info[k] for k in ("max_abs_diff", "max_abs_logit", "rtol", "opset")}
    check.shared["run"] = run
    if not device_line.startswith(f"device {check.device}"):
        raise StepFailed(f"trained on another device: {device_line!r}", figures)
    if figures["epochs"] != s.epochs + s.freeze_epochs:
        raise StepFailed(f"metrics.json has {figures['epochs']} epochs, not {s.epochs + s.freeze_epochs}", figures)
    if "onnx" not in figures or not (run / "model.onnx").is_file():
        raise StepFailed("no model.onnx: the ONNX export or its check against torch failed (see the log)", figures)
    if check.cuda and figures["train_images"] < 3000:
        raise StepFailed(f"only {figures['train_images']} training images; the GPU goal is set on 3,000+", figures)
    return figures


# ---------------------------------------------------------------------------------------------------- 4 bench


def step_bench(check: Check) -> dict:
    """benchmarks/bench_train.py on the device, over the same photos: (a), (b), (c) and peak memory."""
    s = check.scale
    out = check.work / "bench_train.json"
    args = ["--device", check.device, "--data", str(check.shared["data"]), "--arch", s.arch, "--size", str(s.size),
            "--presize", str(s.presize), "--bs", str(s.bs), "--steps", str(s.bench_steps), "--epochs",
            str(s.bench_epochs), "--channels-last", s.channels_last, "--variants", "--json", str(out),
            *(["--threads", str(s.threads)] if s.threads else [])]
    cmd = Cmd(check, "bench_train.py", [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), *args])
    rc, wall = cmd.wait()
    must(rc, cmd)
    r = json.loads(out.read_text())
    shutil.copy(out, check.out / "bench_train.json")
    run = r["runs"][0]
    figures = {"wall_s": round(wall, 2), "a_img_s": r["a"]["img_s"], "a0_img_s": r["a0"]["img_s"],
               "b_img_s": run["b"]["img_s"], "c_img_s": run["c"]["img_s"], "c_over_min_ab": run["c_over_min_ab"],
               "bound": run["bound"], "workers": run["workers"], "precision": r["precision"],
               "channels_last": r["channels_last"], "cudnn_benchmark": r["cudnn_benchmark"],
               "peak_mib": {"a": r["a"]["peak_mib"], "b": run["b"]["peak_mib"], "c": run["c"]["peak_mib"]},
               "b_variants": {k: v["img_s"] for k, v in run["b"].get("variants", {}).items()},
               "c_epoch_img_s": run["c"]["epoch_img_s"], "full": r}
    if not all(figures[k] > 0 for k in ("a_img_s", "b_img_s", "c_img_s")):
        raise StepFailed("a figure is not positive", figures)
    return figures


# ---------------------------------------------------------------------------------------------------- 5 predict


def predict_folder(check: Check, n: int) -> Path:
    """A folder of `n` of the photos (hard links), as a user would point predict at."""
    folder = check.work / f"predict-{n}"
    folder.mkdir(exist_ok=True)
    for src in sorted(check.shared["data"].iterdir())[:n]:
        dst = folder / src.name
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy(src, dst)
    return folder


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds `fn` takes, the GPU's queue drained before and after."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def folder_vs_raw(check: Check, folder: Path) -> dict:
    """images/s of `Predictor.predict_paths` over `folder` on the device, and of the bare network on a ready batch
    (the same batch size, precision and layout), after a warm-up of each."""
    import torch

    from petclf.predict import load_model

    p = load_model(check.shared["run"], device=check.device, backend="torch")
    model = p.model  # the torch network on the device, as `p.net` runs it
    files = sorted(folder.iterdir())
    n = len(files)
    list(p.predict_paths(files[: 2 * PREDICT_BS], bs=PREDICT_BS))  # warm-up: threads, allocator, cuDNN
    folder_s = timed(lambda: list(p.predict_paths([folder], bs=PREDICT_BS)), check.device)
    cores = len(os.sched_getaffinity(0))
    all_cores_s = timed(lambda: list(p.predict_paths([folder], bs=PREDICT_BS, workers=cores)), check.device)
    x = torch.from_numpy(p.preprocess(files[:PREDICT_BS])).to(check.device)
    batches = math.ceil(n / PREDICT_BS)

    def raw() -> None:
        with torch.inference_mode():
            for _ in range(batches):
                model(x)

    raw()
    raw_s = timed(raw, check.device)
    folder_rate, raw_rate = n / folder_s, batches * PREDICT_BS / raw_s
    return {"images": n, "bs": PREDICT_BS, "folder_img_s": round(folder_rate, 1), "raw_img_s": round(raw_rate, 1),
            "folder_over_raw": round(folder_rate / raw_rate, 3),
            f"folder_img_s_workers_{cores}": round(n / all_cores_s, 1),
            "device": str(next(model.parameters()).device)}


def step_predict(check: Check) -> dict:
    """`petclf predict` on a folder (the CLI runs on the CPU), then the same folder on the device in-process."""
    s = check.scale
    run = check.shared["run"]
    cli_folder = predict_folder(check, s.cli_images)
    out = check.work / "predict.csv"
    cmd = petclf(check, "predict", str(cli_folder), "--model", str(run), "--format", "csv", "--out", str(out))
    rc, wall = cmd.wait()
    must(rc, cmd)
    rows = out.read_text().splitlines()[1:]
    figures = {"cli_wall_s": round(wall, 2), "cli_rows": len(rows), "cli_images": s.cli_images,
               "cli_device": "cpu (petclf predict has no --device)"}
    if len(rows) != s.cli_images:
        raise StepFailed(f"petclf predict wrote {len(rows)} rows for {s.cli_images} images", figures)
    try:
        figures.update(folder_vs_raw(check, predict_folder(check, s.predict_images)))
    except Exception as e:  # keep the CLI's figures with the error
        raise StepFailed(f"folder prediction on {check.device}: {type(e).__name__}: {e}", figures) from e
    if figures["images"] != s.predict_images:
        raise StepFailed(f"{figures['images']} photos predicted, not {s.predict_images}", figures)
    return figures


# ---------------------------------------------------------------------------------------------------- 6 report


def step_report(check: Check) -> dict:
    """`petclf report` on the device over the run's validation split; Grad-CAM of every top loss must be there."""
    rep = check.work / "report"
    cmd = petclf(check, "report", "--model", str(check.shared["run"]), "--device", check.device, "--out", str(rep))
    rc, wall = cmd.wait()
    must(rc, cmd)
    r = json.loads((rep / "report.json").read_text())
    dest = check.out / "report"
    dest.mkdir(exist_ok=True)
    for name in ("report.html", "report.json"):
        shutil.copy(rep / name, dest / name)
    cams = [rep / "figures" / t["cam"] for t in r["top_losses"] if t.get("cam")]
    figures = {"wall_s": round(wall, 2), "device": r["timing"]["device"], "images": r["timing"]["images"],
               "inference_s": round(r["timing"]["inference_seconds"], 2),
               "inference_img_s": round(r["timing"]["images_per_second"], 1),
               "report_s": round(r["timing"]["total_seconds"], 2), "top_losses": len(r["top_losses"]),
               "gradcam_figures": sum(c.is_file() for c in cams), "html_kb": (rep / "report.html").stat().st_size >> 10}
    if not figures["device"].startswith(check.device):
        raise StepFailed(f"the report ran on {figures['device']}, not {check.device}", figures)
    if not r["top_losses"] or figures["gradcam_figures"] != len(r["top_losses"]):
        raise StepFailed(f"{figures['gradcam_figures']} Grad-CAM figures for {len(r['top_losses'])} top losses",
                         figures)
    return figures


def step_lr_find(check: Check) -> dict:
    """`petclf lr-find` on the device: a plot and a suggestion."""
    out = check.work / "lr_find"
    cmd = petclf(check, "lr-find", "--data", str(check.shared["data"]), "--no-pretrained", "--device", check.device,
                 "--out", str(out), *train_flags(check))
    rc, wall = cmd.wait()
    must(rc, cmd)
    line = next((line for _, line in cmd.lines if line.startswith("suggested lr ")), "")
    figures = {"wall_s": round(wall, 2), "line": line}
    if not (out / "lr_find.png").is_file() or not line:
        raise StepFailed("no lr_find.png or no suggestion printed", figures)
    figures["suggestion"] = float(line.split()[2].rstrip(";"))
    shutil.copy(out / "lr_find.png", check.out / "lr_find.png")
    return figures


# ---------------------------------------------------------------------------------------------------- 7 resume


def epochs_in_checkpoint(run: Path) -> int:
    """Finished epochs recorded in a run's last checkpoint."""
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    return len(ckpt["state"]["history"])


def wait_for_line(cmd: Cmd, prefix: str, timeout: float) -> float | None:
    """Seconds until `cmd` prints a line starting with `prefix`; None if it exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cmd.proc.poll() is None:
        t = cmd.first(prefix)
        if t is not None:
            return t
        time.sleep(0.05)
    return cmd.first(prefix)


def step_resume(check: Check) -> dict:
    """Interrupt a run once its first epoch is saved (SIGINT, as Ctrl-C: exit 130), then `--resume` it to the end;
    the final metrics.json must hold every planned epoch, once each, in order."""
    s = check.scale
    run = check.work / "runs" / "resume"
    planned = s.resume_epochs
    cmd = petclf(check, "train", "--device", check.device, "--no-pretrained", "--data", str(check.shared["data"]),
                 "--out", str(run), "--lr", "1e-3", "--epochs", str(planned), "--freeze-epochs", "0",
                 *train_flags(check))
    # EpochProgress prints an epoch's line after EpochEnd has written its checkpoint
    seen = wait_for_line(cmd, "epoch ", s.timeout)
    if seen is None:
        cmd.proc.kill()
        rc, _ = cmd.wait()
        raise StepFailed(f"the run printed no epoch line (exit {rc})")
    cmd.proc.send_signal(signal.SIGINT)
    rc, first_s = cmd.wait()
    figures = {"planned_epochs": planned, "first_run_s": round(first_s, 2), "interrupt_at_s": round(seen, 2)}
    must(rc, cmd, 130)
    figures["epochs_at_interrupt"] = done = epochs_in_checkpoint(run)
    if not 1 <= done < planned or (run / "metrics.json").exists():
        raise StepFailed(f"the interrupted run saved {done} of {planned} epochs; expected 1 to {planned - 1}",
                         figures)
    threads = ["--threads", str(s.threads)] if s.threads else []  # --resume takes only the machine's settings
    cmd = petclf(check, "train", "--resume", str(run), "--device", check.device, *threads)
    rc, second_s = cmd.wait()
    figures["resumed_run_s"] = round(second_s, 2)
    must(rc, cmd)
    history = json.loads((run / "metrics.json").read_text())["history"]
    figures["final_epochs"] = len(history)
    figures["resumed_line"] = next((line for _, line in cmd.lines if line.startswith("resuming ")), "")
    if [h["epoch"] for h in history] != list(range(1, planned + 1)):
        raise StepFailed(f"the resumed run's epochs are {[h['epoch'] for h in history]}, not 1..{planned}",
                         figures)
    if not figures["resumed_line"]:
        raise StepFailed("the second run did not say it was resuming", figures)
    return figures


# ---------------------------------------------------------------------------------------------------- the run


STEPS: dict[str, Callable[[Check], dict]] = {"facts": step_facts, "data": step_data, "train": step_train,
                                             "bench": step_bench, "predict": step_predict, "report": step_report,
                                             "lr_find": step_lr_find, "resume": step_resume}
NEEDS = {"train": "data", "bench": "data", "predict": "run", "report": "run", "lr_find": "data", "resume": "data"}


def run_step(check: Check, name: str, fn: Callable[[Check], dict]) -> None:
    """Run one step, timing it; record its status, error and figures, whatever happens."""
    check.log(f"\n==== {name}", echo=True)
    t0 = time.monotonic()
    need = NEEDS.get(name)
    try:
        if need and need not in check.shared:
            raise StepFailed(f"needs the {'data' if need == 'data' else 'train'} step, which failed")
        figures, status, error = fn(check), "ok", None
    except Exception as e:  # noqa: BLE001 - every failure is recorded and the next step runs
        figures, status = getattr(e, "figures", {}), "failed"
        error = f"{type(e).__name__}: {e}" if not isinstance(e, StepFailed) else str(e)
        check.log(traceback.format_exc())
    step = {"status": status, "error": error, "seconds": round(time.monotonic() - t0, 2), "figures": figures}
    check.result["steps"][name] = step
    check.save()
    check.log(f"---- {name}: {status} in {step['seconds']:.1f} s" + (f": {error}" if error else ""), echo=True)


def goal(value: float | None, target: float, higher: bool, applies: bool) -> dict:
    """A speed goal: its value, the target, and whether it is met (None where it does not apply or is missing)."""
    met = None if value is None or not applies else (value >= target if higher else value < target)
    return {"value": value, "goal": (">= " if higher else "< ") + f"{target:g}", "met": met}


def goals(check: Check) -> dict:
    """The speed goals from the steps' figures; they apply on the GPU only."""
    f = {k: v["figures"] for k, v in check.result["steps"].items()}
    return {"train_wall_s": goal(f.get("train", {}).get("wall_s"), TRAIN_GOAL_S, False, check.cuda),
            "loop_over_min_ab": goal(f.get("bench", {}).get("c_over_min_ab"), LOOP_GOAL, True, check.cuda),
            "predict_folder_over_raw": goal(f.get("predict", {}).get("folder_over_raw"), PREDICT_GOAL, True,
                                            check.cuda)}


def summary(check: Check) -> str:
    """The steps and goals in a few lines, for the end of the log and stdout."""
    lines = [f"{'step':<9} {'status':<7} {'seconds':>8}  error"]
    for name, st in check.result["steps"].items():
        lines.append(f"{name:<9} {st['status']:<7} {st['seconds']:8.1f}  {st['error'] or ''}")
    for name, g in check.result["goals"].items():
        met = {True: "met", False: "NOT met", None: "n/a"}[g["met"]]
        lines.append(f"goal {name}: {g['value']} ({g['goal']}) {met}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for gpu_check.log, gpu_check.json and the report")
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: the same steps at tiny sizes)")
    ap.add_argument("--work", type=Path, help="folder for the data and runs, kept (default: a new temp folder, "
                                              "deleted at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the temp work folder")
    ap.add_argument("--steps", help=f"only these steps, comma-separated (default: all of {','.join(STEPS)})")
    args = ap.parse_args(argv)
    args.steps = args.steps.split(",") if args.steps else list(STEPS)
    if set(args.steps) - set(STEPS):
        ap.error(f"unknown step(s) {', '.join(sorted(set(args.steps) - set(STEPS)))}; known: {', '.join(STEPS)}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        ap.error(f"--device must be cuda, cuda:N or cpu, not {args.device!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every step, write the log and the JSON; 0 if every step passed, else 1."""
    args = parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background (a shell's `&`, nohup): the children would inherit the ignored SIGINT and the
        # resume step's interrupt would never land; a handler, unlike SIG_IGN, is reset to the default by exec
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="petclf-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    scale = SCALES["cuda" if args.device.startswith("cuda") else "cpu"]
    with open(args.out / "gpu_check.log", "w") as log_file:
        check = Check(args.out, work.resolve(), args.device, scale, log_file)
        os.environ.update(check.env())
        check.result = {"command": shlex.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
                        "device": args.device, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "scale": asdict(scale), "work": str(check.work), "steps": {}}
        check.log(f"gpu_check: {check.result['command']} (work folder {check.work})", echo=True)
        try:
            for name, fn in STEPS.items():
                if name in args.steps:
                    run_step(check, name, fn)
        finally:
            check.result.update(goals=goals(check), finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                ok=all(s["status"] == "ok" for s in check.result["steps"].values()))
            check.save()
            check.log("\n" + summary(check), echo=True)
            if not args.keep and args.work is None:  # a folder it made itself; never one it was given
                shutil.rmtree(check.work, ignore_errors=True)
    return 0 if check.result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
