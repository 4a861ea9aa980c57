"""``kling-async batch FILE``: many extends from a file, through a journal, resumable.

The file (JSON Lines or CSV) is read and checked whole before anything is sent. Each row is
submitted with ``extend(key=...)`` through a journal beside the file, so a re-run of the same
command after Ctrl+C or a crash submits nothing twice; finished downloads are files under
their final name (``download()`` is atomic), so a re-run skips them. Progress goes to stderr,
the rows' results to stdout and to the results file.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import pathlib
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence, Set
from typing import Any, Protocol, TextIO

import anyio
import attrs

from ._cli_output import (
    INTERRUPTED,
    PROG,
    SURROGATE,
    OutputClosed,
    check_command,
    clean,
    clock_text,
    file_problem,
    folder_problem,
    in_flags,
    one_line,
    rich_console,
    say,
    session_options,
    silence_stdout,
    size_text,
    timeouts,
    usage_error,
)
from ._cli_request import FIELDS, RequestProblem, extend_arguments, extend_request
from ._download import file_name
from ._handle import TaskHandle
from ._journal import EntryState, SQLiteJournal
from ._session import KlingSession
from .errors import KlingError, NotFoundError, TaskFailedError
from .models import ExtendRequest, Task, TaskStatus

__all__ = ["read_rows", "run"]

COLUMNS = ("key", *FIELDS)
# Plain progress prints a changed line at most this often, an unchanged one every heartbeat.
_PLAIN_INTERVAL = 2.0
_PLAIN_HEARTBEAT = 30.0
_TICK = 0.25
# A row is a few kB at most (two prompts of 2500 characters); longer lines or a larger file
# are not a batch file (``/dev/zero``, a video passed by mistake) and are refused unread.
MAX_LINE_BYTES = 1 << 20
MAX_FILE_BYTES = 64 << 20


class BatchFileError(ValueError):
    """The batch file cannot be used as it is; the message names the line."""


@attrs.frozen(kw_only=True)
class Row:
    """One request of the batch file: its line, its key and the checked request."""

    line: int
    key: str
    request: ExtendRequest


# -- reading the file -------------------------------------------------------------------------


def _row(line: int, record: dict[str, object]) -> Row:
    for text in (*record, *record.values()):
        if isinstance(text, str) and SURROGATE.search(text):
            shown = text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise BatchFileError(
                f"line {line}: {shown[:40]!r} is not valid Unicode text (a lone surrogate)"
            )
    unknown = [name for name in record if name not in COLUMNS]
    if unknown:
        raise BatchFileError(
            f"line {line}: unknown field {unknown[0]!r} (known: {', '.join(COLUMNS)})"
        )
    key = record.get("key")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key.strip():
        raise BatchFileError(f"line {line}: every row needs a key (a non-empty string)")
    try:
        request = extend_request(record, cells=True)
    except RequestProblem as problem:
        raise BatchFileError(f"line {line}: {problem}") from None
    return Row(line=line, key=key, request=request)


def _json_records(text: str) -> Iterable[tuple[int, dict[str, object]]]:
    for line, source in enumerate(text.splitlines(), 1):
        if not source.strip():
            continue
        try:
            record = json.loads(source)
        except json.JSONDecodeError as error:
            raise BatchFileError(f"line {line}: not valid JSON ({error.msg})") from None
        except RecursionError:
            raise BatchFileError(f"line {line}: the JSON is nested too deeply") from None
        if not isinstance(record, dict):
            raise BatchFileError(f"line {line}: expected a JSON object, got {source.strip()!r}")
        yield line, record


def _csv_records(text: str) -> Iterable[tuple[int, dict[str, object]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise BatchFileError(f"line 1: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
    if "key" not in header or "video_id" not in header:
        raise BatchFileError("line 1: the header needs the columns key and video_id")
    if len(set(header)) != len(header):
        raise BatchFileError("line 1: a column repeats in the header")
    reader.fieldnames = header
    for record in reader:
        if None in record:  # more cells than columns
            raise BatchFileError(f"line {reader.line_num}: more cells than columns")
        if not any(value for value in record.values()):
            continue
        yield reader.line_num, {name: value for name, value in record.items() if value != ""}


def _read(path: pathlib.Path) -> str:
    """The file as text, read a line at a time under `MAX_LINE_BYTES` and `MAX_FILE_BYTES`,
    so that an endless source (``/dev/zero``, a pipe that never ends) is refused, not read."""
    lines: list[bytes] = []
    size = 0
    with path.open("rb") as file:
        while line := file.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise BatchFileError(
                    f"line {len(lines) + 1} is longer than {MAX_LINE_BYTES // 2**20} MiB: "
                    "not a batch file"
                )
            size += len(line)
            if size > MAX_FILE_BYTES:
                raise BatchFileError(
                    f"larger than {MAX_FILE_BYTES // 2**20} MiB: split it into several batches"
                )
            lines.append(line)
    return b"".join(lines).decode("utf-8-sig")


def read_rows(path: pathlib.Path) -> list[Row]:
    """Every row of the batch file, checked; raises `BatchFileError` naming the line."""
    try:
        text = _read(path)
    except OSError as error:
        raise BatchFileError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise BatchFileError(f"cannot read {path}: it is not UTF-8 text") from None
    except BatchFileError as error:
        raise BatchFileError(f"{path}: {error}") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        as_json = True
    elif suffix == ".csv":
        as_json = False
    else:  # sniff: JSON Lines start with an object
        as_json = text.lstrip().startswith("{")
    try:
        return _checked(_json_records(text) if as_json else _csv_records(text))
    except BatchFileError as error:
        raise BatchFileError(f"{path}: {error}") from None


def _checked(records: Iterable[tuple[int, dict[str, object]]]) -> list[Row]:
    rows: list[Row] = []
    keys: dict[str, int] = {}
    external: dict[str, int] = {}
    for line, record in records:
        row = _row(line, record)
        if row.key in keys:
            raise BatchFileError(f"line {line}: key {row.key!r} repeats line {keys[row.key]}")
        keys[row.key] = line
        stamp = row.request.external_task_id
        if stamp is not None:
            if stamp in external:
                raise BatchFileError(
                    f"line {line}: external_task_id {stamp!r} repeats line {external[stamp]}"
                )
            external[stamp] = line
        rows.append(row)
    if not rows:
        raise BatchFileError("no rows")
    return rows


# -- file names ----------------------------------------------------------------------------

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_NAME_CHARS = 100


def _stem(key: str, *, hashed: bool) -> str:
    safe = _UNSAFE_NAME.sub("_", key)
    safe = re.sub(r"^[.-]+", lambda m: "_" * len(m.group()), safe)  # not hidden, not . or ..
    if hashed or safe != key or len(safe) > _NAME_CHARS:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        return f"{safe[:_NAME_CHARS]}-{digest}"
    return safe


def file_stems(keys: Sequence[str]) -> dict[str, str]:
    """Each row key's file name without its suffix, safe on any file system.

    A key made of ``A-Z a-z 0-9 . _ -`` (not starting with ``.`` or ``-``, at most 100
    characters) is its own name; any other key keeps those characters, the others replaced by
    ``_``, cut at 100, plus ``-`` and 8 hex digits of its SHA-256. Keys whose names would be
    equal, ignoring case (macOS and Windows), all get the digest. The name never holds a path
    separator, never is ``.`` or ``..``, and depends only on the keys of the file.
    """
    hashed: set[str] = set()
    while True:
        stems = {key: _stem(key, hashed=key in hashed) for key in keys}
        owners: dict[str, list[str]] = {}
        for key, stem in stems.items():
            owners.setdefault(stem.casefold(), []).append(key)
        clashing = {key for group in owners.values() if len(group) > 1 for key in group}
        if clashing <= hashed:
            return stems
        hashed |= clashing


# -- the state of a run ---------------------------------------------------------------------


@attrs.define(kw_only=True)
class Outcome:
    """What became of one row; a line of the results file."""

    key: str
    task_id: str | None = None
    status: str = "pending"  # pending, submitted, processing, succeed, failed, error
    message: str = ""
    file: str | None = None
    handle: TaskHandle | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "task_id": self.task_id,
            "status": self.status,
            "message": self.message,
            "file": self.file,
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
        )


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


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def describe(snap: Snapshot, *, eta: bool = True) -> str:
    """One line: done/total, the counts per status, downloads, ETA."""
    counts = ", ".join(f"{status} {n}" for status, n in snap.counts.items())
    parts = [f"{snap.done}/{snap.total} done", counts]
    if snap.downloads:
        parts.append(_downloads(snap))
    remaining = snap.eta() if eta else None
    if remaining is not None:
        parts.append(f"ETA {clock_text(remaining)}")
    return "  ".join(part for part in parts if part)


# -- progress -------------------------------------------------------------------------------


class BatchProgress(Protocol):
    def tick(self) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class Quiet:
    def tick(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """A line when the counts change, at most every ``interval`` s; a repeat every heartbeat."""

    def __init__(
        self,
        run: Run,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        interval: float = _PLAIN_INTERVAL,
        heartbeat: float = _PLAIN_HEARTBEAT,
    ) -> None:
        self._run = run
        self._stream = stream
        self._clock = clock
        self._interval = interval
        self._heartbeat = heartbeat
        self._last_text = ""
        self._last_time = -math.inf
        self._write(
            f"batch of {_rows(len(run.outcomes))} (Ctrl+C stops waiting; the tasks keep running "
            "and the same command resumes)"
        )

    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(clean(line), file=self._stream, flush=True)

    def note(self, text: str) -> None:
        self._write(text)

    def _line(self) -> str:
        snap = self._run.snapshot()
        return f"{clock_text(snap.elapsed)}  {describe(snap)}"

    def tick(self) -> None:
        now = self._clock()
        text = describe(self._run.snapshot(), eta=False)  # a new ETA alone is no change
        changed = text != self._last_text
        if (changed and now - self._last_time >= self._interval) or (
            now - self._last_time >= self._heartbeat
        ):
            self._last_text, self._last_time = text, now
            self._write(self._line())

    def close(self) -> None:
        text = describe(self._run.snapshot(), eta=False)
        if text != self._last_text:
            self._last_text = text
            self._write(self._line())


class RichProgress:
    """A live view on a terminal: a bar with done/total and ETA, the counts, the downloads."""

    def __init__(self, run: Run, console: Any) -> None:
        from rich.live import Live  # type: ignore[import-not-found, unused-ignore]
        from rich.progress import (  # type: ignore[import-not-found, unused-ignore]
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._run = run
        self._console = console
        self._bar = Progress(
            SpinnerColumn("dots", style="cyan"),
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,
        )
        self._task = self._bar.add_task("batch", total=len(run.outcomes))
        self._live = Live(
            self,
            console=console,
            transient=True,
            refresh_per_second=8,
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self._closed = False
        self._live.start()

    def _counts(self) -> str:
        from rich.markup import escape  # type: ignore[import-not-found, unused-ignore]

        snap = self._run.snapshot()
        styles = {"succeed": "green", "failed": "red", "error": "red", "processing": "cyan"}
        counts = "  ".join(
            f"[{styles.get(status, 'default')}]{escape(clean(status))} {n}[/]"
            for status, n in snap.counts.items()
        )
        if snap.downloads:
            counts += f"  [dim]|[/]  {escape(_downloads(snap))}"
        return counts + "  [dim](Ctrl+C stops; the same command resumes)[/]"

    def __rich__(self) -> Any:
        from rich.console import Group  # type: ignore[import-not-found, unused-ignore]
        from rich.text import Text  # type: ignore[import-not-found, unused-ignore]

        snap = self._run.snapshot()
        self._bar.update(self._task, completed=snap.done)
        return Group(self._bar, Text.from_markup("  " + self._counts()))

    def tick(self) -> None:
        pass

    def note(self, text: str) -> None:
        from rich.markup import escape  # type: ignore[import-not-found, unused-ignore]

        self._console.print(escape(clean(text)), highlight=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._live.stop()
        snap = self._run.snapshot()
        failed = snap.counts.get("failed", 0) + snap.counts.get("error", 0)
        mark = (
            "[yellow]…[/]" if snap.done < snap.total else "[red]✗[/]" if failed else "[green]✓[/]"
        )
        self._console.print(
            f"{mark} batch {snap.done}/{snap.total} done in {clock_text(snap.elapsed)}  "
            + self._counts().rsplit("  [dim](", 1)[0],
            highlight=False,
        )


def _progress(run: Run, quiet: bool) -> BatchProgress:
    if quiet:
        return Quiet()
    console = rich_console()
    if console is not None:
        return RichProgress(run, console)
    return PlainProgress(run, sys.stderr)


# -- the run --------------------------------------------------------------------------------


def _message(error: BaseException) -> str:
    """An error in words, on one line (the results file keeps it as the server said it)."""
    return one_line(str(error) or type(error).__name__)


async def _execute(
    session: KlingSession,
    rows: Sequence[Row],
    run: Run,
    args: argparse.Namespace,
    progress: BatchProgress,
    doubts: Set[str] = frozenset(),
) -> None:
    """Each row on its own: submit (bounded), wait, download (bounded); the keys in
    ``doubts`` (left in doubt by an earlier run) are looked up outside the bound.

    Rows are waited for as soon as they are created, not after the last create: the waits
    share the session's poll scheduler (single-flight queries, list refresh) just as
    ``as_completed`` would, and a create refused with 1303 (too many running tasks) gets its
    slot as soon as a wait sees a task finish.
    """
    out: pathlib.Path | None = args.out
    creates = anyio.CapacityLimiter(args.concurrency)
    fetches = anyio.CapacityLimiter(args.concurrency)

    async def submit(row: Row, outcome: Outcome) -> TaskHandle | None:
        request = row.request
        async with contextlib.nullcontext() if row.key in doubts else creates:
            try:
                handle = await session.extend(
                    **extend_arguments(request),
                    key=row.key,
                )
            except (KlingError, ValueError, RuntimeError) as error:
                # Refused (remembered by the journal), unsettled, or the key changed meaning.
                outcome.status, outcome.message = "error", _message(error)
                return None
        outcome.handle = handle
        outcome.task_id = handle.task_id
        outcome.status = handle.last.status.value if handle.last else "submitted"
        return handle

    names = file_stems([row.key for row in rows])

    async def fetch(outcome: Outcome, task: Task) -> None:
        assert out is not None
        video = task.video
        if video is None:
            outcome.status, outcome.message = "error", "succeeded but the reply lists no video"
            return
        suffix = pathlib.PurePosixPath(file_name(video.id, video.url)).suffix
        target = out / (names[outcome.key] + suffix)
        run.downloads += 1
        if target.exists():  # download() renames only finished files into place
            outcome.file = str(target)
            run.downloads_skipped += 1
            run.fetched(outcome.key, ok=True)
            return
        async with fetches:
            try:
                path = await session.download(
                    task,
                    target,
                    progress=lambda done, total: run.received(outcome.key, done, total),
                )
            except (KlingError, OSError, ValueError) as error:
                run.fetched(outcome.key, ok=False)
                outcome.status, outcome.message = "error", f"download failed: {_message(error)}"
                return
        run.fetched(outcome.key, ok=True)
        outcome.file = str(path)

    async def one(row: Row, outcome: Outcome) -> None:
        handle = await submit(row, outcome)
        if handle is None:
            return
        try:
            task = await handle.wait()
        except TaskFailedError as error:
            task = error.task
        except NotFoundError as error:  # the journal recorded it gone: a re-run says so too
            outcome.status = "error"
            forget = shlex.join([PROG, "journal", "forget", str(_paths(args)[0]), outcome.key])
            outcome.message = (
                f"the task vanished on the server ({_message(error)}); to create it again: {forget}"
            )
            return
        except KlingError as error:  # the queries gave up (an outage)
            outcome.status = "error"
            outcome.message = (
                f"stopped waiting: {_message(error)}; the task may still be running: "
                "run the same command again to resume"
            )
            return
        outcome.message = task.status_message
        if task.status is TaskStatus.SUCCEED and out is not None:
            outcome.status = "downloading"
            await fetch(outcome, task)
            if outcome.status != "downloading":  # the download failed
                return
        outcome.status = task.status.value

    async def beat() -> None:
        while True:
            await anyio.sleep(_TICK)
            progress.tick()

    async with anyio.create_task_group() as ticker:
        ticker.start_soon(beat)
        async with anyio.create_task_group() as group:
            for row, outcome in zip(rows, run.outcomes, strict=True):
                group.start_soon(one, row, outcome)
        ticker.cancel_scope.cancel()


def _write_results(path: pathlib.Path, outcomes: Iterable[Outcome]) -> None:
    """The results file, replaced in one step (a crash leaves the old one or none)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with temp.open("w", encoding="utf-8") as file:
        for outcome in outcomes:
            file.write(json.dumps(outcome.as_json()) + "\n")
    os.replace(temp, path)


def _row_line(outcome: Outcome) -> str:
    parts = [outcome.key, outcome.task_id or "-", outcome.status]
    if outcome.message:
        parts.append(f"({outcome.message})")
    if outcome.file:
        parts.append(f"-> {outcome.file}")
    return "  ".join(parts)


def _print_rows(outcomes: Iterable[Outcome], as_json: bool) -> None:
    try:
        for outcome in outcomes:
            print(
                json.dumps(outcome.as_json()) if as_json else clean(_row_line(outcome)),
                flush=True,
            )
    except BrokenPipeError:
        silence_stdout()
        raise OutputClosed from None


def _paths(args: argparse.Namespace) -> tuple[pathlib.Path, pathlib.Path]:
    file: pathlib.Path = args.file
    journal = args.journal or file.with_name(file.name + ".journal.sqlite3")
    results = args.results or file.with_name(file.name + ".results.jsonl")
    return journal, results


def _outputs(args: argparse.Namespace) -> str | None:
    """Why an output cannot be written, checked before anything is sent; None if all can.

    ``--out`` is made (with its parents) as ``extend --download`` makes its folder; the
    results file and the journal are files whose folder must exist and take a new file.
    """
    journal, results = _paths(args)
    if args.out is not None:
        problem = folder_problem(args.out)
        if problem is not None:
            return f"--out: {problem}"
    for flag, given, path in (
        ("--results", args.results, results),
        ("--journal", args.journal, journal),
    ):
        problem = file_problem(path)
        if problem is not None:
            where = flag if given is not None else f"{path} (beside FILE; choose it with {flag})"
            return f"{where}: {problem}"
    return None


def run(args: argparse.Namespace, command: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """``kling-async batch``: check everything, run the rows, write the results, say the count."""
    try:
        rows = read_rows(args.file)
    except BatchFileError as error:
        return usage_error(command, str(error))
    problem = check_command(args)
    if problem is not None:
        return usage_error(command, problem)
    problem = _outputs(args)
    if problem is not None:
        return usage_error(command, problem)
    journal, results = _paths(args)
    try:
        store = SQLiteJournal(journal)
        session = KlingSession(
            base_url=args.base_url,
            allow_insecure_http=args.allow_insecure_http,
            journal=store,
            **timeouts(args),
            **session_options(),
        )
    except ValueError as error:
        return usage_error(command, in_flags(error, args))
    batch = Run(rows)
    progress = _progress(batch, args.quiet)

    async def main() -> None:
        async with store, session:
            # Creates an earlier run left in doubt are looked up at once, outside the limit
            # of --concurrency, so that rows never sent do not wait behind their look-ups.
            keys = {row.key for row in rows}
            doubts = {
                entry.key
                for entry in await store.pending()
                if entry.state is EntryState.SENDING and entry.key in keys
            }
            if doubts:
                progress.note(
                    f"{len(doubts)} create{'s' if len(doubts) > 1 else ''} in doubt from an "
                    "earlier run: looking them up"
                )
            await _execute(session, rows, batch, args, progress, doubts)

    try:
        anyio.run(main)
    except INTERRUPTED:
        progress.close()
        snap = batch.snapshot()
        say(
            f"interrupted: {snap.done} of {_rows(snap.total)} done; "
            "the submitted tasks keep running"
        )
        say(f"resume with: {shlex.join([PROG, *argv])}")
        return 130
    except KlingError as error:  # the journal or the session as a whole (not one row)
        progress.close()
        say(f"error: {error}")
        say(f"fix it, then resume with: {shlex.join([PROG, *argv])}")
        return 1
    progress.close()
    _write_results(results, batch.outcomes)
    _print_rows(batch.outcomes, args.json)
    failed = [o for o in batch.outcomes if o.status != TaskStatus.SUCCEED.value]
    total = len(batch.outcomes)
    if failed:
        say(f"{len(failed)} of {_rows(total)} failed; results in {results}")
        return 1
    every = "all " if total > 1 else ""
    say(f"{every}{_rows(total)} succeeded; results in {results}")
    return 0
