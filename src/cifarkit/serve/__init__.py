"""Serve a trained run over HTTP: a FastAPI application, dynamic batching, a page, and its safeguards.

Modules: ``backends`` (the model), ``batching``, ``app`` (routes; ``page.html`` at ``/``), ``security``,
``settings`` (importable without FastAPI) and ``server`` (uvicorn). Needs ``cifarkit[serve]``; this package
imports nothing itself, so that ``cifarkit --help`` stays fast.
"""
