"""The demo server against hostile or careless clients: oversized bodies, a cache that must empty itself, malformed
API payloads, telemetry, logins, and `petclf serve`'s checks of where it listens. Real servers, real HTTP."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, free_port, start_serve, wait_for

from petclf.address import exposure_warning, parse_auth
from petclf.app import build_demo
from petclf.serve import MAX_DATA_URL, MAX_REQUEST_BYTES, UploadedImage, launch_kwargs

HEAD = b'{"data": [{"meta": {"_type": "gradio.FileData"}, "url": "data:image/jpeg;base64,'


def post(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    """POST `body`; the server's answer even when it answers before reading all of it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", path)
    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
        conn.putheader(k, v)
    conn.endheaders()
    try:
        conn.send(body)
    except OSError:
        pass  # refused before it was read
    resp = conn.getresponse()
    return resp.status, resp.read()


def call_classify(port: int, body: bytes) -> tuple[int, bytes]:
    """POST to /gradio_api/call/classify, then read the event's result (Gradio's two-step HTTP API)."""
    status, text = post(port, "/gradio_api/call/classify", body)
    if status != 200:
        return status, text
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", f"/gradio_api/call/classify/{json.loads(text)['event_id']}")
    return 200, conn.getresponse().read()


def send_oversized(port: int, mb: int, chunked: bool) -> tuple[int | str, bytes]:
    """An `mb` MB data URL sent as an attacker would (declared length or chunked), 1 MB at a time; the server's
    answer, or the error that ended the exchange."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/gradio_api/call/classify")
    conn.putheader("Content-Type", "application/json")
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(len(HEAD) + mb * 2**20 + 4))
    conn.endheaders()
    chunk = b"A" * 2**20
    try:
        for part in [HEAD] + [chunk] * mb + [b'"}]}']:
            conn.send(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
    except OSError:
        pass  # the server answered and hung up without reading the rest: that is the point
    try:
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as e:
        return type(e).__name__, b""


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """(port, process, log file) of `petclf serve` in its own process, as a user starts it."""
    proc, port, log = start_serve(tiny_run.run_dir, tmp_path_factory.mktemp("serve"))
    yield port, proc, log
    proc.terminate()
    proc.wait(HANG_GUARD_S)


# ---------------------------------------------------------------------------------------------------- pure parts


def test_a_data_url_is_refused_by_its_length_before_it_is_decoded():
    from gradio.data_classes import ImageData

    image = UploadedImage(type="filepath")
    fits = "data:image/jpeg;base64," + "A" * MAX_DATA_URL  # decodes to MAX_BYTES of zeros: petclf's checks follow
    assert len(image.preprocess(ImageData(url=fits))) == MAX_DATA_URL // 4 * 3
    too_big = "data:image/jpeg;base64," + "A" * (MAX_DATA_URL + 4)
    with pytest.raises(Exception, match="over the 20 MB limit") as err:
        image.preprocess(ImageData(url=too_big))
    assert type(err.value).__name__ == "Error"  # gr.Error: one line for the visitor, no traceback
    assert MAX_DATA_URL < MAX_REQUEST_BYTES < MAX_DATA_URL + 2 * 2**20


def test_exposure_warning_and_auth_parsing():
    assert exposure_warning("127.0.0.1", False, None) is None and exposure_warning("localhost", False, None) is None
    for host, share in (("0.0.0.0", False), ("192.168.1.7", False), ("127.0.0.1", True)):
        line = exposure_warning(host, share, None)
        assert line.startswith("warning:") and "--auth USER:PASS" in line and "\n" not in line
    assert exposure_warning("0.0.0.0", True, ("u", "p")) is None
    assert parse_auth("ann:s3cr:et") == ("ann", "s3cr:et") and parse_auth(None) is None
    for bad in ("ann", "ann:", ":pw", ""):
        with pytest.raises(Exception, match="USER:PASS"):
            parse_auth(bad)


# ---------------------------------------------------------------------------------------------------- live server


@pytest.mark.slow
def test_oversized_data_urls_are_refused_unread_and_memory_stays_flat(served):
    """BAD_INPUTS row 25: ten 150 MB data URLs (declared or chunked) move the server's RSS by under 100 MB."""
    import psutil

    port, proc, log = served
    server = psutil.Process(proc.pid)
    call_classify(port, b'{"data": [null]}')  # first request: lazy imports done before the baseline
    before = server.memory_info().rss
    answers = [send_oversized(port, 150, chunked=i % 2 == 1) for i in range(10)]  # each refused before it is read
    after = server.memory_info().rss
    assert after - before < 100 * 2**20, (before / 2**20, after / 2**20)
    assert all(status == 413 and b"byte limit" in body for status, body in answers[::2]), answers
    assert all(status == 411 and b"Content-Length" in body for status, body in answers[1::2]), answers
    assert log.read_text().count("request refused: request body") == 10


@pytest.mark.slow
def test_telemetry_is_off_unless_asked_for(served, monkeypatch, predictor_from_run):
    port, _, _ = served  # launched by `petclf serve` with GRADIO_ANALYTICS_ENABLED unset
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/config")
    assert json.loads(conn.getresponse().read())["analytics_enabled"] is False
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")  # the user's explicit opt-in still works
    assert build_demo(predictor_from_run).analytics_enabled is True


MALFORMED = {  # payload -> what the client must be told
    b'{"data": [123]}': "Malformed request",
    b'{"data": ["/etc/passwd"]}': "Malformed request",
    b'{"data": [1, 2]}': "Malformed request",
    b'{"data": []}': "takes 1 input(s), got 0",
    b'{"data": [{"path": "/etc/passwd"}]}': "not uploaded to this demo",
    b'{"data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]}': "not uploaded to this demo",
    b'{"data": [{"url": "http://example.com/x.jpg", "meta": {"_type": "gradio.FileData"}}]}': "Send the image",
    b'{"data": [{"path": "/etc/pass\\u0000wd", "meta": {"_type": "gradio.FileData"}}]}': "NUL byte",
    b'{"data": [{"path": "/etc/pass\\u0000wd"}]}': "NUL byte",
}


@pytest.mark.slow
def test_malformed_payloads_get_a_clear_message_and_one_log_line(served):
    port, _, log = served
    lines_before = log.read_text().count("\n")
    for body, expected in MALFORMED.items():
        status, text = call_classify(port, body)
        event = text.decode()
        assert status == 200 and event.startswith("event: error"), (body, event)
        error = json.loads(event.split("data: ", 1)[1])["error"]
        assert error and expected in error, (body, error)
    def rejected() -> list[str]:
        return [ln for ln in log.read_text().splitlines()[lines_before:] if ln.startswith("upload rejected:")]

    wait_for("a log line per malformed payload", lambda: len(rejected()) >= len(MALFORMED), timeout=120,
             log=lambda: "\n".join(rejected()))
    new_lines = log.read_text().splitlines()[lines_before:]
    assert "Traceback" not in "\n".join(new_lines)
    assert len(rejected()) == len(MALFORMED), new_lines


@pytest.mark.slow
def test_a_folder_of_the_cache_is_no_upload_and_its_path_is_not_echoed(served):
    """Issue 28.7: a payload naming the server's cache folder (or a folder in it) is told it was not uploaded,
    and the answer does not hold the server's path."""
    port, _, log = served
    cache = next((log.parent / "cache").glob("petclf-serve-*"))  # `petclf serve`'s own cache in GRADIO_TEMP_DIR
    for folder in [cache, *(p for p in cache.iterdir() if p.is_dir())][:3]:
        for meta in ('', ', "meta": {"_type": "gradio.FileData"}'):
            status, text = call_classify(port, f'{{"data": [{{"path": "{folder}"{meta}}}]}}'.encode())
            assert status == 200 and b"not uploaded to this demo" in text and str(cache).encode() not in text, text


@pytest.fixture(scope="module")
def predictor_from_run(tiny_run):
    from petclf.predict import load_model

    return load_model(tiny_run.run_dir)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _upload(port: int, files: dict[str, bytes]) -> tuple[int, bytes]:
    """A multipart POST to /gradio_api/upload, as the browser sends it."""
    boundary = "petclf-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
             for name, data in files.items()]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return post(port, "/gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


@pytest.mark.slow
def test_the_cache_empties_itself_and_uploads_are_capped(predictor_from_run, tiny_run, tmp_path, monkeypatch):
    """BAD_INPUTS row 26: uploads of any type leave Gradio's cache after the lifetime; one request cannot carry
    more than MAX_REQUEST_BYTES."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    demo = build_demo(predictor_from_run, cache_seconds=2)
    port = free_port()
    demo.launch(**launch_kwargs(port=port), prevent_thread_lock=True, quiet=True)
    try:
        examples = set(_files(tmp_path))  # the shipped example photos, copied in at build time and kept
        photo = Path(tiny_run.learn.dls.valid_ds.items[0]).read_bytes()
        status, text = _upload(port, {"cat.jpg": photo, "notes.txt": b"not an image", "blob.bin": os.urandom(4096)})
        assert status == 200 and {Path(p) for p in json.loads(text)} == set(_files(tmp_path)) - examples
        wait_for("the uploads to leave the cache (2 s lifetime)", lambda: set(_files(tmp_path)) == examples,
                 timeout=120, log=lambda: str(sorted(set(_files(tmp_path)) - examples)))
        half = os.urandom(15 * 2**20)  # each under max_file_size (20 MB), together over the request limit
        status, text = _upload(port, {"a.bin": half, "b.bin": half})
        assert status == 413 and b"limit" in text and set(_files(tmp_path)) == examples
    finally:
        demo.close()


@pytest.mark.slow
def test_sessions_do_not_keep_data_urls(predictor_from_run, tiny_run):
    """Gradio keeps each session's last input for as long as it keeps the session: never a whole data URL."""
    import base64

    demo = build_demo(predictor_from_run)
    port = free_port()
    demo.launch(**launch_kwargs(port=port), prevent_thread_lock=True, quiet=True)
    try:
        photo = base64.b64encode(Path(tiny_run.learn.dls.valid_ds.items[0]).read_bytes())
        status, text = call_classify(port, HEAD + photo + b'"}]}')
        assert status == 200 and text.startswith(b"event: complete"), text[:300]
        sessions = list(demo.state_holder.session_data.values())
        assert sessions and not any(b"data:image" in repr(s.config_values).encode() for s in sessions)
    finally:
        demo.close()


@pytest.mark.slow
def test_auth_refuses_requests_without_the_login(predictor_from_run):
    demo = build_demo(predictor_from_run)
    port = free_port()
    demo.launch(**launch_kwargs(port=port, auth=("ann", "pw")), prevent_thread_lock=True, quiet=True)
    try:
        status, _ = call_classify(port, b'{"data": [null]}')
        assert status in (401, 403)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/config")
        assert conn.getresponse().status in (401, 403)
        status, _ = post(port, "/login", b"username=ann&password=wrong",
                         {"Content-Type": "application/x-www-form-urlencoded"})
        assert status >= 400
        status, _ = post(port, "/login", b"username=ann&password=pw",
                         {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200
    finally:
        demo.close()


# ---------------------------------------------------------------------------------------------------- the command


def serve_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "petclf", "serve", *args], capture_output=True, text=True, env=env,
                          timeout=HANG_GUARD_S)


@pytest.mark.slow
def test_serve_says_in_one_line_where_it_cannot_listen(tiny_run):
    model = ["--model", str(tiny_run.run_dir)]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cases = {("--port", str(taken)): "--port", ("--port", "99999"): "not a valid port",
                 ("--host", "256.1.1.1"): "not a valid address", ("--auth", "ann"): "USER:PASS"}
        for args, expected in cases.items():
            out = serve_cli(*model, *args)
            assert out.returncode == 2, (args, out.stderr)
            assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and expected in out.stderr, \
                (args, out.stderr)
