"""tools/gpu_check.sh: its CPU mode end to end, the one-line refusal without CUDA, a failing step recorded while
the others run, and which wheels install_wheels.py picks."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
STEPS = ["facts", "data", "train", "bench", "predict", "report", "lr_find", "resume"]


def run(argv: list[str], timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Run a tools/ script with this interpreter (gpu_check.sh takes it from $PYTHON) and petclf from here."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_cpu_mode_runs_every_step(tmp_path):
    out = tmp_path / "out"
    r = run(["bash", str(TOOLS / "gpu_check.sh"), "--device", "cpu", str(out)], timeout=3 * HANG_GUARD_S)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert list(res["steps"]) == STEPS and res["ok"] is True
    for name, st in res["steps"].items():
        assert (st["status"], st["error"]) == ("ok", None), name
        assert st["seconds"] > 0
    f = {name: st["figures"] for name, st in res["steps"].items()}
    assert f["facts"]["torch"] == torch.__version__ and f["facts"]["cpu_cores"] >= 1
    assert f["data"]["images"] == 32 and f["data"]["mean_kb"] > 0

    train = f["train"]
    assert train["device_line"].startswith("device cpu")
    assert train["epochs"] == 1 and len(train["epochs_s"]) == 1 and all(s > 0 for s in train["epochs_s"])
    assert train["wall_s"] > train["lr_find_s"] > 0 and train["finish_s"] > 0 and train["startup_s"] > 0
    assert train["onnx"]["max_abs_diff"] <= train["onnx"]["rtol"] * max(1.0, train["onnx"]["max_abs_logit"])

    bench = f["bench"]
    assert min(bench["a_img_s"], bench["a0_img_s"], bench["b_img_s"], bench["c_img_s"]) > 0
    assert bench["c_over_min_ab"] == pytest.approx(bench["c_img_s"] / min(bench["a_img_s"], bench["b_img_s"]),
                                                   rel=0.01)
    assert json.loads((out / "bench_train.json").read_text())["device"] == "cpu"

    pred = f["predict"]
    assert pred["cli_rows"] == pred["cli_images"] == 8 and pred["images"] == 16
    assert pred["folder_img_s"] > 0 and pred["raw_img_s"] > 0 and pred["device"] == "cpu"

    rep = f["report"]
    assert rep["device"] == "cpu" and rep["top_losses"] > 0 and rep["gradcam_figures"] == rep["top_losses"]
    assert (out / "report" / "report.html").stat().st_size > 10_000 and (out / "report" / "report.json").is_file()
    assert f["lr_find"]["suggestion"] > 0 and (out / "lr_find.png").stat().st_size > 1000

    resume = f["resume"]
    assert resume["epochs_at_interrupt"] == 1 and resume["final_epochs"] == resume["planned_epochs"] == 2
    assert "1 epochs done" in resume["resumed_line"]

    assert {g["met"] for g in res["goals"].values()} == {None}  # the speed goals are the GPU's
    log = (out / "gpu_check.log").read_text()
    assert all(f"==== {name}" in log for name in STEPS) and "exit 130" in log
    assert not Path(res["work"]).exists()  # the data and runs are cleaned up


def test_without_cuda_says_so_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    r = run(["bash", str(TOOLS / "gpu_check.sh"), str(tmp_path / "out")])
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no CUDA GPU" in r.stderr and "--device cpu" in r.stderr
    assert not (tmp_path / "out").exists()


def test_bad_usage_exits_2(tmp_path):
    r = run(["bash", str(TOOLS / "gpu_check.sh"), "--device", "tpu", str(tmp_path)])
    assert r.returncode == 2 and r.stderr.startswith("usage: ")


def test_a_failed_step_is_recorded_and_the_rest_run(tmp_path):
    # without the data step, the steps that need its photos fail; facts still runs, and the exit code is 1
    r = run([sys.executable, str(TOOLS / "gpu_check.py"), "--device", "cpu", "--steps", "facts,train,report",
             str(tmp_path)])
    assert r.returncode == 1, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(k, v["status"]) for k, v in res["steps"].items()] == [("facts", "ok"), ("train", "failed"),
                                                                    ("report", "failed")]
    assert "needs the data step" in res["steps"]["train"]["error"]
    assert "needs the train step" in res["steps"]["report"]["error"]
    assert res["ok"] is False


def install_wheels():
    """tools/install_wheels.py as a module (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("install_wheels", TOOLS / "install_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_wheels_picks_what_is_missing_or_too_old():
    iw = install_wheels()
    Requirement, Version, choose = iw.Requirement, iw.Version, iw.choose

    def wheel(version: str, *reqs: str):
        return Path("x.whl"), Version(version), [Requirement(r) for r in reqs]

    wheels = {"fastai": wheel("2.8.12", "fastcore>=2.2", "torch>=1.10", "numpy"),
              "fastcore": wheel("2.2.41"), "onnx": wheel("1.23.2", "protobuf>=6.31.1"),
              "protobuf": wheel("7.36.2"), "pyyaml": wheel("6.0.4"), "numpy": wheel("2.4.6"),
              "timm": wheel("1.0.31"), "rich": wheel("15.0.0")}
    have = {"torch": Version("2.11.0"), "protobuf": Version("5.29.0"), "pyyaml": Version("6.0.1"),
            "numpy": Version("1.26.4"), "timm": Version("1.0.20"), "rich": Version("14.1.0"),
            "scikit-learn": Version("1.6.1")}
    project = [Requirement(r) for r in ("timm>=1.0.31,<1.1", "rich>=13", "scikit-learn>=1.9", "gradio>=6.20")]
    chosen, notes = choose(wheels, have, project)
    # missing: fastai, fastcore, onnx; protobuf because onnx needs a newer one, timm because petclf does;
    # pyyaml, rich and numpy stay the machine's
    assert chosen == ["fastai", "fastcore", "onnx", "protobuf", "timm"]
    assert any(n.startswith("protobuf: onnx needs >=6.31.1") for n in notes)
    assert any(n.startswith("timm: petclf needs") for n in notes)
    assert any("scikit-learn>=1.9, this machine has 1.6.1" in n for n in notes)
    assert any(n.startswith("not here and no wheel: gradio") for n in notes)


def test_project_requirements_leave_torch_to_the_machine():
    iw = install_wheels()
    names = [iw.canonical(r.name) for r in iw.project_requirements(ROOT / "setup.cfg")]
    assert "fastai" in names and "timm" in names and "torch" not in names and "torchvision" not in names
