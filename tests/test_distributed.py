"""Two CPU processes (gloo) launched by Accelerate: sharded epochs, identical weights, rank 0 alone writes, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, Output, free_port, wait_for

from petclf.synth import synth_pets

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def launch(*args: str, cwd: Path) -> list[str]:
    """`accelerate launch` with two local processes; on a machine without GPUs they use the gloo backend."""
    return [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(free_port()), *args]


def env() -> dict[str, str]:
    # accelerate reads its default config from HOME; keep a user's config out of the test
    return {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HOME": os.environ.get("HF_HOME", "/tmp/hf"),
            "ACCELERATE_CONFIG_FILE": "/nonexistent"}


@pytest.fixture(scope="module")
def dist_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist_data")
    synth_pets(out, n_classes=3, per_class=14, size=40, seed=3)
    return out


def test_two_processes_train_disjoint_shards_agree_and_only_rank0_writes(dist_data, tmp_path):
    worker = Path(__file__).with_name("dist_worker.py")
    proc = subprocess.run(launch(str(worker), str(dist_data), str(tmp_path), cwd=tmp_path), cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"record{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    # both ranks trained every epoch (1 frozen + 1 unfrozen), each on its own half of the shuffled training set
    assert len(r0["epochs"]) == len(r1["epochs"]) == 2
    for e0, e1 in zip(r0["epochs"], r1["epochs"], strict=True):
        assert e0 and e1 and len(e0) == len(e1)
        assert set(e0) | set(e1) == set(range(r0["n_train"]))
        assert len(set(e0) & set(e1)) <= 1  # at most the one index padded onto an odd-sized epoch
    assert r0["epochs"][0] != r0["epochs"][1], "each epoch is shuffled anew"
    assert r0["hash"] == r1["hash"], "ranks ended with different weights"
    assert r0["lr"] == r1["lr"] and r0["lr"] > 0  # lr_find ran on rank 0, its suggestion reached rank 1
    # rank 0 wrote the whole run; rank 1 wrote nothing at all
    run = tmp_path / "rank0" / "run"
    for name in ("model.safetensors", "model.json", "config.yaml", "metrics.json", "lr_find.png"):
        assert (run / name).is_file(), name
    assert list((tmp_path / "rank1").iterdir()) == []
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == {"count": 2, "bs_per_process": 8, "global_bs": 16}
    assert "2 processes, batch 8 per process = 16 global" in proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert sum(ln.startswith("lr_find:") for ln in lines) == 1  # rank 0 alone runs (and shows) lr_find
    # the bundle is an ordinary one: it loads and predicts
    from petclf import load_model

    pred = load_model(run)
    probs = pred.predict(next(dist_data.glob("*.jpg")))
    assert abs(sum(probs.values()) - 1) < 1e-4


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process below it (torch's elastic agent starts its workers in new sessions)."""
    import psutil

    parent = psutil.Process(pid)
    procs = [*parent.children(recursive=True), parent]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=HANG_GUARD_S)


def _epochs_done(run: Path) -> int:
    import torch

    last = run / "checkpoints" / "last.pt"
    try:
        return len(torch.load(last, map_location="cpu", weights_only=True)["state"]["history"])
    except Exception:  # not written yet, or caught mid-rename
        return 0


def test_killed_distributed_run_on_a_csv_layout_resumes_through_the_cli(tmp_path):
    """Every rank killed mid-run resumes through the CLI. The run reads a CSV layout and is given no --bs, so the
    batch is fitted to each process's share: one launch to kill and one to resume prove both."""
    from petclf.synth import LABELS_CSV, synth_data

    data, run = tmp_path / "mine", tmp_path / "run"
    synth_data(data, "csv", n_classes=3, per_class=8, size=32, seed=3)
    args = ["-m", "petclf", "train", "--data", str(data), "--labels", str(data / LABELS_CSV), "--arch", "resnet18",
            "--no-pretrained", "--size", "32", "--presize", "40", "--freeze-epochs", "0", "--epochs", "6",
            "--lr", "0.002", "--workers", "0", "--out", str(run)]
    proc = subprocess.Popen(launch(*args, cwd=tmp_path), cwd=tmp_path, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = Output(proc.stderr)
    wait_for("a first saved epoch", lambda: _epochs_done(run) >= 1, proc, err.text)
    kill_tree(proc.pid)  # a crash, not a polite stop: no handler runs on any rank
    proc.wait(HANG_GUARD_S)
    killed = err.closed()
    done = _epochs_done(run)
    assert 1 <= done < 6, f"expected to kill the run mid-way, it had done {done} epochs"
    assert not (run / "model.json").exists()
    assert "batch size 2 instead of 32: the 21 training images (10 per process, 2 processes) give 5 steps" \
        in killed, killed[-3000:]
    resumed = subprocess.run(launch("-m", "petclf", "train", "--resume", str(run), "--workers", "0", cwd=tmp_path),
                             cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert resumed.returncode == 0, "\n".join(ln for ln in resumed.stderr.splitlines() if "error" in ln.lower())[-3000:]
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 7))  # 1-based
    from petclf.bundle import load_network

    load_network(run)
    manifest = json.loads((run / "model.json").read_text())
    assert manifest["data"]["layout"] == "csv" and manifest["data"]["split"] == "csv column split"
    assert [c["name"] for c in manifest["classes"]] == ["Crème brûlée", "Red fox", "blue whale"]
    assert json.loads((run / "metrics.json").read_text())["processes"] == {"count": 2, "bs_per_process": 2,
                                                                          "global_bs": 4}


RANK_SCRIPT = """
import sys
from datetime import timedelta

import torch.distributed as dist

from petclf.distributed import main_first

dist.init_process_group("gloo", timeout=timedelta(seconds=60))

def fill_cache():
    if dist.get_rank() == 0:
        raise ValueError("hub unreachable")
    return "cached"

print(main_first(fill_cache))
"""


def test_main_first_failing_on_rank_0_stops_the_others_with_its_reason(tmp_path):
    """Rank 0 fills caches first while the rest wait; when it fails, they must stop too and say why, not sit at a
    barrier for a peer that is gone (NCCL would wait out its timeout)."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env(), "RANK": str(r), "WORLD_SIZE": "2",
                                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [1, 1], outs
    assert "ValueError: hub unreachable" in outs[0][1]
    assert "rank 0 failed, so this rank stops too: ValueError: hub unreachable" in outs[1][1], outs[1][1]
