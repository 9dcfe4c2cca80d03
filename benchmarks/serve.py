"""Serving speed of runs in PyTorch and ONNX Runtime: in-process latency and throughput, and a load test over HTTP.

For every run, backend (``torch``, ``onnx``) and TTA setting (the recipe's,
and ``none``):

* in-process: the function the server's batcher calls (uint8 images in,
  probabilities out; decoding excluded): single-image latency p50/p99 over
  ``--calls`` calls, and batched throughput at ``--batch-size`` images;
* over HTTP: the real server (``cifarkit serve``, a subprocess on a free
  loopback port) answering a 32x32 PNG test image: one client's sequential
  requests (p50/p99, everything a client waits for: HTTP, multipart parsing,
  decoding, batching, the model, JSON), then a bounded load test of
  ``--requests`` requests from ``--clients`` concurrent clients (requests/s,
  p50/p99 and the count of errors, which should be zero).

Latency and throughput do not depend on the weights, so briefly trained runs
measure the same as fully trained ones. ONNX files are exported into a
temporary folder (never into the runs), with their parity checked on
CIFAR-10 test images. The first line printed describes the machine; the
load average beside it says how busy it was.

    python benchmarks/serve.py RUN [RUN ...] --threads 2 --data /path/to/cifar10 [-o results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import numpy as np
import torch
from PIL import Image

from cifarkit.data import load_cifar10
from cifarkit.export import export_model, sample
from cifarkit.files import write_json
from cifarkit.runs import read_config
from cifarkit.runtime import keep_freed_memory, machine_info
from cifarkit.serve.backends import load_classifier
from provenance import record


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3)}


def in_process(
    predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, calls: int, batch_size: int
) -> dict[str, float]:
    """Single-image latency percentiles and batched images/s of ``predict`` (after warm-up calls)."""
    one, batch = images[:1], images[:batch_size]
    for x in (one, one, batch):
        predict(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict(one)
        times.append(time.perf_counter() - start)
    start, done = time.perf_counter(), 0
    while done < 4 * batch_size or time.perf_counter() - start < 3:
        predict(batch)
        done += len(batch)
    return {**percentiles_ms(times), "images_per_s": done / (time.perf_counter() - start)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, backend: str, tta: str, model_file: Path | None, threads: int | None) -> tuple:
    """``cifarkit serve`` in a subprocess on a free loopback port; returns (process, base URL) once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "cifarkit.cli", "serve", run, "--port", str(port), "--backend", backend]
    command += ["--tta", tta] + (["--model-file", str(model_file)] if model_file else [])
    command += ["--threads", str(threads)] if threads else []
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read()}")
        try:
            if httpx2.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx2.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start within 2 minutes")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def sequential(url: str, png: bytes, calls: int) -> dict[str, float]:
    """One client, one image per request, one request at a time."""
    times = []
    with httpx2.Client(base_url=url, timeout=30) as client:
        for i in range(calls + 5):
            start = time.perf_counter()
            client.post("/v1/predict", files={"file": ("test.png", png)}).raise_for_status()
            if i >= 5:  # the first few open the connection and warm the path
                times.append(time.perf_counter() - start)
    return percentiles_ms(times)


async def load_test(url: str, png: bytes, requests: int, clients: int) -> dict[str, float]:
    """``requests`` single-image requests shared among ``clients`` concurrent clients; errors are counted."""
    times: list[float] = []
    errors = 0
    remaining = iter(range(requests))

    async def client_loop(client: httpx2.AsyncClient) -> None:
        nonlocal errors
        for _ in remaining:
            start = time.perf_counter()
            try:
                response = await client.post("/v1/predict", files={"file": ("test.png", png)})
                errors += response.status_code != 200
            except httpx2.HTTPError:
                errors += 1
            times.append(time.perf_counter() - start)

    limits = httpx2.Limits(max_connections=clients)
    async with httpx2.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {
        "requests": requests,
        "clients": clients,
        "requests_per_s": requests / elapsed,
        **percentiles_ms(times),
        "errors": errors,
    }


def measure(
    run: str, backend: str, tta: str, model_file: Path | None, images: np.ndarray, png: bytes, args: argparse.Namespace
) -> dict:
    classifier = load_classifier(run, backend=backend, device="cpu", tta=tta, model_file=model_file)
    row = {
        "run": run,
        "recipe": classifier.info["recipe"],
        "backend": backend,
        "tta": tta,
        "precision": classifier.info["precision"],
        "in_process": in_process(classifier.predict, images, args.calls, args.batch_size),
    }
    del classifier
    process, url = start_server(run, backend, tta, model_file, args.threads)
    try:
        row["http_single"] = sequential(url, png, args.calls)
        row["http_load"] = asyncio.run(load_test(url, png, args.requests, args.clients))
    finally:
        stop_server(process)
    return row


def print_row(row: dict) -> None:
    p, h, load = row["in_process"], row["http_single"], row["http_load"]
    print(
        f"| {row['recipe']} | {row['backend']} | {row['tta']} | {row['precision']} | {p['p50_ms']:.2f} / "
        f"{p['p99_ms']:.2f} | {p['images_per_s']:,.0f} | {h['p50_ms']:.2f} / {h['p99_ms']:.2f} | "
        f"{load['requests_per_s']:,.0f} | {load['p50_ms']:.1f} / {load['p99_ms']:.1f} | {load['errors']} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument(
        "--data",
        help="CIFAR-10 location (default $CIFARKIT_DATA): test images to send and to check the ONNX exports on",
    )
    parser.add_argument("--backends", nargs="+", choices=["torch", "onnx"], default=["torch", "onnx"])
    parser.add_argument(
        "--tta",
        nargs="+",
        default=["recipe", "none"],
        help="TTA settings: 'recipe' (the run's), none, flip, flip_translate (default recipe none)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime, here and in the server")
    parser.add_argument("--calls", type=int, default=200, help="single-image calls and requests timed (default 200)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per in-process batch (default 256)")
    parser.add_argument("--requests", type=int, default=400, help="requests in the load test (default 400)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in the load test (default 8)")
    parser.add_argument("-o", "--output", help="also write the results as JSON")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    provenance = record(args.threads)
    info = machine_info("cpu")
    print(
        f"{info['cpu_model']} ({info['cpu_kind']}), {info['cores']} cores, {info['torch_threads']} threads, "
        f"torch {info['torch']}; load average {os.getloadavg()[0]:.2f} at the start",
        flush=True,
    )
    data = load_cifar10(args.data)
    images = sample(data.x_test, max(1000, args.batch_size))
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="PNG")
    print(
        "| recipe | backend | TTA | precision | in-process 1 image p50 / p99 ms | in-process batched images/s | "
        "HTTP 1 image p50 / p99 ms | load test requests/s | load test p50 / p99 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as exports:
        for run in args.runs:
            recipe_tta = read_config(run).get("tta", "none")
            for tta in dict.fromkeys(recipe_tta if t == "recipe" else t for t in args.tta):
                for backend in args.backends:
                    model_file = None
                    if backend == "onnx":
                        model_file = Path(exports) / f"{Path(run).name}-{tta}.onnx"
                        if not model_file.exists():
                            export_model(run, "onnx", images[:1000], out=model_file, tta=tta)
                    rows.append(measure(run, backend, tta, model_file, images, buf.getvalue(), args))
                    print_row(rows[-1])
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.output:
        write_json(args.output, {**provenance, "runtime": info, "results": rows})


if __name__ == "__main__":
    main()
