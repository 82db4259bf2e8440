"""petclf.serve against live servers on 127.0.0.1: the login on every route, login throttling, the upload budget
and cache cap, symlinked examples never served, and nothing of the visitors' left after SIGTERM."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import HANG_GUARD_S, free_port, start_serve

from petclf.app import build_demo, example_files
from petclf.guards import Limits
from petclf.serve import launch_kwargs, safe_files

USER, PASSWORD = "ann", "s3cret"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

# Every route Gradio's app has. The login page and its static files are public; everything else needs the login.
# A Gradio upgrade that adds a route fails test_every_route_needs_the_login until the route is looked at here.
PUBLIC = {("GET", "/"), ("HEAD", "/"), ("POST", "/login"), ("POST", "/login/"), ("GET", "/theme.css"),
          ("GET", "/favicon.ico"), ("GET", "/assets/{path:path}"), ("GET", "/static/{path:path}"),
          ("GET", "/gradio_api/startup-events")}
PROTECTED = {
    ("GET", "/openapi.json"), ("HEAD", "/openapi.json"), ("GET", "/svelte/{path:path}"),
    ("GET", "/gradio_api/deep_link"), ("GET", "/config"), ("GET", "/config/"), ("GET", "/robots.txt"),
    ("GET", "/pwa_icon/{size}"), ("GET", "/pwa_icon"), ("GET", "/manifest.json"), ("GET", "/monitoring"),
    ("GET", "/monitoring/summary"), ("GET", "/monitoring/{key}"), ("GET", "/gradio_api/user/"),
    ("GET", "/gradio_api/user"), ("GET", "/gradio_api/login_check/"), ("GET", "/gradio_api/login_check"),
    ("GET", "/gradio_api/token/"), ("GET", "/gradio_api/token"), ("GET", "/gradio_api/app_id/"),
    ("GET", "/gradio_api/app_id"), ("GET", "/gradio_api/dev/reload"), ("GET", "/gradio_api/runs/"),
    ("GET", "/gradio_api/runs"), ("POST", "/gradio_api/run-history/connect"),
    ("GET", "/gradio_api/run-history/buckets"), ("GET", "/gradio_api/run-history/records"),
    ("GET", "/gradio_api/run-history/records/{endpoint}/{record_id}/assets/{asset_id}"),
    ("GET", "/gradio_api/info"), ("GET", "/gradio_api/info/"), ("GET", "/gradio_api/openapi.json"),
    ("GET", "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}"),
    ("GET", "/gradio_api/proxy={url_path:path}"), ("HEAD", "/gradio_api/proxy={url_path:path}"),
    ("GET", "/gradio_api/file={path_or_url:path}"), ("HEAD", "/gradio_api/file={path_or_url:path}"),
    ("POST", "/gradio_api/stream/{event_id}"), ("POST", "/gradio_api/stream/{event_id}/close"),
    ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist.m3u8"),
    ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}"),
    ("GET", "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist-file"),
    ("GET", "/gradio_api/file/{path:path}"), ("POST", "/gradio_api/reset"), ("POST", "/gradio_api/reset/"),
    ("GET", "/gradio_api/heartbeat/{session_hash}"), ("POST", "/gradio_api/api/{api_name}/"),
    ("POST", "/gradio_api/api/{api_name}"), ("POST", "/gradio_api/run/{api_name}/"),
    ("POST", "/gradio_api/run/{api_name}"), ("POST", "/gradio_api/call/v2/{api_name}/"),
    ("POST", "/gradio_api/call/v2/{api_name}"), ("POST", "/gradio_api/call/{api_name}/"),
    ("POST", "/gradio_api/call/{api_name}"), ("POST", "/gradio_api/queue/join"), ("POST", "/gradio_api/cancel"),
    ("GET", "/gradio_api/call/{api_name}/{event_id}"), ("GET", "/gradio_api/call/v2/{api_name}/{event_id}"),
    ("GET", "/gradio_api/queue/data"), ("POST", "/gradio_api/component_server/"),
    ("POST", "/gradio_api/component_server"), ("GET", "/gradio_api/queue/status"),
    ("GET", "/gradio_api/upload_progress"), ("POST", "/gradio_api/upload"), ("GET", "/gradio_api/theme.css"),
    ("POST", "/gradio_api/process_recording"), ("POST", "/gradio_api/vibe-edit"),
    ("POST", "/gradio_api/vibe-edit/"), ("POST", "/gradio_api/undo-vibe-edit"),
    ("POST", "/gradio_api/undo-vibe-edit/"), ("GET", "/gradio_api/vibe-code"), ("GET", "/gradio_api/vibe-code/"),
    ("POST", "/gradio_api/vibe-code"), ("POST", "/gradio_api/vibe-code/"),
    ("POST", "/gradio_api/vibe-starter-queries"), ("POST", "/gradio_api/vibe-starter-queries/"),
    ("GET", "/logout"),  # last: it ends the session
}


def app_routes(routes: list, prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every route of a Starlette/FastAPI app, included routers and mounts opened up."""
    found = []
    for r in routes:
        if hasattr(r, "original_router"):  # FastAPI >= 0.16x keeps an included router whole
            found += app_routes(r.original_router.routes, prefix + r.include_context.prefix)
        elif hasattr(r, "routes") and not hasattr(r, "methods"):  # a Mount
            found += app_routes(r.routes, prefix + r.path)
        else:
            found += [(m, prefix + r.path) for m in sorted(getattr(r, "methods", None) or ["WEBSOCKET"])]
    return found


def ask(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
        source: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request, also when the server answers before reading the body (413, 429);
    a streamed answer is not read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.putrequest(method, path)
        sent = {"Content-Type": "application/json", **({"Content-Length": str(len(body))} if body else {}),
                **(headers or {})}
        for k, v in sent.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            conn.send(body or b"")
        except OSError:
            pass  # refused unread: the answer is waiting
        resp = conn.getresponse()
        streamed = "text/event-stream" in resp.getheader("content-type", "")
        data = b"" if method == "HEAD" or streamed else resp.read(2**16)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def login(port: int, password: str = PASSWORD, source: str = "127.0.0.1") -> tuple[int, dict, str]:
    """(status, headers, the Cookie header to send from now on) of one POST to /login."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", "/login", body=f"username={USER}&password={password}".encode(), headers=FORM)
        resp = conn.getresponse()
        resp.read()
        cookie = "; ".join(v.split(";")[0] for k, v in resp.getheaders() if k.lower() == "set-cookie")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, cookie
    finally:
        conn.close()


def upload(port: int, data: bytes, source: str = "127.0.0.1", cookie: str = "") -> tuple[int, dict, bytes]:
    """One multipart POST of `data` to /gradio_api/upload, as the browser sends it."""
    boundary = "petclf-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.jpg"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", **({"Cookie": cookie} if cookie else {})}
    return ask(port, "POST", "/gradio_api/upload", body, headers, source)


@pytest.fixture(scope="module")
def predictor(tiny_run):
    from petclf.predict import load_model

    return load_model(tiny_run.run_dir)


def launched(predictor, **kw):
    """The demo as `petclf serve` builds it, launched on a free port with `launch_kwargs(**kw)`."""
    demo = build_demo(predictor)
    demo.launch(**launch_kwargs(port=free_port(), **kw), prevent_thread_lock=True, quiet=True)
    return demo


# ---------------------------------------------------------------------------------------------------- the login


@pytest.mark.slow
def test_every_route_needs_the_login(predictor):
    """Issue 24.3: with --auth, every route but the login page answers 401 without the login, including another
    visitor's /classify result read by its event id; with the login, none does."""
    demo = launched(predictor, auth=(USER, PASSWORD))
    try:
        routes = app_routes(demo.app.routes)
        unknown = sorted(set(routes) - PUBLIC - PROTECTED)
        assert not unknown, f"routes this test does not know (decide: public or behind the login): {unknown}"
        port = demo.server_port
        status, _, cookie = login(port)
        assert status == 200 and "access-token" in cookie
        photo = base64.b64encode(Path(example_files()[0]).read_bytes()).decode()
        body = json.dumps({"data": [{"meta": {"_type": "gradio.FileData"}, "url": f"data:image/jpeg;base64,{photo}"}],
                           "session_hash": "annsession"}).encode()
        status, _, text = ask(port, "POST", "/gradio_api/call/classify", body, {"Cookie": cookie})
        event = json.loads(text)["event_id"]
        theirs = [("GET", f"/gradio_api/call/classify/{event}"), ("GET", f"/gradio_api/call/v2/classify/{event}"),
                  ("GET", "/gradio_api/queue/data?session_hash=annsession"),
                  ("GET", "/gradio_api/heartbeat/annsession")]
        tried = [(m, re.sub(r"\{[^}]+\}", "x", p), (m, p) in PUBLIC) for m, p in routes if (m, p) != ("GET", "/logout")]
        tried += [(m, p, False) for m, p in theirs] + [("GET", "/logout", False)]
        without = {(m, p): ask(port, m, p, b"{}" if m == "POST" else None) for m, p, public in tried if not public}
        assert {k: s for k, (s, _, _) in without.items() if s != 401} == {}
        assert all(b"log in first" in body for s, _, body in without.values() if s == 401 and body)
        page = ask(port, "GET", "/")
        assert page[0] == 200 and b"auth_required" in page[2] and predictor.display[predictor.classes[0]].encode() \
            not in page[2]  # the login page, not the demo
        status, _, result = ask(port, "GET", f"/gradio_api/call/classify/{event}", headers={"Cookie": cookie})
        assert status == 200  # the owner reads the answer with the login
        withs = {(m, p): ask(port, m, p, b"{}" if m == "POST" else None, {"Cookie": cookie})
                 for m, p, public in tried if not public}
        refused = {k: body for k, (s, _, body) in withs.items()
                   if s == 401 and (b"log in first" in body or b"Not authenticated" in body)}
        assert refused == {}  # (run-history's own 401 asks for a Hugging Face sign-in: not this login)
        print(f"routes tried without and with the login ({len(without)}): {sorted(without)}")
    finally:
        demo.close()


@pytest.mark.slow
def test_logins_are_throttled_and_the_right_password_works_after_the_wait(predictor, caplog):
    """Issue 28.6: wrong passwords from one client get 429 after `login_failures`, the right one too until the
    lockout passes; then it works. One log line per refused request."""
    limits = Limits(login_failures=3, login_lockout=3.0)
    demo = launched(predictor, auth=(USER, PASSWORD), limits=limits)
    caplog.set_level(logging.WARNING, logger="petclf.serve")
    try:
        port = demo.server_port
        tries = [login(port, "wrong")[0] for _ in range(3)]
        assert tries == [400, 400, 400]
        status, headers, _ = login(port)
        assert status == 429 and 1 <= int(headers["retry-after"]) <= 3
        assert login(port, source="127.0.0.2")[0] == 200  # another client is not held back
        deadline = time.monotonic() + 30  # 10 x the lockout
        while (status := login(port)[0]) == 429 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 200, "the right password was still refused 10 x the lockout after the last wrong one"
        lines = [r.getMessage() for r in caplog.records if r.name == "petclf.serve"]
        assert sum("login refused: wrong user or password" in ln for ln in lines) == 3
        assert sum("too many wrong logins" in ln for ln in lines) >= 1
        assert not any(r.exc_info for r in caplog.records)
    finally:
        demo.close()


@pytest.mark.slow
def test_an_empty_petclf_auth_is_refused_like_an_empty_auth_flag(tiny_run):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PETCLF_AUTH": ""}
    out = subprocess.run([sys.executable, "-m", "petclf", "serve", "--model", str(tiny_run.run_dir), "--port",
                          str(free_port())], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "PETCLF_AUTH" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------------------- uploads


@pytest.mark.slow
def test_uploads_are_budgeted_per_client_and_in_all(predictor):
    """Issue 28.2: a client over its bytes per window gets 429 with Retry-After, others go on until the total is
    spent; after the window both may send again."""
    mb = os.urandom(2**20)
    demo = launched(predictor, limits=Limits(window=3.0, client_bytes=int(2.5 * 2**20), total_bytes=4 * 2**20))
    try:
        port = demo.server_port
        assert [upload(port, mb)[0] for _ in range(2)] == [200, 200]
        status, headers, body = upload(port, mb)
        assert status == 429 and b"upload budget used" in body and 1 <= int(headers["retry-after"]) <= 3
        assert upload(port, mb, source="127.0.0.2")[0] == 200  # another client: its own budget ...
        status, _, body = upload(port, mb, source="127.0.0.3")  # ... until all of them have sent the total
        assert status == 429 and b"from all visitors" in body
        deadline = time.monotonic() + 30  # 10 x the window
        while (status := upload(port, mb)[0]) == 429 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 200, "still refused 10 x the window later"
    finally:
        demo.close()


@pytest.mark.slow
def test_uploads_stop_at_the_cache_cap(predictor, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    demo = build_demo(predictor)
    kept = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())  # the example photos
    demo.launch(**launch_kwargs(port=free_port(), limits=Limits(cache_bytes=kept + 5 * 2**20 // 2)),
                prevent_thread_lock=True, quiet=True)
    try:
        answers = [upload(demo.server_port, os.urandom(2**20)) for _ in range(3)]
        assert [s for s, _, _ in answers] == [200, 200, 429] and b"cache is full" in answers[2][2]
        assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) <= kept + 5 * 2**20 // 2
    finally:
        demo.close()


def _drop_upload(port: int) -> None:
    """Start a 10 MB upload, send 1 MB of it, and hang up."""
    import socket

    head = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.jpg"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                  f"Content-Length: {10 * 2**20}\r\n\r\n".encode() + head + b"A" * 2**20)


@pytest.mark.slow
def test_sigterm_leaves_no_upload_behind_and_dropped_uploads_are_one_line(tiny_run, tmp_path):
    """Issues 28.2 and 28.7: uploads (finished or dropped part-way) are removed when `petclf serve` gets SIGTERM,
    as on Ctrl-C; each dropped upload is one log line, not a traceback."""
    proc, port, log = start_serve(tiny_run.run_dir, tmp_path)
    try:
        status, _, text = upload(port, b"\xff\xd8 not really a photo" * 1000)
        assert status == 200 and Path(json.loads(text)[0]).is_file()
        for _ in range(5):
            _drop_upload(port)
        ask(port, "GET", "/config")  # the server has dealt with the drops
        assert len([p for p in (tmp_path / "cache").rglob("*") if p.is_file()]) >= 6
        proc.send_signal(signal.SIGTERM)
        proc.wait(HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert left == [], left
    text = log.read_text()
    assert "Traceback" not in text and text.count("request dropped part-way") == 5, text[-3000:]


# ---------------------------------------------------------------------------------------------------- examples


def test_safe_files_follows_no_symlink(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    (run / "examples").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    (run / "examples" / "a.jpg").write_bytes(b"a")
    (run / "examples" / "notes.txt").write_bytes(b"n")
    (run / "examples" / "file.jpg").symlink_to(outside / "secret.jpg")
    (run / "examples" / "folder.jpg").symlink_to(outside)
    (run / "examples" / "loop.jpg").symlink_to(run / "examples" / "loop.jpg")
    (run / "examples" / "inside.jpg").symlink_to(run / "examples" / "a.jpg")  # a link, even to a file inside
    assert safe_files(run / "examples", run, (".jpg",)) == [run / "examples" / "a.jpg"]
    (run / "linked").symlink_to(outside)  # a whole folder elsewhere
    assert safe_files(run / "linked", run, (".jpg",)) == []
    assert safe_files(run / "missing", run, (".jpg",)) == []


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A tiny run of non-Pets classes (the demo offers its `examples/`), with symlinks planted there that point
    to a secret file, to a folder outside, and to themselves."""
    from conftest import tiny_config

    from petclf.synth import synth_data
    from petclf.train import train

    tmp = tmp_path_factory.mktemp("own")
    synth_data(tmp / "data", "folders", n_classes=3, per_class=8, size=64, split_dirs=True)
    train(tiny_config(tmp / "data", tmp / "run", epochs=1))
    (tmp / "secret.txt").write_text("SECRET-CONTENTS")
    (tmp / "outside").mkdir()
    examples = tmp / "run" / "examples"
    (examples / "zz.jpg").symlink_to(tmp / "secret.txt")
    (examples / "dir.jpg").symlink_to(tmp / "outside")
    (examples / "loop.jpg").symlink_to(examples / "loop.jpg")
    return tmp / "run"


@pytest.mark.slow
def test_symlinks_in_a_runs_examples_are_never_listed_or_served(own_run, tmp_path):
    """Issue 28.1: `petclf serve --model RUN` with symlinks in RUN/examples starts, lists and serves only the
    run's own photos (copies in its cache)."""
    proc, port, log = start_serve(own_run, tmp_path)
    try:
        status, _, config = ask(port, "GET", "/config")
        assert status == 200
        listed = set(re.findall(r'"path": "([^"]+)"', json.dumps(json.loads(config))))
        names = {Path(p).name for p in listed if "/examples/" in p or str(tmp_path) in p}
        real = {p.name for p in (own_run / "examples").iterdir() if not p.is_symlink()}
        assert real <= names and not {"zz.jpg", "dir.jpg", "loop.jpg"} & names, names
        for name in ("zz.jpg", "dir.jpg", "loop.jpg"):
            status, _, body = ask(port, "GET", f"/gradio_api/file={own_run / 'examples' / name}")
            assert status in (403, 404) and b"SECRET" not in body, (name, status)
        served = next(p for p in listed if Path(p).name in real and str(tmp_path) in p)
        assert Path(served).is_file() and not Path(served).is_symlink()  # a copy in the server's cache
        assert ask(port, "GET", f"/gradio_api/file={served}")[0] == 200
    finally:
        proc.terminate()
        proc.wait(HANG_GUARD_S)


@pytest.mark.slow
@pytest.mark.browser
def test_the_login_page_and_the_demo_behind_it_work_in_a_browser(browser, predictor):
    """The gate lets through what the login page needs, and after the login everything the demo needs."""
    demo = launched(predictor, auth=(USER, PASSWORD))
    page = browser.new_page()
    page.set_default_timeout(60_000)
    refused = []
    page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
    try:
        page.goto(demo.local_url)
        page.locator("input[type=password]").fill(PASSWORD)
        page.locator("input").first.fill(USER)
        page.get_by_role("button", name="Login").click()
        page.locator("input[type=file]").first.set_input_files(example_files()[0])
        label = page.locator("[data-testid='label-output-value']").first
        label.wait_for(state="visible")
        assert label.inner_text().strip()
        page.locator("#gradcam img").first.wait_for(state="visible")  # a file route, behind the login
        assert refused == []
    finally:
        page.close()
        demo.close()
