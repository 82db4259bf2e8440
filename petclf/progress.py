"""Progress that reads well in a terminal (a rich bar) and in a log file (one plain line per stage, no
carriage returns), and a whole-run estimate from timing the first units of each kind of work.

    with run_clock() as clock:                       # a run: its estimate is printed once it can be made
        clock.plan("train", 40)                      # work still to do, in units of a kind
        with stage("epoch 1/3", total=40, kind="train") as s:
            for _ in range(40):
                ...; s.advance(info="loss 0.91")     # each unit timed; the clock learns the kind's speed

A stage longer than `LOG_EVERY` seconds also gets a line per `LOG_EVERY` seconds when piped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

ProgressFn = Callable[[int, int], None]
LOG_EVERY = 30.0  # seconds between the lines of a long stage when piped
WARMUP_UNITS = 1  # the first unit of each kind is not timed: it pays for lazy initialisation


def is_terminal(stream=None) -> bool:
    """True when output goes to an interactive terminal rather than a pipe or file."""
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def fmt_secs(s: float) -> str:
    """Seconds as people read them: 42 s, 3.5 min, 1.2 h."""
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def rich_bar(transient: bool = True):
    """petclf's terminal progress bar: what, bar, done/total, elapsed, time left, and a free text (loss, run
    ETA)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    plain = {"markup": False}  # a description can hold a user's path (report --split FILE): text, not markup
    return Progress(SpinnerColumn(), TextColumn("{task.description}", **plain), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}", **plain), console=Console(file=sys.stderr),
                    transient=transient)


# ---------------------------------------------------------------------------------------------- the run clock


@dataclass
class RunClock:
    """Work planned per kind (train batches, valid batches, feature batches, ...), each kind's measured
    seconds per unit, and from those the time the rest of the run should take."""

    todo: dict[str, float] = field(default_factory=dict)  # units still to do, per kind
    rate: dict[str, float] = field(default_factory=dict)  # measured seconds per unit
    # guesses till measured
    prior: dict[str, Callable[[dict[str, float]], float | None]] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)
    announced: bool = False

    def plan(self, kind: str, units: float) -> None:
        """Add `units` of work of `kind` still to be done."""
        self.todo[kind] = self.todo.get(kind, 0) + units

    def done(self, kind: str, units: float = 1) -> None:
        """`units` of `kind` are done."""
        self.todo[kind] = max(0.0, self.todo.get(kind, 0) - units)

    def measured(self, kind: str, seconds_per_unit: float) -> None:
        """The speed of `kind`, from its timed units."""
        self.rate[kind] = seconds_per_unit

    def seconds_per(self, kind: str) -> float | None:
        """Measured speed of `kind`, else its prior (which may derive it from other kinds), else None."""
        if kind in self.rate:
            return self.rate[kind]
        guess = self.prior.get(kind)
        return guess(self.rate) if guess else None

    def left(self) -> float | None:
        """Seconds the planned work should still take; None while a kind with work to do has no speed yet."""
        total = 0.0
        for kind, units in self.todo.items():
            if units <= 0:
                continue
            per = self.seconds_per(kind)
            if per is None:
                return None
            total += per * units
        return total

    def summary(self) -> str | None:
        """'about 1.5 min left of the run (12 s so far)', or None before an estimate can be made."""
        left = self.left()
        if left is None:
            return None
        return f"about {fmt_secs(left)} left of the run ({fmt_secs(time.monotonic() - self.t0)} so far)"

    def announce(self) -> None:
        """The first whole-run estimate, once, as a line of its own."""
        left = self.left()
        if not self.announced and left is not None:
            self.announced = True
            so_far = time.monotonic() - self.t0
            say(f"estimated time for the whole run: {fmt_secs(so_far + left)} (about {fmt_secs(left)} left)")


_CLOCK: list[RunClock] = []  # the run being timed (a stack, so a nested run never reads its parent's clock)


@contextmanager
def run_clock() -> Iterator[RunClock]:
    """Time a whole run: stages inside feed it, and the estimate is printed as soon as it can be made."""
    clock = RunClock()
    _CLOCK.append(clock)
    try:
        yield clock
    finally:
        _CLOCK.remove(clock)


def current_clock() -> RunClock | None:
    """The clock of the run in progress, if any."""
    return _CLOCK[-1] if _CLOCK else None


# ---------------------------------------------------------------------------------------------------- stages


def say(msg: str) -> None:
    """One line to stderr, above any bar on screen (rich redirects prints while a bar is live)."""
    print(msg, file=sys.stderr, flush=True)


_LIVE: list[Stage] = []  # the stage whose bar is on screen


class Stage:
    """One stage of work: a bar on a terminal, a line at its end (and every `LOG_EVERY` s) when piped."""

    def __init__(self, name: str, total: int | None = None, kind: str | None = None, quiet: bool = False,
                 terminal: bool | None = None):
        self.name, self.total, self.kind, self.quiet = name, total, kind, quiet
        self.terminal = is_terminal() if terminal is None else terminal
        self.done, self.info, self.t0 = 0, "", time.monotonic()
        self.t_timed, self.n_timed, self.n_start, self.last_line = None, 0, 0, self.t0
        self.clock, self.bar, self.task = current_clock(), None, None

    def start(self) -> Stage:
        """Show the bar (terminal) at once, so a user sees the stage begin."""
        if self.terminal and not self.quiet and not _LIVE:  # one bar at a time: rich allows one live display
            _LIVE.append(self)
            self.bar = rich_bar()
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=self.total, info=self._info())
        return self

    def _info(self) -> str:
        run = self.clock.summary() if self.clock else None
        return "  ".join(s for s in (self.info, run) if s)

    def switch(self, name: str, kind: str | None) -> None:
        """Another kind of work within the stage (an epoch's validation after its training): new description,
        same bar, and the new kind's units are timed from here."""
        self.name, self.kind, self.t_timed = name, kind, None
        self.n_start = self.done
        if self.bar is not None:
            self.bar.update(self.task, description=name)

    def update(self, done: int, total: int | None = None, info: str | None = None) -> None:
        """`done` units of `total` (None keeps the last total); `info` is free text shown after the times."""
        step = done - self.done
        self.done, self.total = done, total if total is not None else self.total
        self.info = info if info is not None else self.info
        self._time(step)
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=self.total, info=self._info())
        elif not self.quiet and time.monotonic() - self.last_line >= LOG_EVERY:
            self.last_line = time.monotonic()
            say(self.line(final=False))

    def advance(self, n: int = 1, info: str | None = None) -> None:
        """`n` more units done."""
        self.update(self.done + n, info=info)

    def _time(self, step: int) -> None:
        """Feed the run clock: after the warm-up unit, seconds per unit of this stage's kind."""
        if self.clock is None or self.kind is None or step <= 0:
            return
        self.clock.done(self.kind, step)
        now = time.monotonic()
        if self.t_timed is None:
            if self.done - self.n_start >= WARMUP_UNITS:
                self.t_timed, self.n_timed = now, self.done
            return
        if self.done > self.n_timed:
            self.clock.measured(self.kind, (now - self.t_timed) / (self.done - self.n_timed))
        if self.done - self.n_timed >= 2:  # two timed units: a speed worth printing
            self.clock.announce()

    def line(self, final: bool = True) -> str:
        """'lr_find: 20/20 in 3 s' (and, mid-stage, time left); with the run's estimate when there is one."""
        elapsed = time.monotonic() - self.t0
        count = f" {self.done}/{self.total}" if self.total else ""
        parts = [f"{self.name}:{count} {'in' if final else 'after'} {fmt_secs(elapsed)}"]
        if not final and self.total and self.done:
            parts.append(f"about {fmt_secs(elapsed / self.done * (self.total - self.done))} left")
        parts += [s for s in (self.info, self.clock.summary() if self.clock else None) if s]
        return "; ".join(parts)

    def stop(self, line: str | None = None) -> None:
        """Remove the bar and print the stage's one line (`line` replaces the default). Units planned but
        not done (lr_find stopped early on divergence) leave the run clock's plan."""
        if self.clock is not None and self.kind is not None and self.total:
            self.clock.done(self.kind, self.total - self.done)
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            _LIVE.remove(self)
        if not self.quiet:
            say(line if line is not None else self.line())

    def drop(self) -> None:
        """Take the bar off the screen without a line (the stage did not finish)."""
        self.quiet = True
        self.stop()


@contextmanager
def stage(name: str, total: int | None = None, kind: str | None = None, quiet: bool = False,
          terminal: bool | None = None) -> Iterator[Stage]:
    """A stage of work shown as it runs (see `Stage`); `kind` feeds the run clock. On error the bar just
    goes."""
    s = Stage(name, total, kind, quiet, terminal).start()
    try:
        yield s
    except BaseException:
        s.drop()
        raise
    s.stop()


@contextmanager
def bar(description: str) -> Iterator[ProgressFn]:
    """Yield `progress(done, total)` for a stage counted in items (the data check, the report's pass)."""
    with stage(description) as s:
        yield lambda done, total: s.update(done, total)


@contextmanager
def bar_unless(quiet: bool, description: str) -> Iterator[ProgressFn | None]:
    """`bar(description)`, or None when `quiet` (another process of a distributed run shows it)."""
    if quiet:
        yield None
        return
    with bar(description) as progress:
        yield progress
