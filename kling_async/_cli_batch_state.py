"""What a batch run knows while it runs: each row's outcome, the downloads' bytes, and the
progress in words (pure functions of a `Snapshot`, shown by `_cli_progress`'s views)."""

from __future__ import annotations

import decimal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from . import Cost, TaskHandle
from ._cli_batch_file import Row
from ._cli_output import amount_text, clock_text, size_text, spent_text
from ._cli_progress import Display, Frame, markup

__all__ = [
    "Outcome",
    "Run",
    "Snapshot",
    "batch_display",
    "batch_frame",
    "describe",
    "rows_text",
    "spent",
]

# Amounts have at most 36 digits (18 before the point, 18 after): a sum of them is exact.
_EXACT = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.Overflow])

# Plain progress prints a changed line at most this often, an unchanged one every heartbeat.
_PLAIN_INTERVAL = 2.0
_PLAIN_HEARTBEAT = 30.0


@attrs.define(kw_only=True)
class Outcome:
    """What became of one row; a line of the results file."""

    key: str
    task_id: str | None = None
    status: str = "pending"  # pending, submitted, processing, succeed, failed, error
    message: str = ""
    file: str | None = None
    handle: TaskHandle | None = None
    cost: Cost | None = None
    """What the finished task cost, as its last reply said (None: not said, or not done)."""

    def as_json(self) -> dict[str, Any]:
        """The results file's line: ``units`` and ``cash`` as decimal strings, or null."""
        cost = self.cost
        return {
            "key": self.key,
            "task_id": self.task_id,
            "status": self.status,
            "message": self.message,
            "file": self.file,
            "units": None if cost is None else amount_text(cost.units),
            "cash": None if cost is None else amount_text(cost.cash),
        }

    @property
    def current(self) -> str:
        """The status now: a waiting row's handle knows more than the last event did."""
        if self.status in ("submitted", "processing") and self.handle is not None:
            last = self.handle.last
            if last is not None and last.status.known and not last.done:
                return last.status.value
        return self.status

    @property
    def finished(self) -> bool:
        return self.status in ("succeed", "failed", "error")


@attrs.define(kw_only=True)
class Snapshot:
    """What the progress shows: counts per status, rows finished, downloads and their bytes."""

    total: int
    done: int
    counts: dict[str, int]
    downloads: int
    downloads_done: int
    downloads_skipped: int
    downloads_failed: int
    received: int
    in_progress: int
    in_progress_received: int
    in_progress_expected: int | None
    elapsed: float
    units: decimal.Decimal = decimal.Decimal(0)
    """Units the rows' finished tasks cost so far."""
    cash: decimal.Decimal = decimal.Decimal(0)
    """Cash the rows' finished tasks cost so far."""
    priced: int = 0
    """Rows whose task reported a cost (the total shows once one did)."""

    def eta(self) -> float | None:
        """Seconds until every row is done, at the pace so far (None until one is done)."""
        if not self.done or self.done >= self.total:
            return None
        return self.elapsed / self.done * (self.total - self.done)


_ORDER = ("pending", "submitted", "processing", "downloading", "succeed", "failed", "error")


class Run:
    """The rows' outcomes and the download bytes, as the progress views read them.

    ``downloads`` counts the downloads wanted so far (queued, running or ended); of those,
    ``downloads_done`` are files in place (``downloads_skipped`` of them from an earlier
    run) and ``downloads_failed`` failed. The bytes of a running download count as in
    progress until it ends: then they join ``received`` (done) or are dropped (failed).
    """

    def __init__(self, rows: Sequence[Row], *, clock: Callable[[], float] = time.monotonic):
        self.outcomes = [Outcome(key=row.key) for row in rows]
        self._clock = clock
        self.started = clock()
        self.downloads = 0
        self.downloads_done = 0
        self.downloads_skipped = 0
        self.downloads_failed = 0
        self._received = 0
        self._bytes: dict[str, tuple[int, int | None]] = {}

    def received(self, key: str, done: int, total: int | None) -> None:
        """A running download's progress."""
        self._bytes[key] = (done, total)

    def fetched(self, key: str, *, ok: bool) -> None:
        """A download ended: its file is in place (``ok``), or it failed."""
        done, _ = self._bytes.pop(key, (0, None))
        if ok:
            self.downloads_done += 1
            self._received += done
        else:
            self.downloads_failed += 1

    def snapshot(self) -> Snapshot:
        counts = Counter(outcome.current for outcome in self.outcomes)
        sizes = list(self._bytes.values())
        expected: int | None = sum(total or 0 for _, total in sizes)
        if any(total is None for _, total in sizes):
            expected = None
        units, cash, priced = spent(self.outcomes)
        return Snapshot(
            total=len(self.outcomes),
            done=sum(outcome.finished for outcome in self.outcomes),
            counts={status: counts[status] for status in _ORDER if counts[status]}
            | {status: n for status, n in counts.items() if status not in _ORDER},
            downloads=self.downloads,
            downloads_done=self.downloads_done,
            downloads_skipped=self.downloads_skipped,
            downloads_failed=self.downloads_failed,
            received=self._received,
            in_progress=len(sizes),
            in_progress_received=sum(done for done, _ in sizes),
            in_progress_expected=expected,
            elapsed=self._clock() - self.started,
            units=units,
            cash=cash,
            priced=priced,
        )


def spent(outcomes: Sequence[Outcome]) -> tuple[decimal.Decimal, decimal.Decimal, int]:
    """The units and the cash the rows' tasks cost, and how many rows reported a cost.

    One row is one task, so each task counts once, whatever saw it (exact decimal sums).
    """
    units = cash = decimal.Decimal(0)
    priced = 0
    with decimal.localcontext(_EXACT):
        for outcome in outcomes:
            cost = outcome.cost
            if cost is None:
                continue
            priced += 1
            if cost.units is not None:
                units += cost.units
            if cost.cash is not None:
                cash += cost.cash
    return units, cash, priced


def _downloads(snap: Snapshot) -> str:
    """``downloaded 2/6, 1 failed (1.2 MB; 2 in progress: 300 kB of 1.0 MB)``: files in
    place of those wanted, and bytes of the finished and of the running ones apart."""
    failed = f", {snap.downloads_failed} failed" if snap.downloads_failed else ""
    notes = [size_text(snap.received)]
    if snap.downloads_skipped:
        notes.append(f"{snap.downloads_skipped} already there")
    if snap.in_progress:
        of = f" of {size_text(snap.in_progress_expected)}" if snap.in_progress_expected else ""
        notes.append(f"{snap.in_progress} in progress: {size_text(snap.in_progress_received)}{of}")
    return f"downloaded {snap.downloads_done}/{snap.downloads}{failed} ({', '.join(notes)})"


def rows_text(count: int) -> str:
    """``1 row``, ``2 rows``."""
    return f"{count} row" if count == 1 else f"{count} rows"


def describe(snap: Snapshot, *, eta: bool = True) -> str:
    """One line: done/total, the counts per status, downloads, what was spent, ETA."""
    counts = ", ".join(f"{status} {n}" for status, n in snap.counts.items())
    parts = [f"{snap.done}/{snap.total} done", counts]
    if snap.downloads:
        parts.append(_downloads(snap))
    if snap.priced:
        parts.append(spent_text(snap.units, snap.cash))
    remaining = snap.eta() if eta else None
    if remaining is not None:
        parts.append(f"ETA {clock_text(remaining)}")
    return "  ".join(part for part in parts if part)


_STYLES = {"succeed": "green", "failed": "red", "error": "red", "processing": "cyan"}


def _counts(snap: Snapshot) -> str:
    """The counts per status (and the downloads, and what was spent) in rich markup."""
    counts = "  ".join(
        f"[{_STYLES.get(status, 'default')}]{markup(status)} {n}[/]"
        for status, n in snap.counts.items()
    )
    if snap.downloads:
        counts += f"  [dim]|[/]  {markup(_downloads(snap))}"
    if snap.priced:
        counts += f"  [dim]|[/]  [bold]{spent_text(snap.units, snap.cash)}[/]"
    return counts


def batch_frame(snap: Snapshot) -> Frame:
    """A batch's progress: a line when the counts change (a new ETA alone is no change); on
    a terminal a bar with the counts under it, then ✓ (all succeeded), ✗ (some failed) or …
    (not all done) with the counts when it ends."""
    line = f"{clock_text(snap.elapsed)}  {describe(snap)}"
    failed = snap.counts.get("failed", 0) + snap.counts.get("error", 0)
    mark = "[yellow]…[/]" if snap.done < snap.total else "[red]✗[/]" if failed else "[green]✓[/]"
    counts = _counts(snap)
    return Frame(
        key=describe(snap, eta=False),
        line=line,
        repeat=line,
        live=f"  {counts}  [dim](Ctrl+C stops; the same command resumes)[/]",
        done=snap.done,
        total=snap.total,
        final=f"{mark} batch {snap.done}/{snap.total} done in {clock_text(snap.elapsed)}  {counts}",
    )


def batch_display(rows: int) -> Display[Snapshot]:
    """How a batch of ``rows`` rows shows (its state: the run's newest `Snapshot`)."""
    return Display(
        frame=lambda snap, elapsed: batch_frame(snap),
        header=f"batch of {rows_text(rows)} (Ctrl+C stops waiting; the tasks keep running "
        "and the same command resumes)",
        interval=_PLAIN_INTERVAL,
        heartbeat=_PLAIN_HEARTBEAT,
        bar="count",
        label="batch",
    )
