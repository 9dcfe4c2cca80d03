"""Run the web application with uvicorn: ``cifarkit serve RUN``."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import uvicorn

from cifarkit.serve.app import create_app
from cifarkit.serve.backends import load_classifier
from cifarkit.serve.security import API_KEY_ENV, check_bind
from cifarkit.serve.settings import ServeSettings

log = logging.getLogger("cifarkit.serve")


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

    The API key is ``settings.api_key``, else ``$CIFARKIT_API_KEY``; without
    one the server binds to loopback addresses only. More than
    ``max_connections`` open connections are answered 503 by uvicorn.
    """
    settings = settings or ServeSettings()
    settings = replace(settings, api_key=settings.api_key or os.environ.get(API_KEY_ENV) or None)
    check_bind(host, settings.api_key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    classifier = load_classifier(run_dir, backend=backend, device=device, tta=tta, model_file=model_file)
    info = classifier.info
    log.info(
        "serving %s (%s): %s backend on %s, %s, TTA %s; test accuracy %s",
        info["run"],
        info["recipe"],
        info["backend"],
        info["device"],
        info["precision"],
        info["tta"],
        _accuracy(info),
    )
    log.info(
        "page at http://%s:%d/ , API docs at /docs%s",
        _url_host(host),
        port,
        "; /v1/ requests need 'Authorization: Bearer KEY'" if settings.api_key else "",
    )
    uvicorn.run(
        create_app(classifier, settings),
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        limit_concurrency=max_connections,
        server_header=False,
    )


def _accuracy(info: dict) -> str:
    if info.get("test_acc") is None:
        return "not evaluated (run `cifarkit evaluate RUN`)"
    text = f"{info['test_acc']:.2%}"
    if info.get("test_acc_tta") is not None:
        text += f" ({info['test_acc_tta']:.2%} with TTA)"
    return text


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
