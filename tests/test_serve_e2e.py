"""End to end: the real server on a free loopback port, its page in headless Chromium, a clean Ctrl-C.

Chromium is Debian's (``apt-get install -y chromium``), driven by Playwright's
Python package through ``executable_path`` (no browser download); the test is
skipped, saying why, where either is missing, and fails in CI, which has both.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest

from cifarkit.recipes import get_recipe
from cifarkit.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import synthetic_cifar

    return train(
        get_recipe("seed_cnn3").replace(epochs=1, bf16=False),
        synthetic_cifar(),
        tmp_path_factory.mktemp("runs") / "e2e",
        progress=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """``cifarkit serve`` in a subprocess, one for the module (each start loads torch and the model, seconds); yields
    (base URL, process, log file). The Ctrl-C test, last in the module, stops it."""
    port, log = free_port(), tmp_path_factory.mktemp("server") / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cifarkit.cli",
                "serve",
                str(run),
                "--port",
                str(port),
                "--device",
                "cpu",
                "--threads",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # torch and the model load slowly on a busy machine
        with httpx2.Client(timeout=2) as client:  # one client: each new one loads the CA certificates again
            while not healthy(client, url):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start (exit status {process.poll()}):\n{log.read_text()}")
                time.sleep(0.05)
        yield url, process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def healthy(client: httpx2.Client, url: str) -> bool:
    try:
        return client.get(f"{url}/health").status_code == 200
    except httpx2.TransportError:
        return False


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no chromium on PATH: install it with `apt-get install -y chromium` to test the page")
    return path


def test_page_shows_the_prediction_and_its_bars(server, real_data_path, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package drives Chromium here")
    browser_path = chromium()
    url, _, _ = server
    image = sorted((Path(real_data_path) / "test" / "cat").glob("*.png"))[0]
    expected = httpx2.post(
        f"{url}/v1/predict", files={"file": (image.name, image.read_bytes())}, data={"top_k": "10"}
    ).json()["results"][0]["predictions"]

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: None if r.url.startswith((url, "blob:", "data:")) else problems.append(r.url))
            page.goto(f"{url}/")
            # Locator assertions, not wait_for_function: Playwright polls a string predicate with eval, which the
            # page's Content-Security-Policy (no 'unsafe-eval') rightly blocks in newer Playwright releases.
            sync_api.expect(page.locator("#model")).to_contain_text("e2e")
            page.set_input_files("#files", str(image))
            page.wait_for_selector(".result:not(.pending) .bars")
            sync_api.expect(page.locator(".bar.top .fill")).not_to_have_attribute("style", re.compile(r"width:\s*0%"))
            verdict = page.inner_text(".result .verdict")
            bars = page.eval_on_selector_all(
                ".bar", "rows => rows.map(r => [r.dataset.class, parseFloat(r.querySelector('.fill').style.width)])"
            )
            shown = page.eval_on_selector(".result img", "img => img.complete && img.naturalWidth")
            page.screenshot(path=str(tmp_path / "page.png"))
        finally:
            browser.close()

    assert verdict.lower().startswith(expected[0]["class"])
    assert [name for name, _ in bars] == [p["class"] for p in expected]
    assert [width for _, width in bars] == pytest.approx([p["probability"] * 100 for p in expected], abs=1e-3)
    assert shown == 32  # the uploaded CIFAR-10 image itself is on the page
    assert problems == []  # no console errors, nothing fetched from anywhere else


def test_logs_each_request_and_stops_cleanly_on_ctrl_c(server):
    url, process, log = server
    assert httpx2.get(f"{url}/health").status_code == 200
    assert httpx2.post(f"{url}/v1/predict", files={"file": ("x.txt", b"not an image")}).status_code == 400
    process.send_signal(signal.SIGINT)
    status = process.wait(timeout=120)
    text = log.read_text()
    assert status == 0, text
    assert "GET /health 200" in text and "POST /v1/predict 400" in text, text
    assert "Finished server process" in text and "Traceback" not in text, text
