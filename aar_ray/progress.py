"""Progress that reads well where it is written: a bar redrawn in place on a terminal; in a log
(`ray job logs`, a file, a pipe) one plain line per finished item, and a heartbeat line every
`every` seconds while nothing finishes, never a line per redraw.

`progress(...)` takes the arguments of tqdm that this project uses and returns a tqdm bar on a
terminal, a `LogProgress` elsewhere; both have `n`, `update`, `set_postfix_str`, `close`, and
work as context managers and as iterables.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, TextIO

HEARTBEAT_SECONDS = 60.0


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool = False, stream: TextIO | None = None, every: float = HEARTBEAT_SECONDS,
             per_item: bool = True):
    """`per_item`: in a log, a line for each finished item (experiments); False for many small
    items (batches), which then get a line every `every` seconds and one at the end."""
    stream = stream or sys.stderr
    if disable or _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, file=stream)
    return LogProgress(iterable, total, desc, unit, stream, every, per_item)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream: not a terminal
        return False


class LogProgress:
    """Progress as log lines: `desc: n/total unit (postfix) [elapsed]`."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str,
                 stream: TextIO, every: float, per_item: bool = True):
        self.iterable = iterable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.stream, self.every = total, desc, unit, stream, every
        self.per_item = per_item
        self.n = 0
        self.said = -1  # the count the last line showed
        self.postfix = ""
        self.started = self.last_line = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        if k > 0 and self.per_item:
            self._line()  # something finished: say so
        else:
            self.heartbeat()

    def heartbeat(self) -> None:
        """A line when nothing has been said for `every` seconds: the job is alive."""
        if time.monotonic() - self.last_line >= self.every:
            self._line()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        self.heartbeat()

    def _line(self) -> None:
        of = f"/{self.total}" if self.total else ""
        postfix = f" ({self.postfix})" if self.postfix else ""
        elapsed = time.monotonic() - self.started
        self.stream.write(f"{self.desc}: {self.n}{of} {self.unit}{postfix} [{elapsed / 60:.1f} min]\n")
        self.stream.flush()
        self.last_line = time.monotonic()
        self.said = self.n

    def close(self) -> None:
        if not self.per_item and self.said != self.n:
            self._line()  # where it ended

    def __iter__(self):
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
