"""Wall time and peak memory of one whole command, as a user runs it, recorded with the machine it ran on.

The README's time and memory for the default command come from here: the
command runs in a fresh process, its output goes to a log beside the JSON,
and the kernel's accounting of that process (``ru_maxrss`` from ``wait4``;
children too, which the training command has none of) gives the peak.

    python benchmarks/whole_command.py --json benchmarks/results/issue18/default_command_avx2.json \
        --copy-run /tmp/default-run -- cifarkit train --data ../shared/data/cifar10 --out /tmp/default-run

Run it alone on the machine; with ``--copy-run DIR`` the run's config.json, metrics.json
and eval/metrics.json are copied beside the JSON, so that the recipe and the accuracy sit
with the time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cifarkit.files import write_json
from cifarkit.runtime import machine_info
from provenance import record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="write the results here (the log goes beside it, .log)")
    parser.add_argument(
        "--copy-run", help="a run directory the command writes: its config.json and metrics.json are kept too"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("give the command after --")
    out = Path(args.json)
    provenance = record()  # before the command: it measures the matmul throughput
    machine = machine_info()
    print(f"{machine['cpu_model']}, {machine['cpu_kind']}, {os.cpu_count()} cores: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    result = {
        **provenance,  # its command is this benchmark's whole command line; measured_command is what it timed
        "measured_command": command,
        "exit_status": os.waitstatus_to_exitcode(status),
        "wall_seconds": seconds,
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "runtime": machine,
    }
    for name in ("config.json", "metrics.json", "eval/metrics.json") if args.copy_run else ():
        if (Path(args.copy_run) / name).is_file():
            shutil.copy(Path(args.copy_run) / name, out.with_name(f"{out.stem}_{name.replace('/', '_')}"))
    write_json(out, result)
    print(f"{seconds / 60:.1f} min, peak {result['peak_rss_mb']:,} MB, exit {result['exit_status']}")
    sys.exit(result["exit_status"])


if __name__ == "__main__":
    main()
