"""The ASGI guards in front of the demo: who may ask, how much they may send, and how often.

    from petclf.guards import Limits, middleware
    demo.launch(..., auth=("ann", "pw"), app_kwargs={"middleware": middleware(Limits())})

ASGI middleware in front of Gradio's app (outermost first): a client that drops an upload part-way is one
log line; a body over `max_request_bytes` gets 413 unread; `/login` answers 429 after `login_failures` wrong
passwords from one client within `login_lockout` seconds; with a login set, every route but the login page
and its static files answers 401 without it; request bodies count against a budget per client and in all per
`window` seconds, and an upload that would take Gradio's cache over `cache_bytes` is refused (429). Each
refusal is one log line. `petclf.serve` sets them up with the demo's own limits (`LIMITS`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, HTTPConnection

log = logging.getLogger("petclf.serve")

PUBLIC_PATHS = ("/", "/login", "/login/", "/theme.css", "/favicon.ico",  # the login page: served without a login
                "/gradio_api/startup-events")  # `launch` calls it to start the queue; it runs once
PUBLIC_PREFIXES = ("/assets/", "/static/")  # Gradio's own front-end files (JS, CSS, fonts), the same for everyone
UPLOAD_PATH = "/gradio_api/upload"  # the one route that writes visitors' files into the cache


@dataclass(frozen=True)
class Limits:
    """What one client, and all of them, may ask of the server; the defaults are `petclf serve`'s."""

    max_request_bytes: int = 28 * 2**20  # a body over this is refused (413) unread; serve.py sets it
    window: float = 60.0  # seconds over which request bodies are counted, per client and in all
    client_bytes: int = 256 * 2**20  # bytes one client may send per window (a dozen 20 MB photos); then 429
    total_bytes: int = 1024 * 2**20  # bytes all clients together may send per window; then 429
    cache_bytes: int = 2 * 2**30  # Gradio's cache is never grown past this by an upload (429 instead)
    stale_seconds: float = 900.0  # a half-written upload left by a dropped client is deleted after this
    login_failures: int = 5  # wrong passwords one client may send within `login_lockout` seconds; then 429
    login_lockout: float = 60.0  # seconds a client that used up its tries waits before it may try again


def client_of(scope: dict) -> str:
    """The client's address (the proxy's, behind a reverse proxy: every visitor then shares one budget)."""
    return (scope.get("client") or ("unknown", 0))[0]


async def refuse(send: Any, status: int, msg: str, retry_after: float | None = None) -> None:
    """Answer `status` with one JSON line, the body unread, and log that line."""
    log.warning("request refused: %s", msg)
    body = json.dumps({"detail": msg}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % max(1, round(retry_after))))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def declared_length(scope: dict) -> int:
    """The request's Content-Length, 0 when it declares none."""
    value = dict(scope["headers"]).get(b"content-length", b"")
    return int(value) if value.isdigit() else 0


class QuietDisconnect:
    """A client that goes away in the middle of its upload is an everyday event: one log line, not Gradio's
    73-line traceback."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            log.warning("request dropped part-way by %s: %s %s", client_of(scope), scope.get("method"),
                        scope.get("path"))


class BodyLimit:
    """A request whose declared body (Content-Length) is over `max_bytes` gets 413 before any of it is read. A
    body without a declared length (chunked) gets 411: browsers and gradio_client always declare it, and the
    server (h11) never passes on more bytes than were declared."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            n = declared_length(scope)
            if n > self.max_bytes:
                return await refuse(send, 413, f"request body is {n:,} bytes, over the {self.max_bytes:,}-byte limit")
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                return await refuse(send, 411, "request body has no Content-Length; send one")
        await self.app(scope, receive, send)


def recent(times: deque, now: float, age: float) -> deque:
    """`times` ((t, ...) tuples, oldest first) without the entries older than `age` seconds."""
    while times and now - times[0][0] > age:
        times.popleft()
    return times


class LoginThrottle:
    """`/login` from a client that sent `failures` wrong passwords in the last `lockout` seconds gets 429
    until the oldest of them is that old; the right password then works again."""

    def __init__(self, app: Any, failures: int, lockout: float):
        self.app, self.failures, self.lockout = app, failures, lockout
        self.failed: dict[str, deque] = {}  # client -> times of its recent wrong passwords

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in ("/login", "/login/") or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        client, now = client_of(scope), time.monotonic()
        failed = recent(self.failed.setdefault(client, deque()), now, self.lockout)
        if len(failed) >= self.failures:
            wait = failed[-self.failures][0] + self.lockout - now
            return await refuse(send, 429, f"too many wrong logins from {client}: try again in {wait:.0f} s", wait)

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    self.failed.pop(client, None)
                elif 400 <= message["status"] < 500:
                    failed.append((time.monotonic(),))
                    log.warning("login refused: wrong user or password from %s (%d of %d tries)", client,
                                len(failed), self.failures)
            await send(message)

        await self.app(scope, receive, watch)
        if not failed:
            self.failed.pop(client, None)  # keeps the table to the clients that failed lately


def logged_in(scope: dict) -> bool:
    """True when Gradio's app wants no login, or the request carries the cookie of one it gave out."""
    app = scope.get("app")
    if getattr(app, "auth", None) is None and getattr(app, "auth_dependency", None) is None:
        return True
    cookies = HTTPConnection(scope).cookies
    token = cookies.get(f"access-token-{app.cookie_id}") or cookies.get(f"access-token-unsecure-{app.cookie_id}")
    return token is not None and app.tokens.get(token) is not None


def is_public(path: str) -> bool:
    """The login page and Gradio's static front-end files: what a browser needs to show the login form."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthGate:
    """With a login set, every route but the login page answers 401 without it: Gradio checks the login route
    by route, and some (the API schema, heartbeats, cancel, streams, the manifest) it does not check."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and not is_public(scope["path"]) and not logged_in(scope):
            if scope["type"] == "websocket":
                log.warning("request refused: no login for websocket %s from %s", scope["path"], client_of(scope))
                return await send({"type": "websocket.close", "code": 1008})
            return await refuse(send, 401, f"log in first (at /): {scope['method']} {scope['path']} "
                                           f"from {client_of(scope)} has no login")
        await self.app(scope, receive, send)


def cache_size(folder: Path, stale_seconds: float) -> int:
    """Bytes of the files under `folder`; files at its top (uploads being written, or left half-written by a
    client that went away) older than `stale_seconds` are deleted first."""
    total, now = 0, time.time()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if root == str(folder) and now - st.st_mtime > stale_seconds:
                    os.unlink(path)
                    continue
            except OSError:
                continue  # deleted meanwhile by Gradio's own cleanup
            total += st.st_size
    return total


class UploadBudget:
    """Request bodies count against `client_bytes` per client and `total_bytes` in all per `window` seconds;
    an upload that would take Gradio's cache over `cache_bytes` is refused. Refusals are 429 with a
    Retry-After."""

    def __init__(self, app: Any, limits: Limits):
        self.app, self.limits = app, limits
        self.sent: deque = deque()  # (time, client, bytes) of the requests admitted within the window

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        n = declared_length(scope) if scope["type"] == "http" else 0
        if n:
            if why := self.over(scope, n):
                msg, wait = why
                return await refuse(send, 429, msg, wait)
            self.sent.append((time.monotonic(), client_of(scope), n))
        await self.app(scope, receive, send)

    def over(self, scope: dict, n: int) -> tuple[str, float] | None:
        """(why, seconds to wait) when admitting `n` more bytes from this client would pass a limit, else
        None."""
        lim, client, now = self.limits, client_of(scope), time.monotonic()
        sent = recent(self.sent, now, lim.window)
        mine = [(t, k) for t, c, k in sent if c == client]
        if sum(k for _, k in mine) + n > lim.client_bytes:
            return (f"upload budget used: {client} may send {lim.client_bytes // 2**20} MB per "
                    f"{lim.window:.0f} s", mine[0][0] + lim.window - now if mine else lim.window)
        if sum(k for _, _, k in sent) + n > lim.total_bytes:
            return (f"the demo takes {lim.total_bytes // 2**20} MB per {lim.window:.0f} s from all visitors "
                    "together: try again shortly", sent[0][0] + lim.window - now if sent else lim.window)
        folder = getattr(scope.get("app"), "uploaded_file_dir", None)
        full = scope["path"] == UPLOAD_PATH and folder and \
            cache_size(Path(folder), lim.stale_seconds) + n > lim.cache_bytes
        if full:
            return f"the demo's upload cache is full ({lim.cache_bytes // 2**20} MB): try again later", lim.window
        return None


def middleware(limits: Limits) -> list[Middleware]:
    """The guards in front of Gradio's app, outermost first (see the module docstring)."""
    return [Middleware(QuietDisconnect), Middleware(BodyLimit, max_bytes=limits.max_request_bytes),
            Middleware(LoginThrottle, failures=limits.login_failures, lockout=limits.login_lockout),
            Middleware(AuthGate), Middleware(UploadBudget, limits=limits)]
