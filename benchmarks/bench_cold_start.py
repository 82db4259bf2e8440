"""Cold start of `petclf predict one.jpg`: process start to exit, this tree against a baseline revision, taking turns.

    .venv/bin/python -m benchmarks.bench_cold_start                         # 7 runs each against 500ae75, ~2 min
    .venv/bin/python -m benchmarks.bench_cold_start --runs 11 --baseline main

One bundle (resnet34, 224 px from a 460 px presize, random weights, a verified model.onnx, so `auto` picks
onnxruntime) and one 500 x 375 JPEG serve both trees; the baseline is a temporary `git worktree` of `--baseline`,
run with PYTHONPATH pointing at it. Each round runs `python -c pass`, the ONNX path's imports alone, and both trees'
`petclf predict`, the two trees in alternating order. The forward pass alone (onnxruntime on a ready 1 x 3 x 224 x 224
input) is timed in its own process; the goal is on what is left: cold start minus forward.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, cat_photo, finish_run, git_worktree, load_avg, make_bundle

GOAL_COLD_START_S = 1.0  # `petclf predict one.jpg` on the ONNX path, wall time minus the forward pass: at most
BASELINE = "500ae75"  # the last tree before the redesign, which imported torch to predict with onnxruntime
HEAVY = ("torch", "fastai", "timm", "gradio", "matplotlib", "pandas", "sklearn", "accelerate")  # not needed to predict
ONNX_IMPORTS = "import numpy, scipy.sparse, scipy.special, PIL.Image, onnxruntime"  # what the ONNX path needs


# ---------------------------------------------------------------------------------------------------- commands


def petclf_cmd(*args: str) -> list[str]:
    """The `petclf` console script of this interpreter's environment (what a user types), with `args`."""
    script = Path(sys.executable).with_name("petclf")
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "petclf", *args]


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment for a child process that imports petclf from `tree` (None: no petclf needed)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def run_once(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """(wall seconds from process start to exit, stdout) of one run; a failed run stops the bench."""
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-2000:]}")
    return wall, p.stdout


def imported(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """{top-level package: ms spent running its own modules} for one run of `cmd` under `python -X importtime`
    (self times, so a package is not charged for what it imports from others)."""
    if Path(cmd[0]).name != Path(sys.executable).name:
        cmd = [sys.executable, *cmd]
    p = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, cwd=cwd, capture_output=True, text=True)
    out: dict[str, float] = {}
    for line in p.stderr.splitlines():  # "import time: self [us] | cumulative | imported package"
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            top = name.strip().split(".")[0]
            out[top] = out.get(top, 0.0) + int(own) / 1000
    return out


# ---------------------------------------------------------------------------------------------------- forward pass


def forward_times(bundle: Path, reps: int) -> dict[str, float]:
    """onnxruntime on the bundle's model.onnx (petclf's session settings): session creation, first run, and the
    median of `reps` later runs on a ready input, in ms. Imports numpy and onnxruntime only."""
    import numpy as np

    from petclf.onnx import OnnxNet

    size = json.loads((bundle / "model.json").read_text())["input"]["size"]
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    t = time.perf_counter()
    net = OnnxNet(bundle / "model.onnx")
    session = time.perf_counter() - t
    t = time.perf_counter()
    net(x)
    first = time.perf_counter() - t
    times = []
    for _ in range(reps):
        time.sleep(0.03)  # as bench_predict: no contender starts on the heels of the previous one
        t = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - t)
    return {"session_ms": 1000 * session, "first_ms": 1000 * first, "median_ms": 1000 * statistics.median(times),
            "times_ms": [1000 * v for v in times]}


def measure_forward(bundle: Path, reps: int, cwd: Path) -> dict[str, float]:
    """`forward_times` in a fresh process of this tree (so nothing the bench imported is in the way)."""
    _, out = run_once([sys.executable, "-m", __spec__.name, "--forward", str(bundle), "--reps", str(reps)],
                      tree_env(ROOT), cwd)
    return json.loads(out)


# ---------------------------------------------------------------------------------------------------- the bench


def check_baseline(bundle: Path, img: Path, base: Path, work: Path) -> str:
    """Both trees read the one bundle, the baseline on onnxruntime too, and print the same answer; returns a note."""
    probe = f"from petclf.predict import load_model; print(load_model({str(bundle)!r}).backend)"
    _, backend = run_once([sys.executable, "-c", probe], tree_env(base), work)
    key = lambda t: t.get("class_id", t.get("breed_id"))  # noqa: E731 - JSON format 2 renamed the keys
    answers = []
    for tree in (ROOT, base):
        _, out = run_once(petclf_cmd("predict", str(img), "--model", str(bundle), "--format", "json"),
                          tree_env(tree), work)
        answers.append(json.loads(out)[0]["top"])
    diff = max(abs(a["prob"] - b["prob"]) for a, b in zip(*answers, strict=True))
    same = [key(a) for a in answers[0]] == [key(b) for b in answers[1]] and diff <= 1e-5
    if backend.strip() != "onnx" or not same:
        raise RuntimeError(f"the baseline does not run this bundle as this tree does: backend {backend.strip()}, "
                           f"answers {answers}")
    return f"baseline backend {backend.strip()}; same top-5 in both trees (largest prob difference {diff:.1e})"


def rounds(cmds: dict[str, tuple[list[str], dict[str, str]]], runs: int, work: Path) -> dict[str, list[float]]:
    """Wall seconds of `runs` runs of each command, taking turns; the two trees swap places every round."""
    for cmd, env in cmds.values():  # warm-up: .pyc files written, the page cache filled
        run_once(cmd, env, work)
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    for i in range(runs):
        trees = ["new", "old"] if i % 2 == 0 else ["old", "new"]  # neither tree always follows the other
        for k in [k for k in cmds if k not in trees] + trees:
            walls[k].append(run_once(*cmds[k], work)[0])
        print(f"round {i + 1}/{runs}: " + ", ".join(f"{k} {walls[k][-1]:.2f} s" for k in cmds), flush=True)
    return walls


def report(r: dict) -> str:
    """The markdown tables for BENCHMARKS.md."""
    med = {k: statistics.median(v) for k, v in r["walls"].items()}
    fwd = r["forward_ms"] / 1000
    left = med["new"] - fwd
    lines = [f"| process (resnet34, 224 px, one 500 x 375 JPEG; {r['runs']} runs each) | median wall | min-max |",
             "|---|---|---|"]
    labels = {"bare": "`python -c pass`", "imports": f"`python -c \"{ONNX_IMPORTS}\"`",
              "new": f"`petclf predict one.jpg`, this tree ({r['rev']})",
              "old": f"`petclf predict one.jpg`, baseline ({r['baseline']})"}
    for k, label in labels.items():
        v = r["walls"][k]
        lines.append(f"| {label} | {med[k]:.2f} s | {min(v):.2f}-{max(v):.2f} s |")
    f = r["forward"]
    lines += ["", "| measure | value | goal | met |", "|---|---|---|---|",
              f"| onnxruntime forward, 1 x 3 x 224 x 224, warm (median of {len(r['forward_all_ms'])}) | "
              f"{r['forward_ms']:.1f} ms | | |",
              f"| onnxruntime session creation; first run (before / after the rounds) | "
              f"{f[0]['session_ms']:.0f} / {f[1]['session_ms']:.0f} ms; "
              f"{f[0]['first_ms']:.0f} / {f[1]['first_ms']:.0f} ms | | |",
              f"| this tree: cold start - forward | {left:.2f} s | <= {GOAL_COLD_START_S} s | "
              f"{'yes' if left <= GOAL_COLD_START_S else '**no**'} |",
              f"| baseline: cold start - forward | {med['old'] - fwd:.2f} s | | |",
              f"| this tree / baseline, cold start | {med['new'] / med['old']:.2f} | | |"]
    for k in ("new", "old"):
        heavy = sorted(m for m in r["imports"][k] if m in HEAVY)
        top = sorted(r["imports"][k].items(), key=lambda kv: -kv[1])[:6]
        lines.append(f"| {labels[k]}: heavy packages imported | {', '.join(heavy) or 'none'} (of "
                     f"{', '.join(HEAVY)}); import time {sum(r['imports'][k].values()):.0f} ms, most in: "
                     f"{', '.join(f'{m} {ms:.0f} ms' for m, ms in top)} | | |")
    return "\n".join(lines)


def git_rev(tree: Path) -> str:
    """The short commit of `tree`, with `+changes` when its working tree differs from it."""
    rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return rev.stdout.strip() + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each command")
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    ap.add_argument("--forward-reps", type=int, default=20)
    ap.add_argument("--out", type=Path, help="also write the raw numbers as JSON")
    ap.add_argument("--forward", type=Path, metavar="BUNDLE", help=argparse.SUPPRESS)  # the forward-pass child
    ap.add_argument("--reps", type=int, default=20, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.forward:
        print(json.dumps(forward_times(args.forward, args.reps)))
        return None

    work = Path(tempfile.mkdtemp(prefix="bench_cold_start_"))
    try:
        img = cat_photo(work / "one.jpg")
        print("building the bundle (resnet34, random weights, model.onnx) ...", flush=True)
        bundle = make_bundle(work / "bundle")
        r = {"rev": git_rev(ROOT), "baseline": args.baseline, "runs": args.runs, "load_avg_start": load_avg()}
        with git_worktree(args.baseline) as base:
            r["check"] = check_baseline(bundle, img, base, work)
            print(r["check"], flush=True)
            predict = petclf_cmd("predict", str(img), "--model", str(bundle))
            cmds = {"bare": ([sys.executable, "-c", "pass"], tree_env(None)),
                    "imports": ([sys.executable, "-c", ONNX_IMPORTS], tree_env(None)),
                    "new": (predict, tree_env(ROOT)), "old": (predict, tree_env(base))}
            forward = [measure_forward(bundle, args.forward_reps, work)]
            r["walls"] = rounds(cmds, args.runs, work)
            forward.append(measure_forward(bundle, args.forward_reps, work))
            r["imports"] = {k: imported(*cmds[k], work) for k in ("new", "old")}
        r["forward"] = forward
        r["forward_all_ms"] = [t for f in forward for t in f.pop("times_ms")]
        r["forward_ms"] = statistics.median(r["forward_all_ms"])
        print("\n" + report(r))
        return finish_run(r, args.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
