"""Run the web application with uvicorn: ``cifarkit serve RUN``."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import uvicorn
from uvicorn.server import STARTUP_FAILURE

from cifarkit.errors import CifarkitError
from cifarkit.runs import read_config
from cifarkit.serve.app import create_app
from cifarkit.serve.backends import check_backend, load_classifier
from cifarkit.serve.security import API_KEY_ENV, check_bind
from cifarkit.serve.settings import ServeSettings

log = logging.getLogger("cifarkit.serve")

BACKLOG = 2048
"""Connections the kernel holds for the server before it accepts them (uvicorn's default)."""


def serve(
    run_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "torch",
    device: str = "auto",
    tta: str | None = None,
    model_file: str | Path | None = None,
    settings: ServeSettings | None = None,
    max_connections: int = 128,
) -> None:
    """Serve a run until interrupted (Ctrl-C shuts down cleanly, finishing requests in flight).

    The API key is ``settings.api_key``, else ``$CIFARKIT_API_KEY``; without one only loopback addresses serve.
    """
    settings = settings or ServeSettings()
    settings = replace(settings, api_key=settings.api_key or os.environ.get(API_KEY_ENV) or None)
    _addresses(host, port)  # an address that is not one is said first, before the API key is asked for
    check_bind(host, settings.api_key)
    check_backend(backend, device, model_file)
    read_config(run_dir)  # not a run, or a damaged config: said before the port is taken
    sockets = listen(host, port)  # a port in use is an error before the model is loaded
    with contextlib.ExitStack() as closing:
        for sock in sockets:
            closing.enter_context(sock)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        classifier = load_classifier(run_dir, backend=backend, device=device, tta=tta, model_file=model_file)
        info = classifier.info
        fields = [info[key] for key in ("run", "recipe", "backend", "device", "precision", "tta")]
        log.info("serving %s (%s): %s backend on %s, %s, TTA %s; test accuracy %s", *fields, _accuracy(info))
        log.info(
            "page at http://%s:%d/ , API docs at /docs%s",
            _url_host(host),
            port,
            "; /v1/ requests need 'Authorization: Bearer KEY'" if settings.api_key else "",
        )
        options = dict(access_log=False, log_level="info", limit_concurrency=max_connections, server_header=False)
        server = uvicorn.Server(uvicorn.Config(create_app(classifier, settings), **options))
        with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run: Ctrl-C has shut the server down cleanly
            server.run(sockets=sockets)
    if not server.started:  # the application failed to start; uvicorn logged why
        sys.exit(STARTUP_FAILURE)


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on ``host`` (every address it resolves to) and ``port``, for uvicorn to serve on.

    Bound before the model is loaded, so a port in use is a one-line :class:`CifarkitError`.
    """
    where = f"{_url_host(host)}:{port}"
    addresses = _addresses(host, port)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # as asyncio: a family this machine lacks (IPv6 switched off) is skipped
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart at once after a stop
            if family == socket.AF_INET6:  # as asyncio: the IPv4 addresses get their own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            # Listening now, not when uvicorn starts: SO_REUSEADDR lets two sockets that merely bind share a port,
            # so a second server on it would pass here and fail later. Clients that connect while the model
            # loads wait in the backlog instead of being refused.
            sock.listen(BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise CifarkitError(f"cannot listen on {where} ({exc.strerror or exc}); {_bind_fix(exc)}") from None
    if not sockets:
        raise CifarkitError(f"cannot listen on {where} (no usable address); {_bind_fix(OSError())}")
    return sockets


def _addresses(host: str, port: int) -> list[tuple]:
    """What ``host`` resolves to for listening on ``port``; a host that is no address or name is one line."""
    name = host.strip("[]") or None  # "" and None: every interface, as uvicorn and asyncio take them
    try:
        return socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise CifarkitError(
            f"cannot listen on {_url_host(host)}:{port} ({reason}); give --host an address or name of this machine, "
            "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        ) from None


def _bind_fix(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "choose another --port (another program, or another cifarkit serve, listens there)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "choose a --port above 1023 (lower ones need administrator rights)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "give --host an address of this machine, e.g. 127.0.0.1 or 0.0.0.0 (every interface)"
    return "choose another --host or --port"


def _accuracy(info: dict) -> str:
    if info.get("test_acc") is None:
        return "not evaluated (run `cifarkit evaluate RUN`)"
    text = f"{info['test_acc']:.2%}"
    if info.get("test_acc_tta") is not None:
        text += f" ({info['test_acc_tta']:.2%} with TTA)"
    return text


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
