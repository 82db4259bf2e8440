"""Cold error paths: how long `petclf` takes to refuse a plain mistake, this tree and a baseline in turns.

    .venv/bin/python -m benchmarks.bench_cold_errors                  # 3 runs each against main, ~2 min idle
    .venv/bin/python -m benchmarks.bench_cold_errors --runs 5 --baseline main

Each command is a user mistake that needs no model and no data (a missing folder, a port out of range, a
file that is not there): it should be one line, exit 2, at once, before torch, fastai or Gradio load. The
baseline is a temporary `git worktree` of `--baseline`, run with PYTHONPATH pointing at it; `python -c pass`
is timed beside them (the interpreter's own start). Printed: the median wall time of each, start to exit.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_cold_start import petclf_cmd, tree_env
from benchmarks.common import ROOT, finish_run, git_worktree, load_avg

GOAL_S = 1.5  # each refusal, idle machine, process start to exit: at most
BASELINE = "main"


def mistakes(tmp: Path) -> dict[str, list[str]]:
    """The commands, by name: each refers to something that is not there or cannot be."""
    (tmp / "not-a-model").mkdir(exist_ok=True)
    return {"train --data MISSING": ["train", "--data", str(tmp / "missing")],
            "serve --model MISSING": ["serve", "--model", str(tmp / "missing")],
            "report --model NOT_A_MODEL": ["report", "--model", str(tmp / "not-a-model")],
            "serve --port 99999": ["serve", "--port", "99999"],
            "predict missing.jpg": ["predict", str(tmp / "missing.jpg"), "--model", str(tmp / "missing")]}


def run_once(cmd: list[str], tree: Path | None, cwd: Path) -> tuple[float, int, str]:
    """(wall seconds, exit code, stderr) of one run."""
    t = time.perf_counter()
    p = subprocess.run(cmd, env=tree_env(tree), cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t, p.returncode, p.stderr.strip()


def bench(trees: dict[str, Path], runs: int, tmp: Path) -> dict:
    """Median wall time of every mistake under every tree, the trees taking turns; what each said kept."""
    cmds = mistakes(tmp)
    times: dict[str, dict[str, list[float]]] = {t: {m: [] for m in cmds} for t in trees}
    said: dict[str, dict[str, tuple[int, str]]] = {t: {} for t in trees}
    python = []
    for r in range(runs):
        python.append(run_once([sys.executable, "-c", "pass"], None, tmp)[0])
        for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
            for m, args in cmds.items():
                wall, code, err = run_once(petclf_cmd(*args), trees[name], tmp)
                times[name][m].append(wall)
                said[name][m] = (code, err.splitlines()[-1] if err else "")
    return {"python_s": statistics.median(python),
            "median_s": {t: {m: statistics.median(v) for m, v in ms.items()} for t, ms in times.items()},
            "said": said}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each command per tree")
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    ap.add_argument("--out", type=Path, help="also write the raw numbers as JSON")
    args = ap.parse_args(argv)
    start = load_avg()
    with tempfile.TemporaryDirectory() as tmp, git_worktree(args.baseline) as base:
        r = bench({"this tree": ROOT, args.baseline: base}, args.runs, Path(tmp))
    r["load_avg_start"], r["goal_s"] = start, GOAL_S
    print(f"python -c pass: {r['python_s']:.2f} s (median of {args.runs})")
    print(f"{'mistake':<28}{'this tree':>11}{args.baseline:>11}   what this tree said (exit code)")
    for m, s in r["median_s"]["this tree"].items():
        code, line = r["said"]["this tree"][m]
        print(f"{m:<28}{s:>10.2f}s{r['median_s'][args.baseline][m]:>10.2f}s   {line[:70]} ({code})")
    return finish_run(r, args.out)


if __name__ == "__main__":
    main()
