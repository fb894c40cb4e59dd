"""Progress of a long search: a live bar on a terminal, one plain line per update elsewhere.

Logs and CI captures get no carriage returns, backspaces or colour codes: each update is one
line such as ``eval 3/40  score 0.9123  12s``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Progress", "interactive"]


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) shows a live display: a terminal or a Jupyter kernel.

    Example:
        >>> import io
        >>> interactive(io.StringIO())
        False
    """
    stream = sys.stdout if stream is None else stream
    if stream is sys.stdout and "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Progress:
    """``update(done, values=[("score", s)])`` like ``keras.utils.Progbar``, plain lines when not interactive.

    Args:
        total: number of steps.
        verbose: 0 prints nothing.
        unit: the word for one step.
        stream: where to write (default stdout, looked up at each update).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = Progress(2, verbose=1, stream=out)
        >>> bar.update(1, values=[("score", 0.5)])
        >>> bar.update(2, values=[("score", 0.25)])
        >>> print(out.getvalue().replace("0s", "Ts"), end="")
        eval 1/2  score 0.5000  Ts
        eval 2/2  score 0.2500  Ts
    """

    def __init__(self, total: int, verbose: int = 1, unit: str = "eval", stream: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.verbose = verbose
        self.unit = unit
        self._stream = stream
        self._start = time.monotonic()
        self._bar: Any = None

    def update(self, done: int, values: Sequence[tuple[str, float]] | None = None) -> None:
        """Show that ``done`` of ``total`` steps are finished, with the latest ``values``."""
        if not self.verbose:
            return
        stream = sys.stdout if self._stream is None else self._stream
        if interactive(stream):
            if self._bar is None:
                import keras

                names = [name for name, _ in values or ()]
                self._bar = keras.utils.Progbar(self.total, verbose=1, stateful_metrics=names, unit_name=self.unit)
            self._bar.update(done, values=list(values or ()))
            return
        shown = "".join(f"  {name} {value:.4f}" for name, value in values or ())
        elapsed = time.monotonic() - self._start
        print(f"{self.unit} {done}/{self.total}{shown}  {elapsed:.0f}s", file=stream, flush=True)
