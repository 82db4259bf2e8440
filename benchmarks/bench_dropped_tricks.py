"""The two preprocessing tricks the redesign dropped, re-measured side by side against what a user waits for.

    .venv/bin/python -m benchmarks.bench_dropped_tricks                      # ~2 minutes on 2 cores
    .venv/bin/python -m benchmarks.bench_dropped_tricks --baseline 500ae75 --reps 300

(i) one image's item resize split in bands over a spare core (`valid_resize_bands`), and (ii) the column pass
moving each pixel's 3 floats as one 12-byte void item (`valid_batch_resize`). The baseline's `petclf.predict` is
imported from `git archive REV petclf` next to this tree's petclf, with its own `petclf.image` and the rest of its
package (`load_baseline_predict`). Contenders take turns call by call: the baseline's `Preprocess.one` with a pool
(as its `Predictor.predict` ran) and without, which isolates (i); this tree's `Preprocess.one`; the two batch steps
alone on the same presized array, which isolates (ii).

This tree's one-image `predict` (resnet34, onnxruntime) is the figure a trick has to move by `KEEP_ABOVE` to be
worth its code. It is timed on its own, before and after the contenders, and the faster of the two is kept: taking
turns with the preprocessing calls slowed it (measured: 24 ms alone, 34 ms alternating with `Preprocess.one`), and
the smaller figure makes each trick's share the larger, so the decision leans towards keeping it.
"""

from __future__ import annotations

import argparse
import functools
import importlib.machinery
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, cat_photo, finish_run, interleaved_ms, load_avg, make_bundle

KEEP_ABOVE = 0.05  # a trick is kept when it saves at least this share of the one-image prediction time
BASELINE = "500ae75"  # the commit before the redesign, the last with both tricks
PHOTOS = {"500x375": (500, 375), "4000x3000": (4000, 3000)}  # a Pets photo and a 12 MP phone photo


def _pop_petclf() -> dict:
    """Take every `petclf` module out of sys.modules; returns them."""
    return {k: sys.modules.pop(k) for k in list(sys.modules) if k == "petclf" or k.startswith("petclf.")}


def load_baseline_predict(rev: str, work: Path):
    """The baseline's `petclf.predict` (from `git archive REV petclf`), imported beside this tree's petclf.

    While it imports, the baseline's package stands in for this tree's in sys.modules, so it gets its own
    `petclf.image`, `petclf.errors` and `petclf.config`; afterwards this tree's modules are put back. The functions
    timed here resolve their names in their own module, so they keep running the baseline's code.
    """
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "petclf"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(work / "baseline", filter="data")
    mine = _pop_petclf()
    try:
        spec = importlib.machinery.PathFinder.find_spec("petclf", [str(work / "baseline")])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["petclf"] = pkg
        spec.loader.exec_module(pkg)
        return importlib.import_module("petclf.predict")
    finally:
        _pop_petclf()
        sys.modules.update(mine)


def contenders(old, predictor, pool: ThreadPoolExecutor, parts: int) -> dict[str, Callable]:
    """{name: fn(photo path)}: the preprocessing variants and the two batch steps alone."""
    from petclf.image import load_rgb
    from petclf.preprocess import valid_resize

    new_pre, old_pre = predictor.pre, old.Preprocess.from_manifest(predictor.manifest)

    @functools.lru_cache(maxsize=4)
    def presized(path: Path) -> np.ndarray:
        """The uint8 1 x presize x presize x 3 array both batch steps start from, made once per photo."""
        return np.asarray(valid_resize(load_rgb(path), new_pre.presize))[None]

    return {"old_one_banded": lambda p: old_pre.one(p, pool, parts),  # as the baseline's Predictor.predict ran it
            "old_one_whole": old_pre.one, "new_one": new_pre.one,
            "old_batch_void": lambda p: old_pre.batch(presized(p)), "new_batch": lambda p: new_pre.batch(presized(p))}


def agreement(fns: dict[str, Callable], path: Path) -> dict[str, float]:
    """Largest difference of each old variant's output from this tree's."""
    ref, ref_batch = fns["new_one"](path), fns["new_batch"](path)
    return {"old_one_banded": float(np.abs(np.asarray(fns["old_one_banded"](path)) - ref).max()),
            "old_one_whole": float(np.abs(np.asarray(fns["old_one_whole"](path)) - ref).max()),
            "old_batch_void": float(np.abs(np.asarray(fns["old_batch_void"](path)) - ref_batch).max())}


def savings(ms: dict[str, float]) -> dict[str, float]:
    """ms each trick saved on one photo (negative: it cost time)."""
    return {"bands": ms["old_one_whole"] - ms["old_one_banded"], "void": ms["new_batch"] - ms["old_batch_void"]}


def decisions(r: dict) -> str:
    """The markdown tables for BENCHMARKS.md: each trick's saving against the one-image prediction it sits in."""
    lines = ["| photo | `predict`, this tree (before / after) | `one`: old banded / old whole / new | (i) bands save | "
             "of `predict` | batch step: old void / new | (ii) void item saves | of `predict` |",
             "|---|---|---|---|---|---|---|---|"]
    share = {"bands": [], "void": []}
    for name, ms in r["ms"].items():
        pred, save = ms["new_predict"], savings(ms)
        for t in share:
            share[t].append(save[t] / pred)
        before, after = ms["predict_alone_ms"]
        lines.append(f"| {name} | {pred:.1f} ms ({before:.1f} / {after:.1f}) | {ms['old_one_banded']:.2f} / "
                     f"{ms['old_one_whole']:.2f} / {ms['new_one']:.2f} ms | {save['bands']:+.2f} ms | "
                     f"{save['bands'] / pred:+.1%} | "
                     f"{ms['old_batch_void']:.2f} / {ms['new_batch']:.2f} ms | {save['void']:+.2f} ms | "
                     f"{save['void'] / pred:+.1%} |")
    lines += ["", f"| trick | most it saved, share of `predict` | kept when >= {KEEP_ABOVE:.0%} |", "|---|---|---|"]
    for t, label in (("bands", "(i) one image's item resize in bands"), ("void", "(ii) 12-byte void-item transpose")):
        best = max(share[t])
        lines.append(f"| {label} | {best:+.1%} | {'keep' if best >= KEEP_ABOVE else 'dropped'} |")
    return "\n".join(lines)


def time_photo(fns: dict[str, Callable], predictor, path: Path, reps: int) -> dict:
    """Median ms of each contender on one photo, taking turns, and of `predict` alone before and after them."""
    def alone() -> float:
        return interleaved_ms({"predict": predictor.predict}, [path] * reps, warmup=2, reps=1)["predict"]

    before = alone()
    ms = interleaved_ms(fns, [path] * reps, warmup=2, reps=1)
    after = alone()
    return {**ms, "predict_alone_ms": [before, after], "new_predict": min(before, after)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision with the tricks")
    ap.add_argument("--reps", type=int, default=200, help="calls per contender on the Pets-sized photo")
    ap.add_argument("--reps-large", type=int, default=40, help="calls per contender on the 12 MP photo")
    ap.add_argument("--out", type=Path, help="also write the raw numbers as JSON")
    args = ap.parse_args(argv)

    import torch

    from petclf.predict import load_model

    work = Path(tempfile.mkdtemp(prefix="bench_tricks_"))
    try:
        old = load_baseline_predict(args.baseline, work)
        bundle = make_bundle(work / "bundle")
        predictor = load_model(bundle)
        parts = old.resize_bands(predictor.pre.presize, torch.get_num_threads())  # as the baseline's Predictor
        r = {"baseline": args.baseline, "backend": predictor.backend, "bands": parts, "load_avg_start": load_avg(),
             "ms": {}, "max_abs_diff": {}}
        with ThreadPoolExecutor(max(parts - 1, 1), thread_name_prefix="bench-resize") as pool:
            fns = contenders(old, predictor, pool, parts)
            for name, size in PHOTOS.items():
                path = cat_photo(work / f"{name}.jpg", size)
                r["max_abs_diff"][name] = agreement(fns, path)
                reps = args.reps if size[0] * size[1] < 10**6 else args.reps_large
                r["ms"][name] = time_photo(fns, predictor, path, reps)
                print(name, json.dumps(r["ms"][name]), flush=True)
        print(f"\n{parts} bands (baseline's choice on {torch.get_num_threads()} threads); predictor backend "
              f"{predictor.backend}; largest output difference from this tree's Preprocess.one: "
              f"{json.dumps(r['max_abs_diff'])}\n")
        print(decisions(r))
        return finish_run(r, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
