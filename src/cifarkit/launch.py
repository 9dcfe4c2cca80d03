"""``python -m cifarkit.launch``: torchrun, with a failed launch told in one line per failed rank.

It takes torchrun's own arguments and prints, instead of torchrun's traceback and summary, one
``cifarkit: error: rank R ...`` line per failed rank, the first failure first; exit status 1. It tells its workers
its process id, the process they must not outlive (:func:`cifarkit.runtime.stop_with_launcher`).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from cifarkit.runtime import LAUNCHER_ENV

    os.environ[LAUNCHER_ENV] = str(os.getpid())  # the workers inherit the launcher's environment
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as failed:
        first, _ = failed.get_first_failure()
        for rank in sorted(failed.failures, key=lambda r: r != first):
            failure = failed.failures[rank]
            how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited {failure.exitcode}"
            cause = "failed first" if rank == first else "was stopped after it"
            print(
                f"cifarkit: error: rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) {how}: {cause}",
                file=sys.stderr,
            )
        sys.exit(1)


if __name__ == "__main__":
    main()
