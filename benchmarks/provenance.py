"""What every results file records beside its figures: the command, the commit, the date and the machine.

Each benchmark here puts ``record(threads)`` at the top level of the JSON it
writes, so that the file says how it was made and where:

    {"command": "python benchmarks/...", "commit": "<git rev-parse HEAD>", "dirty": false,
     "date": "2026-12-02T10:00:00+00:00",
     "machine": {"cpu_model", "cpu_kind", "cores", "threads", "torch", "matmul_gflops": {"float32", "bfloat16"}}, ...}

``machine`` is :func:`cifarkit.runtime.machine_record`, which measures this
machine's float32 and bfloat16 matmul throughput (about a second): the same
CPU kind runs at different speeds on different hosts, so minutes measured on
one machine are read beside that machine's throughput. ``benchmarks/tables.py``
reads these keys to generate the tables in README.md and docs/; a file that
records them needs no entry in ``benchmarks/results/index.json``.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cifarkit.runtime import machine_record

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> tuple[str | None, bool | None]:
    """The checked-out commit and whether the working tree differs from it (None, None outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return head.stdout.strip(), bool(status.stdout.strip())


def record(threads: int | None = None) -> dict[str, Any]:
    """The keys every results file carries: command, commit (and whether the tree was dirty), date, machine."""
    commit, dirty = git_commit()
    return {
        "command": shlex.join(["python", *sys.argv]),
        "commit": commit,
        "dirty": dirty,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_record(threads),
    }
