"""Where `petclf serve` listens and who may use it: checked before anything heavy (torch, Gradio, the model)
loads, so a bad --port, --host or --auth is one line at once.

    from petclf.address import check_address, parse_auth
    check_address("127.0.0.1", 7860)                  # ServeError (one line) if it cannot be listened on
    parse_auth("ann:secret")                          # ("ann", "secret")
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from petclf.errors import PetclfError


class ServeError(PetclfError):
    """The demo cannot listen where it was asked to."""


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`USER:PASS` -> (user, password) for Gradio's login page."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not (user and sep and password):
        raise ServeError("--auth (or PETCLF_AUTH) takes USER:PASS (both non-empty)")
    return user, password


def check_address(host: str, port: int) -> None:
    """Fail with one line, before the model loads, when `host:port` cannot be listened on."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port} is not a valid port (1-65535)")
    bad = f"--host {host} is not a valid address (an IP address such as 127.0.0.1 or 0.0.0.0, or a host name)"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        # 256.1.1.1 is no host name either; never ask DNS about it
        if not host or host.replace(".", "").isdigit():
            raise ServeError(bad) from None
        family = socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is not in use
        try:
            s.bind((host, port))
        except socket.gaierror:
            raise ServeError(bad) from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} is in use on {host}: pass another with --port") from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise ServeError(f"--host {host} is not an address of this machine") from None
            if e.errno == errno.EACCES:
                raise ServeError(f"port {port} needs root: pass one above 1023 with --port") from None
            raise


def exposure_warning(host: str, share: bool, auth: tuple[str, str] | None) -> str | None:
    """A line to print when anyone beyond this machine can reach the demo without logging in."""
    if auth is not None:
        return None
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = host == "localhost"
    if local and not share:
        return None
    where = "its public gradio.live link" if share else f"{host} (every address of this machine)" \
        if host in ("0.0.0.0", "::") else host
    return (f"warning: anyone who can reach {where} can use the demo, with no login; add --auth USER:PASS to "
            "require one")
