"""Retrain in seconds: `petclf train` (probe recipe, EfficientNet-Lite0 at 384 px) on real photos, first run against a
re-run after adding a class, at 1x, 2x and 10x the photos, idle and with both cores busy; and the feature backends
side by side.

    .venv/bin/python -m benchmarks.bench_retrain --data ../shared/pets-dev                  # all of it
    .venv/bin/python -m benchmarks.bench_retrain --data ../shared/pets-dev --sizes 1 --busy  # 185 photos, idle+busy
    .venv/bin/python -m benchmarks.bench_retrain --data ../shared/pets-dev --only backends

Each run is the real command in a fresh process (`python -m petclf train`), so its wall time includes loading torch
and fastai; the feature and head times are the run's own (metrics.json's `probe`). Every first run starts from an
empty feature cache (its own temp folder). The re-run adds a class of 5 photos (the first 5 ImageNet-dev photos of
`--new`, else upside-down copies of 5 of the photos) to the folder of the first run and runs again. Bigger folders
are the photos and their mirrored and cropped copies (`<breed>_<n>.jpg`, so the Pets layout reads them). `--busy`
also runs each first run with two `python3 -c "while 1: pass"` processes hogging the cores (started and killed
here), and prints each stage's busy/idle ratio. Timings taken on a shared machine are noisy: the load average is
printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import ROOT, load_avg

ARCH = "tf_efficientnet_lite0"
SIZE = 384
VARIANTS = [None, "mirror", "crop90", "crop80", "mirror-crop90", "mirror-crop80", "crop70", "mirror-crop70",
            "top90", "mirror-top90"]  # copies 0 .. 9: the photo itself first


def variant(img: Image.Image, name: str | None) -> Image.Image:
    """A mirrored and/or cropped copy of `img` (cropNN: the centre NN %, topNN: the top-left NN %)."""
    if name is None:
        return img
    if "mirror" in name:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    for kind in ("crop", "top"):
        if kind in name:
            f = int(name.split(kind)[1]) / 100
            w, h = img.size
            cw, ch = int(w * f), int(h * f)
            x0, y0 = ((w - cw) // 2, (h - ch) // 2) if kind == "crop" else (0, 0)
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
    return img


def make_folder(src: Path, out: Path, copies: int) -> int:
    """`out` holding every photo of `src` and `copies - 1` altered copies of each; the number of photos."""
    out.mkdir(parents=True)
    n = 0
    for f in sorted(src.glob("*.jpg")):
        breed, num = f.stem.rsplit("_", 1)
        with Image.open(f) as im:
            im = im.convert("RGB")
            for k in range(copies):
                name = f"{breed}_{int(num) + 10_000 * k}.jpg"
                if k == 0:
                    shutil.copy(f, out / name)
                else:
                    variant(im, VARIANTS[k]).save(out / name, quality=90)
                n += 1
    return n


def add_class(folder: Path, new: Path | None, data: Path) -> None:
    """Five photos of a class the folder does not have: the first five of `new`, else upside-down copies of five
    photos of `data`."""
    srcs = sorted(new.glob("*.JPEG"))[:5] if new else sorted(data.glob("*.jpg"))[:5]
    for i, f in enumerate(srcs):
        with Image.open(f) as im:
            im = im.convert("RGB")
            (im if new else im.transpose(Image.FLIP_TOP_BOTTOM)).save(folder / f"newclass_{i + 1}.jpg", quality=90)


def train(folder: Path, out: Path, cache: Path, weights: Path, threads: int | None = None) -> dict:
    """One `petclf train` in a fresh process: wall seconds, and metrics.json's probe figures."""
    cmd = [sys.executable, "-m", "petclf", "train", "--data", str(folder), "--arch", ARCH, "--weights", str(weights),
           "--recipe", "probe", "--out", str(out)] + (["--threads", str(threads)] if threads else [])
    env = {**os.environ, "PETCLF_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if proc.returncode:
        raise RuntimeError(f"petclf train failed: {proc.stderr[-2000:]}")
    p = json.loads((out / "metrics.json").read_text())["probe"]
    return {"wall": wall, "photos": p["n_images"], "features": p["feature_seconds"], "head": p["fit_seconds"],
            "reused": p.get("features_reused", 0), "error": p["error_rate"], "load": load_avg()}


def row(name: str, r: dict) -> str:
    computed = r["photos"] - r["reused"]
    per = r["features"] / computed if computed else 0.0
    return (f"{name:<34} {r['photos']:>6} {r['reused']:>6} {r['wall']:>7.1f} {r['features']:>9.1f} "
            f"{per * 1000:>8.0f} {r['head']:>7.1f} {r['head'] / r['photos'] * 1000:>8.1f} {r['error']:>6.3f}  "
            f"{r['load']}")


HEADER = (f"{'run':<34} {'photos':>6} {'reused':>6} {'wall s':>7} {'feat. s':>9} {'ms/phot':>8} {'head s':>7} "
          f"{'ms/phot':>8} {'error':>6}  load avg")


@contextmanager
def busy_cores(n: int = 2):
    """`n` processes spinning on the CPU while the block runs (killed after it)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(n)]
    try:
        time.sleep(1)
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def runs(data: Path, new: Path | None, sizes: list[int], busy: bool, weights: Path, tmp: Path) -> None:
    """The first run and the re-run at each size (and each first run busy with `busy`), printed as they go."""
    print(HEADER, flush=True)
    first = {}
    for copies in sizes:
        folder = tmp / f"photos-x{copies}"
        make_folder(data, folder, copies)
        cache = tmp / f"cache-x{copies}"
        first[copies] = r = train(folder, tmp / f"run-x{copies}", cache, weights)
        print(row(f"first run, {copies}x", r), flush=True)
        add_class(folder, new, data)
        r2 = train(folder, tmp / f"rerun-x{copies}", cache, weights)
        print(row(f"re-run after a new class of 5, {copies}x", r2), flush=True)
        if busy:
            with busy_cores():
                rb = train(folder, tmp / f"busy-x{copies}", tmp / f"cache-busy-x{copies}", weights)
            print(row(f"first run, {copies}x, both cores busy", rb), flush=True)
            print(f"  busy / idle: wall {rb['wall'] / r['wall']:.2f}x, features "
                  f"{rb['features'] / r['features']:.2f}x, head {rb['head'] / r['head']:.2f}x (goal <= 2.5x)")
        shutil.rmtree(folder)
    if len(first) > 1:
        base = min(first)
        for k, r in first.items():
            if k != base:
                b = first[base]
                print(f"growth {base}x -> {k}x photos: features {r['features'] / b['features']:.2f}x, head "
                      f"{r['head'] / b['head']:.2f}x, wall {r['wall'] / b['wall']:.2f}x")


def backends(data: Path, weights: Path, n: int = 32) -> None:
    """The body's forward on `n` photos at 384 px: torch (default layout, channels_last) and onnxruntime on the
    exported body, at batch 8 and 32; the largest difference of each from torch's maps."""
    import torch

    from petclf.featcache import FeatureCache
    from petclf.features import onnx_body, torch_body
    from petclf.model import make_network, norm_stats, probe_head
    from petclf.preprocess import Preprocess

    mean, std = norm_stats(ARCH)
    x = Preprocess(SIZE, SIZE, tuple(mean), tuple(std))(sorted(data.glob("*.jpg"))[:n])
    net = make_network(ARCH, 2, head=probe_head(ARCH), weights=weights).eval()
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        ref = net[0](torch.from_numpy(x)).numpy()
        contenders = {"onnxruntime": lambda: onnx_body(net, SIZE, FeatureCache(tmp)).run,
                      "torch (default layout)": lambda: (lambda b: net[0](torch.from_numpy(b))),
                      "torch channels_last": lambda: torch_body(net, "cpu").run}  # last: it changes the layout
        print(f"\nbody forward, {n} photos at {SIZE} px, {torch.get_num_threads()} threads; load {load_avg()}")
        print(f"{'backend':<24} {'bs':>3} {'wall s':>7} {'CPU s':>7} {'ms/photo':>9}  max |diff| vs torch")
        for name, make in contenders.items():
            fn = make()
            for bs in (8, 32):
                fn(x[:2])
                t, c = time.perf_counter(), time.process_time()
                out = np.concatenate([np.asarray(fn(x[i:i + bs])) for i in range(0, n, bs)])
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                print(f"{name:<24} {bs:>3} {wall:>7.2f} {cpu:>7.2f} {wall / n * 1000:>9.0f}  "
                      f"{np.abs(out - ref).max():.2g} (maps up to {np.abs(ref).max():.3g})", flush=True)


def main() -> None:
    from petclf.model import efficientnet_lite0_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a folder of <breed>_<n>.jpg photos")
    ap.add_argument("--new", type=Path, default=ROOT.parent / "shared" / "imagenet-dev",
                    help="photos of the new class (the first 5 .JPEG files); missing: mirrored copies")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 10], help="copies of each photo (1, 2, 10)")
    ap.add_argument("--busy", action="store_true", help="also each first run with both cores busy")
    ap.add_argument("--only", choices=["runs", "backends"], help="one half of the benchmark")
    args = ap.parse_args()
    new = args.new if args.new.is_dir() else None
    print(f"{len(list(args.data.glob('*.jpg')))} photos in {args.data}; new class from {new or 'mirrored copies'}; "
          f"{os.cpu_count()} cores; load {load_avg()}")
    with tempfile.TemporaryDirectory(prefix="bench_retrain_") as tmp:
        weights = efficientnet_lite0_weights(Path(tmp) / "lite0.safetensors")
        if args.only != "backends":
            runs(args.data, new, args.sizes, args.busy, weights, Path(tmp))
        if args.only != "runs":
            backends(args.data, weights)


if __name__ == "__main__":
    main()
