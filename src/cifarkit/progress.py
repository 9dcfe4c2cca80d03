"""Progress bars as cifarkit shows them: live on a terminal, a line every few seconds in a log, a widget in Jupyter.

tqdm refreshes up to ten times a second, thousands of lines in a log; :func:`progress_bar` refreshes every
:data:`LOG_INTERVAL_S` seconds when standard error is not a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm
from tqdm.asyncio import tqdm as console_tqdm
from tqdm.auto import tqdm as auto_tqdm

LOG_INTERVAL_S = 10.0
NOTEBOOK = auto_tqdm is not console_tqdm
"""Whether bars are notebook widgets: tqdm.auto chose its notebook bar (in Jupyter, with ipywidgets installed)."""


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar: a widget in Jupyter; on standard error, refreshed twice a second on a terminal, else every 10 s."""
    live = NOTEBOOK or sys.stderr.isatty()  # a widget redraws in place, like a terminal bar
    return auto_tqdm(iterable, mininterval=0.5 if live else LOG_INTERVAL_S, dynamic_ncols=True, **kwargs)
