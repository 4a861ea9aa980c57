"""Progress on stderr: one protocol, three views (quiet, plain lines, a rich live display).

A command describes what to show with a `Display`: a pure function from its state (a task,
a download's bytes, a batch's counts) and the seconds elapsed to a `Frame`, the words and
numbers of one moment. The views only decide when to write: `PlainView` writes a line per
change (at most every ``interval`` seconds) and repeats one every ``heartbeat``; `RichView`
redraws a spinner or a bar several times a second and leaves one line when it closes;
`Quiet` shows nothing. A closed stderr never ends a command.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Any, Generic, Literal, Protocol, TextIO, TypeVar

import attrs

from ._cli_output import clean, rich_console

__all__ = [
    "Display",
    "Frame",
    "PlainView",
    "Progress",
    "Quiet",
    "RichView",
    "markup",
    "progress_view",
]

S = TypeVar("S")
S_contra = TypeVar("S_contra", contravariant=True)
_NOTHING = object()  # a key no frame has


# Rich reads ``[word]`` as a style; a backslash before the bracket makes it text.
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def markup(text: str) -> str:
    """``text`` (perhaps from a server) as literal text in rich markup, cleaned of control
    characters: what ``rich.markup.escape`` does, without needing rich installed."""
    escaped = _MARKUP_TAG.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", clean(text))
    if escaped.endswith("\\") and not escaped.endswith("\\\\"):
        return escaped + "\\"
    return escaped


@attrs.frozen(kw_only=True)
class Frame:
    """What a view shows at one moment, already in words (rich markup where it says so)."""

    key: object = None
    """Plain: a new key is a change worth a line (equal keys: nothing new to say)."""
    line: str = ""
    """Plain: the line written for a change ("" writes none)."""
    repeat: str = ""
    """Plain: the line repeated every heartbeat while nothing changes ("" repeats none)."""
    live: str = ""
    """Rich markup: the line beside the spinner, or under the bar ("" none)."""
    done: float = 0
    total: float | None = None
    """Rich: the bar's progress (``total`` None: not known yet)."""
    final: str = ""
    """Rich markup: the line left when the live view closes ("" none)."""


@attrs.frozen(kw_only=True)
class Display(Generic[S]):
    """How one command shows its progress: the pure `Frame` function and the pacing."""

    frame: Callable[[S, float], Frame]
    """The frame for a state, given the seconds since the view opened."""
    header: str = ""
    """Plain: the first line, written when the view opens ("" none)."""
    interval: float = 0.0
    """Plain: the fewest seconds between two change lines."""
    heartbeat: float = math.inf
    """Plain: the seconds without a line after which the repeat line comes."""
    bar: Literal["none", "count", "bytes"] = "none"
    """Rich: a spinner line, a bar of items done (with ETA), or a bar of bytes (with speed)."""
    label: str = ""
    """Rich markup: the bar's label."""


class Progress(Protocol[S_contra]):
    """What a command tells its progress view."""

    def update(self, state: S_contra) -> None:
        """The newest state."""

    def tick(self) -> None:
        """Time passed (the drivers call it a few times a second)."""

    def note(self, text: str) -> None:
        """A line to show once, above the view."""

    def close(self) -> None:
        """The end: the view goes, its last word stays."""


class Quiet:
    """``--quiet``: nothing."""

    def update(self, state: object) -> None:
        pass

    def tick(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainView(Generic[S]):
    """Lines on a stream (stderr not on a terminal, or rich not installed)."""

    def __init__(
        self,
        display: Display[S],
        state: S,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._display = display
        self._state = state
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._last = -math.inf  # when the last line was written
        self._shown: object = _NOTHING  # the key of the last line
        if display.header:
            self._write(display.header)

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stderr must not end the wait
            print(clean(line), file=self._stream, flush=True)

    def _frame(self, now: float) -> Frame:
        return self._display.frame(self._state, now - self._started)

    def _change(self, frame: Frame, now: float, *, pace: bool = True) -> bool:
        """Write the frame's line if it is news (and, with ``pace``, the interval passed)."""
        if not frame.line or frame.key == self._shown:
            return False
        if pace and now - self._last < self._display.interval:
            return False
        self._write(frame.line)
        self._shown, self._last = frame.key, now
        return True

    def update(self, state: S) -> None:
        self._state = state
        now = self._clock()
        self._change(self._frame(now), now)

    def tick(self) -> None:
        now = self._clock()
        frame = self._frame(now)
        if self._change(frame, now):
            return
        if frame.repeat and now - self._last >= self._display.heartbeat:
            self._write(frame.repeat)
            self._shown, self._last = frame.key, now

    def note(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        now = self._clock()
        self._change(self._frame(now), now, pace=False)


class RichView(Generic[S]):
    """A live view on a terminal (``kling-async[cli]``): a spinner line or a bar, redrawn by
    rich; log lines (``-v``) show above it."""

    def __init__(
        self,
        display: Display[S],
        state: S,
        console: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from rich.live import Live  # type: ignore[import-not-found, unused-ignore]
        from rich.spinner import Spinner  # type: ignore[import-not-found, unused-ignore]

        self._display = display
        self._state = state
        self._console = console
        self._clock = clock
        self._started = clock()
        self._bar = _bar(display, console)
        self._bar_task = None if self._bar is None else self._bar.add_task("", total=None)
        self._spinner = Spinner("dots", style="cyan")
        self._live = Live(
            self,
            console=console,
            transient=True,
            refresh_per_second=8,
            redirect_stdout=False,
            redirect_stderr=True,  # -v log lines show above the view
        )
        self._closed = False
        self._live.start()

    def _frame(self) -> Frame:
        return self._display.frame(self._state, self._clock() - self._started)

    def __rich__(self) -> Any:
        from rich.console import Group  # type: ignore[import-not-found, unused-ignore]
        from rich.text import Text  # type: ignore[import-not-found, unused-ignore]

        frame = self._frame()
        if self._bar is None:
            self._spinner.update(text=frame.live)
            return self._spinner
        self._bar.update(self._bar_task, completed=frame.done, total=frame.total)
        if not frame.live:
            return self._bar
        return Group(self._bar, Text.from_markup(frame.live))

    def update(self, state: S) -> None:
        self._state = state
        if self._bar is None:  # a new status shows at once; a bar moves at the refresh rate
            self._live.refresh()

    def tick(self) -> None:
        pass

    def note(self, text: str) -> None:
        self._console.print(markup(text), highlight=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._live.stop()
        final = self._frame().final
        if final:
            self._console.print(final, highlight=False)


def _bar(display: Display[Any], console: Any) -> Any | None:
    """The rich bar a display asks for, or None for a spinner line."""
    from rich.progress import (  # type: ignore[import-not-found, unused-ignore]
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as Bar  # type: ignore[import-not-found, unused-ignore]

    columns: tuple[Any, ...]
    if display.bar == "count":
        columns = (
            SpinnerColumn("dots", style="cyan"),
            TextColumn(display.label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
    elif display.bar == "bytes":
        columns = (
            TextColumn(display.label),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
        )
    else:
        return None
    return Bar(*columns, console=console, auto_refresh=False)


def progress_view(display: Display[S], state: S, quiet: bool) -> Progress[S]:
    """Nothing with ``quiet``; rich on a terminal when it is installed, else plain lines."""
    if quiet:
        return Quiet()
    console = rich_console()
    if console is not None:
        return RichView(display, state, console)
    return PlainView(display, state, sys.stderr)
