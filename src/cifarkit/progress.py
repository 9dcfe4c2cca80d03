"""Progress bars as cifarkit shows them: live on a terminal, a line every few seconds in a log file.

tqdm refreshes a bar up to ten times a second; written to a file (``cifarkit
train ... 2> log``, a batch job, CI) that is thousands of lines for nothing.
Every bar of cifarkit comes from :func:`progress_bar`, which refreshes at most
every :data:`LOG_INTERVAL_S` seconds when standard error is not a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 10.0


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on standard error, refreshed twice a second on a terminal and every 10 s elsewhere."""
    interval = 0.5 if sys.stderr.isatty() else LOG_INTERVAL_S
    return tqdm(iterable, mininterval=interval, dynamic_ncols=True, **kwargs)
