"""Helpers the benchmarks share: test photos, a random-weight bundle, timing, servers under load, a baseline tree.

    from benchmarks.common import make_photos, interleaved_ms, start_server, load_test
    paths = make_photos(Path("photos"), 16, ["cat", "dog"])     # 500 x 375 JPEGs cut from skimage's cat photo

Run the benchmarks from the repository root (`python -m benchmarks.bench_predict`), so `benchmarks` is importable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]  # the tree under test; servers start here so they import its petclf
PHOTO_SIZE = (500, 375)  # a typical Oxford-IIIT Pets photo


# ---------------------------------------------------------------------------------------------------- inputs


def cat_photo(path: Path, size: tuple[int, int] = PHOTO_SIZE, quality: int = 90) -> Path:
    """skimage's cat photo (chelsea, 451 x 300) resized to `size` and saved as a JPEG."""
    from skimage import data

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.chelsea()).resize(size, Image.BICUBIC).save(path, quality=quality)
    return path


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
        im = base.crop((x0, y0, x0 + cw, y0 + ch)).resize(PHOTO_SIZE, Image.BICUBIC)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = np.clip(np.asarray(im, np.float32) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        path = out / f"{classes[i % len(classes)]}_{i + 1}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def make_bundle(out: Path, arch: str = "resnet34", size: int = 224, presize: int = 460, classes: int = 37) -> Path:
    """A petclf bundle with random weights and a verified model.onnx, as `petclf train` leaves one."""
    from petclf.bundle import make_manifest, write_bundle
    from petclf.model import FASTAI_HEAD, build_model, norm_stats
    from petclf.onnx import export_onnx
    from petclf.synth import synth_classes

    mean, std = norm_stats(arch)
    vocab = sorted(synth_classes(classes))
    write_bundle(build_model(arch, len(vocab)), out, make_manifest(arch, FASTAI_HEAD, vocab, size, presize, mean, std))
    export_onnx(out)
    return out


@contextlib.contextmanager
def git_worktree(rev: str, prefix: str = "petclf_baseline_") -> Iterator[Path]:
    """A temporary, detached `git worktree` of `rev` of this repository; removed (and pruned) on exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix)) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
        shutil.rmtree(path.parent, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


# ---------------------------------------------------------------------------------------------------- timing


def load_avg() -> str:
    """The 1, 5 and 15 minute load averages, for the record next to every timing."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def finish_run(r: dict, out: Path | None) -> dict:
    """The end of a bench run: the load average now, printed beside the one at its start (`r["load_avg_start"]`),
    and `r` saved as JSON to `out` when given."""
    r["load_avg_end"] = load_avg()
    print(f"load average (1, 5, 15 min) at start: {r['load_avg_start']}; at end: {r['load_avg_end']}")
    if out:
        out.write_text(json.dumps(r, indent=1))
    return r


def interleaved_ms(fns: dict[str, Callable], items, warmup: int = 3, reps: int = 2,
                   pause: float = 0.03) -> dict[str, float]:
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


# ---------------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
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
    """Start a server process in the repository root and wait until it answers on 127.0.0.1:`port`."""
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


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it does not exit within 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def load_test(url: str, api_name: str, paths: list[Path], callers: int, duration: float,
              server_pid: int | None = None) -> dict[str, float]:
    """`callers` threads, each with its own gradio_client, calling `api_name` back to back for `duration` s.

    With `server_pid`, also the CPU time per request spent by the server and by the callers (this process).
    `ssl_verify=False`: gradio_client otherwise builds a TLS context per call even for plain http, ~40 ms of CPU
    each, on the cores the server needs (nothing is verified on 127.0.0.1 either way).
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
