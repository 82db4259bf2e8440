"""Prediction and demo-server speed: petclf's predictor vs fastai's `learn.predict` vs the raw network, and the demo
under load vs a typical fastai Space, on the same model (random weights: no hub access needed).

    .venv/bin/python -m benchmarks.bench_predict                     # resnet34 at 224 px, ~5 minutes on 2 cores
    .venv/bin/python -m benchmarks.bench_predict --duration 10 --arch resnet18 --out bench.json   # quicker

Run it from the repository root. All ratios come from one run on one machine, so they compare like with like even
when absolute times drift. The Space is `benchmarks/fastai_space.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import free_port, interleaved_ms, load_test, make_photos, rss_mb, start_server, stop_server

warnings.filterwarnings("ignore")

# the prediction goals (BENCHMARKS.md, "Prediction"); the tables below judge every run against these
GOAL_ONE_IMAGE = 1.7  # learn.predict / predictor, one image: at least
GOAL_OVERHEAD = 1.15  # predictor / (raw torch forward + preprocessing), one image: at most
GOAL_FOLDER = 0.9  # folder images/s / raw batched torch forward images/s: at least
GOAL_DEMO_RPS = 2.0  # petclf serve requests/s / the Space's: at least
GOAL_DEMO_P99 = 0.5  # petclf serve p99 latency / the Space's: at most
GOAL_DEMO_ERRORS = 0  # failed requests under load: at most
GOAL_DEMO_GROWTH_MB = 50  # server memory growth under load, MB: below


# ---------------------------------------------------------------------------------------------------- setup


def make_learner(folder: Path, arch: str, size: int, presize: int):
    """A fastai Learner (random weights) over the photo folder, exactly as petclf trains one."""
    import fastai.callback.all  # noqa: F401 - patches Learner
    from fastai.vision.learner import vision_learner

    from petclf.data import load_data, make_dataloaders
    from petclf.model import norm_stats

    mean, std = norm_stats(arch)
    dls = make_dataloaders(load_data(folder, valid_pct=0.5, use_cache=False), bs=32, size=size, presize=presize,
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


def bench_single(predictor, torch_p, learn, paths: list[Path]) -> dict[str, float]:
    """One image at a time: petclf's default predictor and its torch backend, learn.predict, preprocessing alone,
    the raw torch forward on a ready tensor (the same eval-mode network for every torch contender), and the default
    backend's bare forward on that tensor (what no predictor on that engine can beat)."""
    model = torch_p.model
    x = torch_p.preprocess([paths[0]])  # numpy, as every predictor takes it
    xt = torch.from_numpy(x)

    def raw(_):
        with torch.inference_mode():
            model(xt)

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
    rng = np.random.default_rng(0)
    for n in (1, bs):
        x = rng.standard_normal((n, 3, torch_p.pre.size, torch_p.pre.size), dtype=np.float32)
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            out["fused_cl_max_abs_diff"] = max(out.get("fused_cl_max_abs_diff", 0.0),
                                               float((fcl(xt) - model(xt)).abs().max()))
        out["onnx_max_abs_diff"] = max(out.get("onnx_max_abs_diff", 0.0),
                                       float(np.abs(predictor.logits(x) - torch_p.logits(x)).max()))

        def fused(x):
            with torch.inference_mode():
                return fcl(torch.from_numpy(x))

        ms = interleaved_ms({"torch": torch_p.logits, "onnx": predictor.logits, "torch_fused_cl": fused},
                            [x] * (reps * (4 if n == 1 else 1)), warmup=2, reps=1)
        out.update({f"{k}_b{n}_ms": v for k, v in ms.items()})
    return out


# ---------------------------------------------------------------------------------------------------- servers


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


# ---------------------------------------------------------------------------------------------------- report


def _met(ok: bool) -> str:
    """A table cell for whether a goal was met (a miss in bold)."""
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
        f"| `learn.predict` / predictor (`{be}`) | {speedup:.2f} x | >= {GOAL_ONE_IMAGE} x | "
        f"{_met(speedup >= GOAL_ONE_IMAGE)} |",
        f"| `learn.predict` / bare `{be}` forward on a ready tensor (the most any `{be}` predictor could reach) | "
        f"{s['fastai_predict_ms'] / s['engine_forward_ms']:.2f} x | report | |",
        f"| `learn.predict` / predictor (`torch`) | {speedup_t:.2f} x | >= {GOAL_ONE_IMAGE} x | "
        f"{_met(speedup_t >= GOAL_ONE_IMAGE)} |",
        f"| predictor (`{be}`) / (raw torch forward + preprocessing) | {ratio:.2f} x | <= {GOAL_OVERHEAD} x | "
        f"{_met(ratio <= GOAL_OVERHEAD)} |",
        f"| predictor (`torch`) / (raw torch forward + preprocessing) | {ratio_t:.2f} x | <= {GOAL_OVERHEAD} x | "
        f"{_met(ratio_t <= GOAL_OVERHEAD)} |",
        f"| folder of {r['n_images']} at bs 32, raw batched torch forward (ready tensors) | "
        f"{f['raw_forward_img_s']:.1f} img/s | | |",
    ]
    for k, label in (("predictor", f"predictor (`{be}`), 2 decode threads (default)"),
                     ("predictor_w1", f"predictor (`{be}`), 1 decode thread"),
                     ("predictor_torch", "predictor (`torch`), 2 decode threads")):
        if f"{k}_img_s" in f:
            q = f[f"{k}_img_s"] / f["raw_forward_img_s"]
            lines.append(f"| folder: {label}, decoding included | {f[f'{k}_img_s']:.1f} img/s = {q:.2f} x raw | "
                         f">= {GOAL_FOLDER} x | {_met(q >= GOAL_FOLDER)} |")
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
        f"| petclf / Space requests/s | {pc['req_s'] / sp['req_s']:.2f} x | >= {GOAL_DEMO_RPS} x | "
        f"{_met(pc['req_s'] >= GOAL_DEMO_RPS * sp['req_s'])} |",
        f"| petclf p99 / Space p99 | {pc['p99_ms'] / sp['p99_ms']:.2f} | <= {GOAL_DEMO_P99} | "
        f"{_met(pc['p99_ms'] <= GOAL_DEMO_P99 * sp['p99_ms'])} |",
        f"| petclf errors; memory growth under load | {pc['errors']}; {growth:+.0f} MB | "
        f"<= {GOAL_DEMO_ERRORS}; < {GOAL_DEMO_GROWTH_MB} MB | "
        f"{_met(pc['errors'] <= GOAL_DEMO_ERRORS and growth < GOAL_DEMO_GROWTH_MB)} |",
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
            port = free_port()
            print("fastai Space under load ...", flush=True)
            space = [sys.executable, "-m", "benchmarks.fastai_space", str(pkl), str(port)]  # this tree's petclf
            r["space"] = bench_server("space", space, port, "/predict",
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
