"""Images per second decoding a PNG class-folder tree: one thread, as cifarkit decodes, against a thread pool.

cifarkit decodes a folder tree once (the cache keeps the pixels), on one
thread: Pillow releases the GIL only while it inflates the pixels, a small part
of each 32x32 image's cost, so decoding threads mostly wait for each other.
This measures that choice on this machine: the same files decoded one after
another and by pools of 2 and os.cpu_count() threads (chunks of 500 images),
each timing the faster of ``--repeats`` passes, files already in the page cache.

    python benchmarks/decode.py --data ../shared/data/cifar10 --images 10000 \\
        --json benchmarks/results/issue25/decode_threads.json
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cifarkit.data.sources import _decode_image, _list_split
from cifarkit.files import write_json
from provenance import record

CHUNK = 500


def _decode_all(files: list[Path]) -> None:
    for path in files:
        _decode_image(path)


def images_per_second(files: list[Path], threads: int, repeats: int) -> float:
    """The faster of ``repeats`` passes over ``files`` on ``threads`` threads (1: no pool), in images per second."""
    chunks = [files[start : start + CHUNK] for start in range(0, len(files), CHUNK)]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        if threads == 1:
            _decode_all(files)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(_decode_all, chunks))
        best = min(best, time.perf_counter() - started)
    return len(files) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CIFARKIT_DATA"), help="CIFAR-10 class-folder tree")
    parser.add_argument("--images", type=int, default=10_000, help="test images to decode per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes per setting; the fastest counts")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not args.data:
        parser.error("name the CIFAR-10 folder tree with --data or $CIFARKIT_DATA")
    files = _list_split(Path(args.data) / "test")[0][: args.images]
    _decode_all(files)  # into the page cache, so that every setting reads from memory
    settings = sorted({1, 2, os.cpu_count() or 1})
    rates = {threads: images_per_second(files, threads, args.repeats) for threads in settings}
    for threads, rate in rates.items():
        print(f"{threads} thread{'s' if threads > 1 else ''}: {rate:,.0f} images/s ({rate / rates[1]:.2f}x one)")
    if args.json:
        result = {**record(threads=1), "images": len(files), "images_per_second": {str(t): r for t, r in rates.items()}}
        write_json(args.json, result)


if __name__ == "__main__":
    main()
