"""Progress that reads well in a terminal (a rich bar) and in a log file (a few plain lines, no carriage returns)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ProgressFn = Callable[[int, int], None]


def is_terminal(stream=None) -> bool:
    """True when output goes to an interactive terminal rather than a pipe or file."""
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def rich_bar():
    """petclf's terminal progress bar (description, bar, done/total, time left), transient: it leaves no trace."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True)


@contextmanager
def bar(description: str, log_every: float = 10.0) -> Iterator[ProgressFn]:
    """Yield `progress(done, total)`: a rich bar on a terminal, else one line per `log_every` seconds and at the end."""
    if is_terminal():
        with rich_bar() as p:
            task = p.add_task(description, total=None)
            yield lambda done, total: p.update(task, completed=done, total=total)
        return
    last = [time.monotonic()]

    def log(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= log_every:
            last[0] = now
            print(f"{description}: {done}/{total}", file=sys.stderr, flush=True)

    yield log
