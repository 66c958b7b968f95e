"""Progress of long loops (imports, the openclipart build, encoding, training) that reads well anywhere.

On a terminal a bar redraws in place (tqdm). Anywhere else (a job's log file, a pipe, CI) redrawing writes
carriage returns into one endless line, so there the same calls write one plain line every few seconds
instead, e.g. `openclipart: 1200/4907 notes (24%), 95 note/s`, plus a first and a last line.

`progress_bar(...)` takes tqdm's arguments and returns an object with the part of tqdm's interface the
workbench uses (`update`, `set_postfix`, `set_description`, `refresh`, `close`, `write`, `n`, `total`, use as
a context manager), so a loop written for tqdm switches by changing its constructor alone.
`ProgressCallback` adapts it to the `(done, total[, message])` callbacks the store and the encoders report to.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

# Seconds between two plain lines: often enough to see a job is alive, rare enough for a readable log.
PLAIN_INTERVAL_S = 5.0
# NOTELLM2_PROGRESS=plain forces plain lines on a terminal too (e.g. under a terminal multiplexer that logs).
PROGRESS_ENV = "NOTELLM2_PROGRESS"


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _plural(unit: str) -> str:
    return unit if not unit or unit.endswith("s") else unit + "s"


def _rate(count: float, seconds: float, unit: str) -> str:
    if seconds <= 0 or count <= 0:
        return ""
    per_second = count / seconds
    if per_second >= 1:
        return f"{per_second:,.0f} {unit}/s" if per_second >= 10 else f"{per_second:.1f} {unit}/s"
    return f"{seconds / count:.1f} s/{unit}"


class PlainProgress:
    """tqdm's interface as the workbench uses it, writing whole lines at most every `interval` seconds."""

    def __init__(self, total: float | None = None, desc: str = "", unit: str = "it", initial: float = 0,
                 file: TextIO | None = None, interval: float = PLAIN_INTERVAL_S, disable: bool = False,
                 clock: Callable[[], float] = time.monotonic, **_ignored):
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.file = file
        self.interval = interval
        self.disable = disable
        self.clock = clock
        self.postfix = ""
        self.started = clock()
        self.last_line_at: float | None = None
        self.last_line_n: float | None = None
        self.closed = False
        if not disable:
            self._line()

    # ----------------------------------------------------------------------------------------- tqdm's calls
    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_line()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        self._maybe_line()

    def reset(self, total: float | None = None) -> None:
        self.n = self.initial = 0
        self.total = total if total is not None else self.total
        self.started = self.clock()

    def close(self) -> None:
        """The last line, unless the one before says the same."""
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n != self.last_line_n:
            self._line()

    def write(self, text: str, file: TextIO | None = None) -> None:
        stream = file or self.file or sys.stderr
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- the lines
    def line(self) -> str:
        """`desc: done/total units (pct%), rate[, postfix]`."""
        done = int(self.n) if float(self.n).is_integer() else self.n
        if self.total:
            total = int(self.total) if float(self.total).is_integer() else self.total
            text = f"{done:,}/{total:,} {_plural(self.unit)} ({min(100.0, 100.0 * self.n / self.total):.0f}%)"
        else:
            text = f"{done:,} {_plural(self.unit)}"
        parts = [text]
        rate = _rate(self.n - self.initial, self.clock() - self.started, self.unit)
        if rate:
            parts.append(rate)
        if self.postfix:
            parts.append(self.postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _maybe_line(self) -> None:
        if self.disable or self.closed:
            return
        if self.last_line_at is None or self.clock() - self.last_line_at >= self.interval:
            self._line()

    def _line(self) -> None:
        stream = self.file or sys.stderr
        stream.write(self.line() + "\n")
        stream.flush()
        self.last_line_at = self.clock()
        self.last_line_n = self.n


def plain_wanted(stream) -> bool:
    return os.environ.get(PROGRESS_ENV, "").lower() == "plain" or not is_terminal(stream)


def progress_bar(total: float | None = None, desc: str = "", unit: str = "it", initial: float = 0,
                 file: TextIO | None = None, leave: bool = True, disable: bool = False,
                 interval: float = PLAIN_INTERVAL_S, **tqdm_options):
    """A tqdm bar on a terminal, a PlainProgress anywhere else (`file`, default stderr, decides)."""
    stream = file if file is not None else sys.stderr
    if plain_wanted(stream):
        return PlainProgress(total=total, desc=desc, unit=unit, initial=initial, file=stream, interval=interval,
                             disable=disable)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream, leave=leave, disable=disable,
                **tqdm_options)


def write_line(text: str, file: TextIO | None = None) -> None:
    """A message between progress lines: tqdm.write on a terminal (keeps the bar whole), a plain line else."""
    stream = file if file is not None else sys.stderr
    if plain_wanted(stream):
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()
        return
    from tqdm import tqdm

    tqdm.write(text, file=stream)


class ProgressCallback:
    """A `(done, total)` or `(done, total, message)` callback drawing progress bars: one bar per stage
    (`message`), opened on the stage's first call and closed when the next stage starts or at `close()`.

    `stages`: only these messages get a bar (None: every one); stages whose total is under `min_total` get
    none either (a one-step "writing" needs no bar). `desc` prefixes the stage in the bar's label."""

    def __init__(self, desc: str = "", unit: str = "item", file: TextIO | None = None,
                 stages: tuple[str, ...] | None = None, min_total: int = 2, interval: float = PLAIN_INTERVAL_S,
                 leave: bool = True):
        self.desc = desc
        self.unit = unit
        self.file = file
        self.stages = stages
        self.min_total = min_total
        self.interval = interval
        self.leave = leave
        self.bar = None
        self.stage: str | None = None
        self.finished: tuple[str, int] | None = None  # a stage reported complete again draws no second bar

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.stages is not None and message not in self.stages:
            return
        if self.bar is None or message != self.stage:
            if total < self.min_total or (self.finished == (message, total) and done >= total):
                return
            self.close()
            label = ": ".join(part for part in (self.desc, message) if part)
            self.bar = progress_bar(total=total, desc=label, unit=self.unit, file=self.file, leave=self.leave,
                                    interval=self.interval)
            self.stage = message
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if total and done >= total:
            self.close()
            self.finished = (message, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None

    def __enter__(self) -> "ProgressCallback":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
