"""Prediction and demo-server speed: petclf's predictor vs fastai's `learn.predict` vs the raw network, and the demo
under load vs a typical fastai Space, on the same model (random weights: no hub access needed).

    .venv/bin/python benchmarks/bench_predict.py                     # resnet34 at 224 px, ~5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_predict.py --duration 10 --arch resnet18 --out bench.json   # quicker

All ratios come from one run on one machine, so they compare like with like even when absolute times drift.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE_APP = '''
import sys, warnings
warnings.filterwarnings("ignore")
import gradio as gr
from fastai.vision.all import load_learner

from petclf.data import PetImage  # the learner's image type (fastai's PILImage, decoded through load_rgb)

learn = load_learner(sys.argv[1])
labels = learn.dls.vocab

def predict(img):
    img = PetImage.create(img)
    _, _, probs = learn.predict(img)
    return {labels[i]: float(probs[i]) for i in range(len(labels))}

gr.Interface(fn=predict, inputs=gr.Image(type="pil"), outputs=gr.Label(num_top_classes=3),
             title="Pet breed classifier").launch(server_name="127.0.0.1", server_port=int(sys.argv[2]))
'''


# ---------------------------------------------------------------------------------------------------- setup


def make_photos(out: Path, n: int, classes: list[str], seed: int = 0) -> list[Path]:
    """`n` Pets-sized (500 x 375) JPEG photos, named `<breed>_<k>.jpg`: jittered crops of a real cat photo."""
    from skimage import data

    rng = np.random.default_rng(seed)
    base = Image.fromarray(data.chelsea())
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.7, 1)), int(h * rng.uniform(0.7, 1))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = base.crop((x0, y0, x0 + cw, y0 + ch)).resize((500, 375), Image.BICUBIC)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.clip(np.asarray(im, np.float32) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        path = out / f"{classes[i % len(classes)]}_{i + 1}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def make_learner(folder: Path, arch: str, size: int, presize: int):
    """A fastai Learner (random weights) over the photo folder, exactly as petclf trains one."""
    import fastai.callback.all  # noqa: F401 - patches Learner
    from fastai.vision.learner import vision_learner

    from petclf.data import load_pets, make_dataloaders
    from petclf.model import norm_stats

    mean, std = norm_stats(arch)
    dls = make_dataloaders(load_pets(folder, valid_pct=0.5, use_cache=False), bs=32, size=size, presize=presize,
                           mean=mean, std=std, workers=0)
    learn = vision_learner(dls, arch, pretrained=False)
    return learn, mean, std


def export_both(learn, arch: str, size: int, presize: int, mean, std, out: Path) -> tuple[Path, Path]:
    """The same model twice: a petclf bundle and fastai's `export.pkl` (what a typical Space loads)."""
    from petclf.bundle import make_manifest, write_bundle
    from petclf.model import FASTAI_HEAD
    from petclf.onnx import export_onnx

    bundle = out / "bundle"
    write_bundle(learn.model, bundle, make_manifest(arch, FASTAI_HEAD, list(learn.dls.vocab), size, presize,
                                                    mean, std))
    export_onnx(bundle)  # as `petclf train` does at the end of every run, so `load_model` picks onnxruntime
    pkl = out / "export.pkl"
    learn.export(pkl)
    return bundle, pkl


# ---------------------------------------------------------------------------------------------------- timing


def median_ms(fn, items, warmup: int = 3, reps: int = 1) -> float:
    """Median wall time of `fn(item)` in ms over `items` (repeated `reps` times), after `warmup` calls."""
    for it in items[:warmup]:
        fn(it)
    times = []
    for _ in range(reps):
        for it in items:
            t = time.perf_counter()
            fn(it)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def interleaved_ms(fns: dict, items, warmup: int = 3, reps: int = 2, pause: float = 0.03) -> dict[str, float]:
    """Median ms of each `fn(item)`, the functions taking turns on every item so load changes hit all alike.

    Each call starts after `pause` s of idle: torch's OpenMP threads spin for a few ms after torch work and would
    take a core from whichever contender came next (measured: onnxruntime's forward 42.7 ms straight after torch
    ops, 38.8 ms after a 30 ms pause), so without it the order of the contenders would change the numbers.
    """
    for it in items[:warmup]:
        for fn in fns.values():
            fn(it)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for it in items:
            for k, fn in fns.items():
                time.sleep(pause)
                t = time.perf_counter()
                fn(it)
                times[k].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_single(predictor, torch_p, learn, paths: list[Path]) -> dict[str, float]:
    """One image at a time: petclf's default predictor and its torch backend, learn.predict, preprocessing alone,
    the raw torch forward on a ready tensor (the same eval-mode network for every torch contender), and the default
    backend's bare forward on that tensor (what no predictor on that engine can beat)."""
    model = torch_p.model
    x = torch_p.preprocess([paths[0]])

    def raw(_):
        with torch.inference_mode():
            model(x)

    with learn.no_bar():
        ms = interleaved_ms({"predictor_ms": predictor.predict, "predictor_torch_ms": torch_p.predict,
                             "fastai_predict_ms": learn.predict,
                             "preprocess_ms": lambda p: torch_p.preprocess([p]), "raw_forward_ms": raw,
                             "engine_forward_ms": lambda _: predictor.logits(x)}, paths)
    return ms


def bench_folder(predictors: dict, model, folder: Path, n: int, size: int, bs: int = 32,
                 rounds: int = 3) -> dict[str, float]:
    """A folder at batch `bs`: each predictor's images/s (decode included) vs the raw batched torch forward on
    ready tensors. All take turns for `rounds` rounds; each reports its median round.

    `predictors`: {name: (predictor, decode workers or None for the default)}.
    """
    x = torch.randn(bs, 3, size, size)
    n_raw = max(1, n // bs) * bs

    def pred_round(p, workers) -> float:
        t = time.perf_counter()
        rows = list(p.predict_paths([folder], bs=bs, workers=workers))
        assert len(rows) == n and all(r.ok for r in rows)
        return n / (time.perf_counter() - t)

    def raw_round() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            for _ in range(n_raw // bs):
                model(x)
            return n_raw / (time.perf_counter() - t)

    fns = {f"{k}_img_s": (lambda p=p, w=w: pred_round(p, w)) for k, (p, w) in predictors.items()}
    fns["raw_forward_img_s"] = raw_round
    for fn in fns.values():  # warm up
        fn()
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            rates[k].append(fn())
    return {k: statistics.median(v) for k, v in rates.items()}


def fused_channels_last(model: torch.nn.Module):
    """The torch-side options: conv+BN folded (torch.fx), channels_last; returns a forward function."""
    import copy

    from torch.fx.experimental.optimization import fuse

    fused = fuse(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)
    return lambda x: fused(x.contiguous(memory_format=torch.channels_last))


def bench_onnx(predictor, torch_p, bs: int = 32, reps: int = 5) -> dict[str, float]:
    """Forward pass only, on the same preprocessed input: onnxruntime (petclf's session) vs torch vs torch with
    conv+BN folding and channels_last, one image and a batch; interleaved."""
    model = torch_p.model
    fcl = fused_channels_last(model)
    out = {}
    for n in (1, bs):
        x = torch.randn(n, 3, torch_p.pre.size, torch_p.pre.size)
        with torch.inference_mode():
            out["fused_cl_max_abs_diff"] = max(out.get("fused_cl_max_abs_diff", 0.0),
                                               float((fcl(x) - model(x)).abs().max()))
        out["onnx_max_abs_diff"] = max(out.get("onnx_max_abs_diff", 0.0),
                                       float((predictor.logits(x) - torch_p.logits(x)).abs().max()))

        def fused(x):
            with torch.inference_mode():
                return fcl(x)

        ms = interleaved_ms({"torch": torch_p.logits, "onnx": predictor.logits, "torch_fused_cl": fused},
                            [x] * (reps * (4 if n == 1 else 1)), warmup=2, reps=1)
        out.update({f"{k}_b{n}_ms": v for k, v in ms.items()})
    return out


# ---------------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, all threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(cmd: list[str], port: int, log: Path, timeout: float = 240) -> subprocess.Popen:
    """Start a server process and wait until it answers on 127.0.0.1:`port`."""
    import httpx

    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start within {timeout:.0f} s: {log.read_text()[-2000:]}")


def load_test(url: str, api_name: str, paths: list[Path], callers: int, duration: float,
              server_pid: int | None = None) -> dict[str, float]:
    """`callers` threads, each with its own gradio_client, calling `api_name` back to back for `duration` s.

    With `server_pid`, also the CPU time per request spent by the server and by the callers (this process).
    """
    from gradio_client import Client, handle_file

    clients = [Client(url, verbose=False, ssl_verify=False) for _ in range(callers)]
    for c in clients[:2]:
        c.predict(handle_file(str(paths[0])), api_name=api_name)  # warm up
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def caller(i: int) -> None:
        k = i
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                clients[i].predict(handle_file(str(paths[k % len(paths)])), api_name=api_name)
                with lock:
                    lat.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - counted, not fatal
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
            k += callers

    t0, cpu0 = time.monotonic(), time.process_time()
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(callers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(duration + 120)
    wall, n = time.monotonic() - t0, max(len(lat), 1)
    lat_ms = np.array(lat) * 1000
    res = {"requests": len(lat), "req_s": len(lat) / wall, "p50_ms": float(np.percentile(lat_ms, 50)),
           "p99_ms": float(np.percentile(lat_ms, 99)), "errors": len(errors),
           "first_error": errors[0] if errors else "", "client_cpu_ms_per_req": (time.process_time() - cpu0) * 1000 / n}
    if server_pid:
        res["server_cpu_ms_per_req"] = (cpu_seconds(server_pid) - server0) * 1000 / n
    return res


def bench_server(name: str, cmd: list[str], port: int, api_name: str, paths: list[Path], callers: int,
                 duration: float, workdir: Path, warmup: float = 10.0) -> dict[str, float]:
    """Start one server, warm it with the same load for `warmup` s, then load it and record memory before/after."""
    proc = start_server(cmd, port, workdir / f"{name}.log")
    try:
        url = f"http://127.0.0.1:{port}/"
        load_test(url, api_name, paths, callers, warmup)  # same load, not counted: memory reaches steady state
        before = rss_mb(proc.pid)
        res = load_test(url, api_name, paths, callers, duration, server_pid=proc.pid)
        res.update(rss_before_mb=before, rss_after_mb=rss_mb(proc.pid))
        return res
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it does not exit within 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------------------------------------------- report


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(r: dict) -> str:
    """The markdown tables for BENCHMARKS.md (the server rows only when the servers ran)."""
    s, f, o, be = r["single"], r["folder"], r["onnx"], r["backend"]
    base = s["raw_forward_ms"] + s["preprocess_ms"]
    speedup, speedup_t = s["fastai_predict_ms"] / s["predictor_ms"], s["fastai_predict_ms"] / s["predictor_torch_ms"]
    ratio, ratio_t = s["predictor_ms"] / base, s["predictor_torch_ms"] / base
    lines = [
        f"| measure ({r['arch']}, {r['size']} px, {r['threads']} threads) | value | goal | met |",
        "|---|---|---|---|",
        f"| one image: petclf predictor, default backend (`{be}`) | {s['predictor_ms']:.1f} ms | | |",
        f"| one image: petclf predictor, `backend='torch'` | {s['predictor_torch_ms']:.1f} ms | | |",
        f"| one image: fastai `learn.predict` (torch) | {s['fastai_predict_ms']:.1f} ms | | |",
        f"| one image: raw torch forward (ready tensor) + preprocessing | {s['raw_forward_ms']:.1f} + "
        f"{s['preprocess_ms']:.1f} = {base:.1f} ms | | |",
        f"| `learn.predict` / predictor (`{be}`) | {speedup:.2f} x | >= 1.7 x | {_met(speedup >= 1.7)} |",
        f"| `learn.predict` / bare `{be}` forward on a ready tensor (the most any `{be}` predictor could reach) | "
        f"{s['fastai_predict_ms'] / s['engine_forward_ms']:.2f} x | report | |",
        f"| `learn.predict` / predictor (`torch`) | {speedup_t:.2f} x | >= 1.7 x | {_met(speedup_t >= 1.7)} |",
        f"| predictor (`{be}`) / (raw torch forward + preprocessing) | {ratio:.2f} x | <= 1.15 x | "
        f"{_met(ratio <= 1.15)} |",
        f"| predictor (`torch`) / (raw torch forward + preprocessing) | {ratio_t:.2f} x | <= 1.15 x | "
        f"{_met(ratio_t <= 1.15)} |",
        f"| folder of {r['n_images']} at bs 32, raw batched torch forward (ready tensors) | "
        f"{f['raw_forward_img_s']:.1f} img/s | | |",
    ]
    for k, label in (("predictor", f"predictor (`{be}`), 2 decode threads (default)"),
                     ("predictor_w1", f"predictor (`{be}`), 1 decode thread"),
                     ("predictor_torch", "predictor (`torch`), 2 decode threads")):
        if f"{k}_img_s" in f:
            q = f[f"{k}_img_s"] / f["raw_forward_img_s"]
            lines.append(f"| folder: {label}, decoding included | {f[f'{k}_img_s']:.1f} img/s = {q:.2f} x raw | "
                         f">= 0.9 x | {_met(q >= 0.9)} |")
    for n in (1, 32):
        lines.append(f"| forward only, batch {n}: onnxruntime / torch fused+channels_last / torch | "
                     f"{o[f'onnx_b{n}_ms']:.1f} / {o[f'torch_fused_cl_b{n}_ms']:.1f} / {o[f'torch_b{n}_ms']:.1f} ms "
                     f"= {o[f'onnx_b{n}_ms'] / o[f'torch_b{n}_ms']:.2f} / "
                     f"{o[f'torch_fused_cl_b{n}_ms'] / o[f'torch_b{n}_ms']:.2f} / 1 | report | |")
    lines.append(f"| max logit diff vs torch: onnxruntime / fused+channels_last | {o['onnx_max_abs_diff']:.1e} / "
                 f"{o['fused_cl_max_abs_diff']:.1e} | | |")
    if "petclf" not in r:
        return "\n".join(lines)
    sp, pc = r["space"], r["petclf"]
    sb = r["serve_backend"] if r["serve_backend"] != "auto" else f"auto -> {be}"
    for key, label in (("space", "typical fastai Space (torch)"), ("petclf", f"petclf serve (`{sb}`)")):
        d = r[key]
        lines.append(f"| demo, {r['callers']} callers x {r['duration']:.0f} s: {label} | {d['req_s']:.1f} req/s, "
                     f"p50 {d['p50_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms, {d['errors']} errors, "
                     f"RSS {d['rss_before_mb']:.0f} -> {d['rss_after_mb']:.0f} MB; CPU per request: server "
                     f"{d['server_cpu_ms_per_req']:.0f} ms, callers {d['client_cpu_ms_per_req']:.0f} ms | | |")
    growth = pc["rss_after_mb"] - pc["rss_before_mb"]
    lines += [
        f"| petclf / Space requests/s | {pc['req_s'] / sp['req_s']:.2f} x | >= 2 x | "
        f"{_met(pc['req_s'] >= 2 * sp['req_s'])} |",
        f"| petclf p99 / Space p99 | {pc['p99_ms'] / sp['p99_ms']:.2f} | <= 0.5 | "
        f"{_met(pc['p99_ms'] <= 0.5 * sp['p99_ms'])} |",
        f"| petclf errors; memory growth under load | {pc['errors']}; {growth:+.0f} MB | 0; < 50 MB | "
        f"{_met(pc['errors'] == 0 and growth < 50)} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet34")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--presize", type=int, default=460)
    ap.add_argument("--images", type=int, default=128, help="photos in the benchmark folder")
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load per server")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of the same load before measuring")
    ap.add_argument("--skip-servers", action="store_true")
    ap.add_argument("--serve-backend", default="auto", help="`petclf serve --backend` (auto picks onnxruntime)")
    ap.add_argument("--out", type=Path, help="also write the raw numbers as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (photos, models, server logs)")
    args = ap.parse_args(argv)

    from petclf.predict import load_model
    from petclf.synth import synth_classes

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        classes = sorted(synth_classes(37))
        paths = make_photos(work / "photos", args.images, classes)
        learn, mean, std = make_learner(work / "photos", args.arch, args.size, args.presize)
        bundle, pkl = export_both(learn, args.arch, args.size, args.presize, mean, std, work)
        predictor = load_model(bundle)  # the default: onnxruntime on CPU when model.onnx verifies
        torch_p = load_model(bundle, backend="torch")
        r = {"arch": args.arch, "size": args.size, "threads": torch.get_num_threads(), "n_images": args.images,
             "callers": args.callers, "duration": args.duration, "backend": predictor.backend,
             "load_avg_start": os.getloadavg()}
        print(f"single image (default backend: {predictor.backend}) ...", flush=True)
        r["single"] = bench_single(predictor, torch_p, learn, paths[:20])
        print(r["single"], "\nfolder ...", flush=True)
        r["folder"] = bench_folder({"predictor": (predictor, None), "predictor_w1": (predictor, 1),
                                    "predictor_torch": (torch_p, None)}, torch_p.model, work / "photos",
                                   args.images, args.size)
        print(r["folder"], "\nforward only ...", flush=True)
        r["onnx"] = bench_onnx(predictor, torch_p)
        print(r["onnx"], flush=True)
        r["load_avg_mid"] = os.getloadavg()
        if not args.skip_servers:
            del learn, predictor, torch_p
            r["serve_backend"] = args.serve_backend
            space = work / "space_app.py"
            space.write_text(SPACE_APP)
            port = free_port()
            print("fastai Space under load ...", flush=True)
            r["space"] = bench_server("space", [sys.executable, str(space), str(pkl), str(port)], port, "/predict",
                                      paths, args.callers, args.duration, work, args.warmup)
            print(r["space"], "\npetclf serve under load ...", flush=True)
            port = free_port()
            serve = [sys.executable, "-m", "petclf", "serve", "--model", str(bundle), "--port", str(port),
                     "--backend", args.serve_backend]
            r["petclf"] = bench_server("petclf", serve, port, "/classify", paths, args.callers, args.duration, work,
                                       args.warmup)
            print(r["petclf"], flush=True)
        r["load_avg_end"] = os.getloadavg()
        print("\n" + table(r))
        print("load average (1, 5, 15 min) at start / after the predictor part / end:",
              *(" ".join(f"{v:.2f}" for v in r[k]) for k in ("load_avg_start", "load_avg_mid", "load_avg_end")),
              sep="\n  ")
        r["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if args.out:
            args.out.write_text(json.dumps(r, indent=1))
        return r
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
