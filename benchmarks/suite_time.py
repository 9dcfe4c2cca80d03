"""Seconds of the test suite at an earlier commit and now, one after the other on the same machine, as a ratio.

The suite's time moves with the host's speed (the same 2-core kind ran it 8%
apart within an hour), so a figure from one run says little beside one from
another. This runs the suite of ``--base`` (checked out into a temporary git
worktree) and of this working tree in turn, ``--rounds`` times, with each
Python named by ``--python`` (a virtual environment with the dev extra; each
checkout's ``src`` comes first on PYTHONPATH, so an editable install elsewhere
does not matter), and prints pytest's own seconds and now / base. The
machine's matmul throughput is measured before and after: a drift between
them is a drift of the host. Run it alone on the machine.

    python benchmarks/suite_time.py --base d8add3b --data ../shared/data/cifar10 \\
        --python /work/venv214/bin/python /work/venv/bin/python --json benchmarks/results/issue25/suite_time.json
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from cifarkit.files import write_json
from cifarkit.runtime import machine_record
from provenance import REPO, record


def suite_seconds(python: str, checkout: Path, data: str) -> float:
    """pytest's own count of seconds for the whole suite of ``checkout``; a failing suite stops the benchmark."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "CIFARKIT_DATA": data}
    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=checkout, env=env, capture_output=True, text=True
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()
    found = re.search(r" in ([\d.]+)s", last)
    if done.returncode or not found:
        raise SystemExit(f"the suite of {checkout} with {python} did not pass: {last}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--python", nargs="+", required=True, help="the Python of each environment to time in")
    parser.add_argument("--data", default=os.environ.get("CIFARKIT_DATA"), help="CIFAR-10, as CIFARKIT_DATA")
    parser.add_argument("--rounds", type=int, default=1, help="base-then-now rounds per Python")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not args.data:
        parser.error("name CIFAR-10 with --data or $CIFARKIT_DATA: the suite's real-data tests need it")
    base_commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.base}^{{commit}}"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    if not base_commit:
        parser.error(f"--base {args.base} is no commit of this repository")
    before = machine_record(threads=2)["matmul_gflops"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), base_commit], cwd=REPO, check=True)
        try:
            for python in args.python:
                torch = subprocess.run(
                    [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
                ).stdout.strip()
                times = {"base": [], "now": []}
                for _ in range(args.rounds):
                    for which, checkout in (("base", base), ("now", REPO)):
                        times[which].append(suite_seconds(python, checkout, args.data))
                        print(f"torch {torch}, {which}: {times[which][-1]:.1f} s", flush=True)
                ratio = statistics.mean(times["now"]) / statistics.mean(times["base"])
                print(f"torch {torch}: now / base = {ratio:.2f}")
                results[torch] = {**times, "now_over_base": ratio}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO)
    result = {**record(threads=2), "base": base_commit, "suites": results, "matmul_gflops_before": before}
    print(f"matmul GFLOP/s on 2 threads: before {before}, after {result['machine']['matmul_gflops']}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
