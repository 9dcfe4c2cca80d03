"""``python -m cifarkit.launch``: torchrun, with a failed launch told in one line per failed rank.

It takes torchrun's own arguments (``python -m cifarkit.launch --standalone
--nproc_per_node=2 -m cifarkit train ...``) and runs torchrun's launcher in
this process. When a worker fails or is killed, torchrun itself ends with a
Python traceback of its own code and a 20-line summary; this prints instead
``cifarkit: error: rank R (local rank L on HOST) ...`` for each failed rank,
first the one that failed first, and exits with status 1.

It also tells its workers its process id, so that each knows for sure which
process it must not outlive (see :func:`cifarkit.distributed.stop_with_launcher`).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from cifarkit.distributed import LAUNCHER_ENV

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
