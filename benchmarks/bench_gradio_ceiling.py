"""The most requests/s Gradio + gradio_client reach on this machine: petclf's `/classify` wiring with no model work.

    .venv/bin/python -m benchmarks.bench_gradio_ceiling --duration 15

The same 8 `gradio_client` callers as `bench_predict.py`'s demo load; the endpoint returns fixed labels, so what is
measured is upload, queue, event stream and client cost alone: the ceiling any demo served this way can approach.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from benchmarks.common import free_port, load_test, make_photos, start_server, stop_server

warnings.filterwarnings("ignore")

# run as `python -c APP PORT` from the repository root (`start_server`), so it imports the petclf under test
APP = '''
import sys
import gradio as gr
from petclf.app import CONCURRENCY, QUEUE_SIZE, UploadedImage

def classify(image):
    return {"a": 0.9, "b": 0.1}, {"cat": 0.9, "dog": 0.1}

with gr.Blocks() as demo:
    image, breeds, species = UploadedImage(type="filepath"), gr.Label(), gr.Label()
    image.change(classify, image, [breeds, species], api_name="classify", concurrency_limit=CONCURRENCY)
demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENCY)
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), ssr_mode=False)
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--duration", type=float, default=15.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_ceiling_"))
    try:
        paths = make_photos(work / "photos", 16, [f"c{i}" for i in range(4)])
        port = free_port()
        proc = start_server([sys.executable, "-c", APP, str(port)], port, work / "log")
        try:
            print(load_test(f"http://127.0.0.1:{port}/", "/classify", paths, args.callers, args.duration,
                            server_pid=proc.pid))
        finally:
            stop_server(proc)
        print("load average (1, 5, 15 min):", *(f"{v:.2f}" for v in os.getloadavg()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
