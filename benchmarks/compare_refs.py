"""Before and after: `bench_predict` and `bench_small_data` on two git refs, taking turns, figures side by side.

    .venv/bin/python -m benchmarks.compare_refs main HEAD                   # 2 rounds: old, new, old, new
    .venv/bin/python -m benchmarks.compare_refs 9d3f1ce HEAD --rounds 1 --predict-args="--skip-servers --images 48" \\
        --small-args="--recipes probe"                                      # a quick check that it runs

Each ref is checked out as a temporary `git worktree` (detached, under the system's temp folder, removed at the
end) and each bench runs there as `python -m benchmarks.<name>` with PYTHONPATH at that worktree, so the ref's own
petclf and its own copy of the bench are measured. Defaults, as BENCHMARKS.md runs them:
`bench_predict --duration 10 --warmup 5 --skip-servers` and `bench_small_data --data DATA`, DATA an absolute path
(`--data`, default `../shared/pets-dev` from the repository root; a worktree has no `../shared`). The interpreter
is $PY, else the repository's .venv, else this one. The refs take turns round by round (old, new, old, new), so a
change in the machine's load hits both; the table gives every run, the load average with each, and nothing is
averaged away: compare within a row, and rerun on a quiet machine before calling a difference real.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, load_avg

PREDICT_ARGS = "--duration 10 --warmup 5 --skip-servers"
RECIPE_LINE = re.compile(r"^(probe|probe alone|avg probe|old probe)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s")


def interpreter() -> str:
    """$PY, else the repository's .venv python, else the one running this."""
    venv = ROOT / ".venv" / "bin" / "python"
    return os.environ.get("PY") or (str(venv) if venv.exists() else sys.executable)


def add_worktree(ref: str, parent: Path, name: str) -> Path:
    """A detached worktree of `ref` at parent/name (the commit is resolved first, so a typo fails here)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{ref}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    path = parent / name
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), sha], check=True)
    return path


def remove_worktree(path: Path) -> None:
    """Remove one worktree this run made, and its bookkeeping in .git."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)


def run_bench(tree: Path, module: str, args: list[str], log: Path) -> str:
    """`python -m benchmarks.<module> ARGS` in `tree` with its petclf; the output, also kept in `log`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [interpreter(), "-m", f"benchmarks.{module}", *args]
    print(f"$ (cd {tree} && {shlex.join(cmd)})", flush=True)
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"{module} failed in {tree} (exit {p.returncode}); its output: {log}\n{p.stderr[-2000:]}")
    return p.stdout


def predict_figures(r: dict) -> dict[str, float]:
    """bench_predict's main figures from its --out JSON (the ratios its goals are set on, and what they divide)."""
    s, f, o = r.get("single", {}), r.get("folder", {}), r.get("onnx", {})
    fig = {"one image: predictor ms": s.get("predictor_ms"), "one image: learn.predict ms": s.get("fastai_predict_ms"),
           "one image: preprocessing ms": s.get("preprocess_ms"), "one image: raw torch forward ms":
           s.get("raw_forward_ms"), "folder: predictor img/s": f.get("predictor_img_s"),
           "folder: raw batched torch img/s": f.get("raw_forward_img_s"),
           "folder: predictor (torch) img/s": f.get("predictor_torch_img_s"),
           "forward b1: onnxruntime ms": o.get("onnx_b1_ms"), "forward b1: torch ms": o.get("torch_b1_ms")}
    if s.get("predictor_ms"):
        fig["learn.predict / predictor (goal >= 1.7)"] = s["fastai_predict_ms"] / s["predictor_ms"]
        fig["predictor / (raw + prep) (goal <= 1.15)"] = s["predictor_ms"] / (s["raw_forward_ms"] + s["preprocess_ms"])
    if f.get("raw_forward_img_s"):
        fig["folder: predictor / raw (goal >= 0.9)"] = f["predictor_img_s"] / f["raw_forward_img_s"]
    for key in ("space", "petclf"):  # only when the servers ran
        if key in r:
            fig[f"demo {key}: req/s"], fig[f"demo {key}: p99 ms"] = r[key]["req_s"], r[key]["p99_ms"]
    return fig


def small_data_figures(out: str) -> dict[str, float]:
    """bench_small_data's summary lines: each recipe's mean error, feature seconds and fit CPU seconds."""
    fig = {}
    for line in out.splitlines():
        m = RECIPE_LINE.match(line)
        if m:
            name, err, _std, feat_s, fit_s = m.groups()
            fig.update({f"{name}: error": float(err), f"{name}: features s": float(feat_s),
                        f"{name}: fits CPU s": float(fit_s)})
    total = re.search(r"^total (\d+) s", out, re.M)
    if total:
        fig["small data: total s"] = float(total.group(1))
    return fig


def one_run(tree: Path, work: Path, tag: str, args) -> dict[str, float | str]:
    """Both benches once in `tree`: their figures, and the load average before each."""
    fig: dict[str, float | str] = {"load before predict": load_avg()}
    out_json = work / f"predict_{tag}.json"
    run_bench(tree, "bench_predict", [*shlex.split(args.predict_args), "--out", str(out_json)],
              work / f"predict_{tag}.log")
    fig.update(predict_figures(json.loads(out_json.read_text())))
    fig["load before small data"] = load_avg()
    out = run_bench(tree, "bench_small_data", ["--data", str(args.data), *shlex.split(args.small_args)],
                    work / f"small_{tag}.log")
    fig.update(small_data_figures(out))
    return fig


def cell(v) -> str:
    """A table cell: 4 significant figures for numbers, text as is, '-' when a run lacks the figure."""
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def table(runs: list[tuple[str, dict]]) -> str:
    """One markdown table: a row per figure, a column per run in the order they ran."""
    names = list(dict.fromkeys(k for _, fig in runs for k in fig))
    lines = ["| figure | " + " | ".join(tag for tag, _ in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(cell(fig.get(n)) for _, fig in runs) + " |" for n in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="the ref before (a commit, branch or tag)")
    ap.add_argument("new", help="the ref after")
    ap.add_argument("--rounds", type=int, default=2, help="old-then-new rounds (default 2: old, new, old, new)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "pets-dev",
                    help="bench_small_data's photos (default: ../shared/pets-dev from the repository root)")
    ap.add_argument("--predict-args", default=PREDICT_ARGS, help=f"bench_predict's options (default: {PREDICT_ARGS})")
    ap.add_argument("--small-args", default="", help="more bench_small_data options, e.g. \"--recipes probe\"")
    ap.add_argument("--out", type=Path, help="also write every run's figures as JSON")
    args = ap.parse_args(argv)
    args.data = args.data.resolve()
    if not args.data.is_dir():
        ap.error(f"no photos at {args.data} (--data)")
    work = Path(tempfile.mkdtemp(prefix="compare_refs_"))
    trees: dict[str, Path] = {}
    t0 = time.monotonic()
    try:
        for side, ref in (("old", args.old), ("new", args.new)):
            trees[side] = add_worktree(ref, work, side)
        runs = []
        for r in range(1, args.rounds + 1):
            for side, ref in (("old", args.old), ("new", args.new)):
                tag = f"{side} {r} ({ref})"
                print(f"\n== {tag}", flush=True)
                runs.append((tag, one_run(trees[side], work, f"{side}{r}", args)))
        print(f"\n{table(runs)}\n\n{time.monotonic() - t0:.0f} s in all; logs in {work}")
        if args.out:
            args.out.write_text(json.dumps(dict(runs), indent=1))
    finally:
        for path in trees.values():
            remove_worktree(path)


if __name__ == "__main__":
    main()
