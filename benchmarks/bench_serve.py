"""The demo server under an upload flood: disk use held by the upload budget and the cache cap, and memory after
50 data URLs just under the request limit. Prints figures; asserts nothing about time.

    .venv/bin/python -m benchmarks.bench_serve                  # both parts, ~4 min on 2 busy cores
    .venv/bin/python -m benchmarks.bench_serve --only rss --uploads 50 --callers 4

flood: `petclf serve` as a user starts it (default limits) on a tiny random-weight bundle; 8 clients (127.0.0.1-8)
send 10 uploads of 19 MB each, round robin, as fast as the server answers. Prints the answers (200 / 429) and the
server's cache at its largest, beside what the flood would have left on disk without the budget.
rss: the same demo with the per-window budget lifted (what is measured is the memory a near-limit data URL costs,
not the budget, which would refuse most of them) gets `--uploads` classify calls, each a 26 MB data URL (a
19.4 MB JPEG, under the 27.7 MB request limit), `--callers` at a time. Prints the server's RSS after one small
call, after every 10 and 10 s after the last, once as the demo ships and once without `keep_memory_trimmed` (glibc's
own mmap threshold, no `malloc_trim`).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import free_port, load_avg, make_bundle, rss_mb, start_server, stop_server

SETTLE = 10.0  # seconds idle after the last data URL before RSS is read again (the server trims every 5 s)
UPLOAD_MB = 19  # each flood upload: under the 20 MB file limit
DATA_URL_JPEG = 19.4 * 2**20  # the JPEG inside each data URL: its base64 is ~25.9 MB
APP = """
import dataclasses, sys
import petclf.serve
if sys.argv[3] == "off":
    petclf.serve.keep_memory_trimmed = lambda: None
from petclf.app import LIMITS, build_demo, launch_kwargs
from petclf.predict import load_model
limits = dataclasses.replace(LIMITS, client_bytes=2**40, total_bytes=2**40)
build_demo(load_model(sys.argv[1])).launch(**launch_kwargs(port=int(sys.argv[2]), limits=limits))
"""


def post(port: int, path: str, body: bytes, headers: dict, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """(status, body) of one POST; the server's answer even when it answers (413, 429) before reading the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600, source_address=(source, 0))
    try:
        conn.putrequest("POST", path)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            conn.send(body)
        except OSError:
            pass  # refused unread: the answer is waiting
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def folder_mb(folder: Path) -> float:
    """MB of the files under `folder` (0 once it is gone)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def flood(bundle: Path, work: Path, clients: int = 8, each: int = 10) -> dict:
    """`clients` x `each` uploads of UPLOAD_MB against `petclf serve`; answers and the cache's largest size."""
    port, cache = free_port(), work / "cache"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    os.environ.update(env)
    proc = start_server([sys.executable, "-m", "petclf", "serve", "--model", str(bundle), "--port", str(port)],
                        port, work / "flood.log")
    data = os.urandom(UPLOAD_MB * 2**20 - 16)
    head = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    answers: dict[int, int] = {}
    largest, t0 = 0.0, time.monotonic()
    try:
        for i in range(clients * each):
            body = head + os.urandom(16) + data + b"\r\n--b--\r\n"  # each file its own: Gradio stores one copy
            status, _ = post(port, "/gradio_api/upload", body, {"Content-Type": "multipart/form-data; boundary=b"},
                             source=f"127.0.0.{1 + i % clients}")
            answers[status] = answers.get(status, 0) + 1
            largest = max(largest, folder_mb(cache))
        seconds = time.monotonic() - t0
    finally:
        stop_server(proc)  # SIGTERM: the server removes its cache
    return {"uploads": clients * each, "clients": clients, "answers": answers, "seconds": round(seconds, 1),
            "cache_mb_max": round(largest), "unbudgeted_mb": clients * each * UPLOAD_MB,
            "cache_mb_after_sigterm": round(folder_mb(cache), 1)}


def big_jpeg(target: float = DATA_URL_JPEG) -> bytes:
    """A noise JPEG of about `target` bytes (never over it): the worst case a data URL can carry."""
    rng = np.random.default_rng(0)
    side = 2600
    for _ in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=97)
        if 0.97 * target <= buf.tell() <= target:
            return buf.getvalue()
        side = int(side * (target * 0.985 / buf.tell()) ** 0.5)
    raise RuntimeError(f"could not make a JPEG of {target / 2**20:.1f} MB")


def classify(port: int, body: bytes) -> bool:
    """One /classify call through Gradio's two-step HTTP API; True when it completed."""
    status, text = post(port, "/gradio_api/call/classify", body, {"Content-Type": "application/json"})
    if status != 200:
        return False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", f"/gradio_api/call/classify/{json.loads(text)['event_id']}")
    return conn.getresponse().read().startswith(b"event: complete")


def rss_run(bundle: Path, work: Path, uploads: int, callers: int, trim: bool) -> dict:
    """RSS of the demo server (budget lifted) through `uploads` near-limit data URLs, `callers` at a time."""
    port = free_port()
    os.environ.update({"PYTHONWARNINGS": "ignore", "GRADIO_TEMP_DIR": str(work / "cache")})
    proc = start_server([sys.executable, "-c", APP, str(bundle), str(port), "on" if trim else "off"], port,
                        work / "rss.log")
    head = b'{"data": [{"meta": {"_type": "gradio.FileData"}, "url": "data:image/jpeg;base64,'
    small = head + base64.b64encode(_small_jpeg()) + b'"}]}'
    big = head + base64.b64encode(big_jpeg()) + b'"}]}'
    try:
        classify(port, small)  # lazy imports and first-call allocations before the baseline
        trace = [("start", round(rss_mb(proc.pid)))]
        done, lock, ok, failed = [0], threading.Lock(), [0], [0]

        def caller() -> None:
            while True:
                with lock:
                    if done[0] >= uploads:
                        return
                    done[0] += 1
                good = classify(port, big)
                with lock:
                    ok[0] += 1
                    failed[0] += not good
                    if ok[0] % 10 == 0:
                        trace.append((ok[0], round(rss_mb(proc.pid))))

        threads = [threading.Thread(target=caller) for _ in range(callers)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        trace.append(("end", round(rss_mb(proc.pid))))
        time.sleep(SETTLE)
        trace.append((f"{SETTLE:.0f} s later", round(rss_mb(proc.pid))))
        return {"trim": trim, "uploads": uploads, "completed": ok[0] - failed[0],
                "data_url_mb": round(len(big) / 2**20, 1), "seconds": round(time.monotonic() - t0), "rss_mb": trace,
                "growth_mb": trace[-1][1] - trace[0][1]}
    finally:
        stop_server(proc)


def _small_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (500, 375), (120, 90, 60)).save(buf, "JPEG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["flood", "rss"])
    ap.add_argument("--uploads", type=int, default=50)
    ap.add_argument("--callers", type=int, default=4)
    args = ap.parse_args(argv)
    r: dict = {"load_avg_start": load_avg()}
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        work = Path(tmp)
        bundle = make_bundle(work / "bundle", arch="resnet18", size=64, presize=80, classes=4)
        if args.only in (None, "flood"):
            r["flood"] = flood(bundle, work)
            f = r["flood"]
            print(f"flood: {f['uploads']} uploads of {UPLOAD_MB} MB from {f['clients']} clients in {f['seconds']} s: "
                  f"answers {f['answers']}; cache at most {f['cache_mb_max']} MB (without the budget: "
                  f"{f['unbudgeted_mb']} MB); after SIGTERM {f['cache_mb_after_sigterm']} MB")
        if args.only in (None, "rss"):
            for name, trim in (("as shipped", True), ("without keep_memory_trimmed", False)):
                r[f"rss {name}"] = x = rss_run(bundle, work, args.uploads, args.callers, trim)
                print(f"rss, {name}: {x['completed']}/{x['uploads']} data URLs of {x['data_url_mb']} MB, "
                      f"{args.callers} at a time, in {x['seconds']} s: RSS MB {x['rss_mb']}; "
                      f"growth {x['growth_mb']} MB")
    r["load_avg_end"] = load_avg()
    print(f"load average (1, 5, 15 min) at start: {r['load_avg_start']}; at end: {r['load_avg_end']}")
    return r


if __name__ == "__main__":
    main()
