"""Serve a trained run over HTTP: a FastAPI application, dynamic batching, a page, and its safeguards.

* :mod:`cifarkit.serve.backends`: the run's model as a function from images to probabilities (PyTorch or ONNX
  Runtime), with its identity.
* :mod:`cifarkit.serve.batching`: requests that arrive together share one forward pass; a bounded queue.
* :mod:`cifarkit.serve.app`: routes, limits, JSON errors, request log; ``page.html`` is the page at ``/``.
* :mod:`cifarkit.serve.security`: loopback by default, a bearer API key for anything wider.
* :mod:`cifarkit.serve.settings`: the limits, importable without FastAPI (the CLI shows their defaults).
* :mod:`cifarkit.serve.server`: uvicorn, for ``cifarkit serve``.

Needs the ``cifarkit[serve]`` extra (FastAPI, uvicorn, python-multipart, ONNX, onnxruntime). This package
imports nothing itself, so that ``cifarkit --help`` stays fast.
"""
