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
import json
import os
import pathlib
import shlex
from collections.abc import Iterable, Sequence, Set

import anyio

from . import EntryState, KlingSession, SQLiteJournal, TaskHandle
from ._cli_batch_file import BatchFileError, Row, file_stems, read_rows
from ._cli_batch_state import Outcome, Run, Snapshot, batch_display, rows_text, spent
from ._cli_output import (
    INTERRUPTED,
    PROG,
    OutputClosed,
    check_command,
    clean,
    cost_text,
    file_problem,
    folder_problem,
    in_flags,
    one_line,
    remote_session,
    say,
    silence_stdout,
    spent_text,
    usage_error,
)
from ._cli_progress import Progress, progress_view
from ._cli_request import extend_arguments
from ._media import file_name
from .errors import KlingError, NotFoundError, TaskFailedError
from .models import Task, TaskStatus

__all__ = ["run"]

_TICK = 0.25


# -- the run --------------------------------------------------------------------------------


def _message(error: BaseException) -> str:
    """An error in words, on one line (the results file keeps it as the server said it)."""
    return one_line(str(error) or type(error).__name__)


async def _execute(
    session: KlingSession,
    rows: Sequence[Row],
    run: Run,
    args: argparse.Namespace,
    progress: Progress[Snapshot],
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
        outcome.cost = task.cost
        if task.status is TaskStatus.SUCCEED and out is not None:
            outcome.status = "downloading"
            await fetch(outcome, task)
            if outcome.status != "downloading":  # the download failed
                return
        outcome.status = task.status.value

    async def beat() -> None:
        while True:
            await anyio.sleep(_TICK)
            progress.update(run.snapshot())
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
    cost = cost_text(outcome.cost)
    if cost:
        parts.append(f"cost {cost}")
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
        session = remote_session(args, journal=store)
    except ValueError as error:
        return usage_error(command, in_flags(error, args))
    batch = Run(rows)
    progress = progress_view(batch_display(len(rows)), batch.snapshot(), args.quiet)

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
        progress.update(batch.snapshot())
        progress.close()
        snap = batch.snapshot()
        say(
            f"interrupted: {snap.done} of {rows_text(snap.total)} done; "
            "the submitted tasks keep running"
        )
        _say_spent(batch.outcomes)
        say(f"resume with: {shlex.join([PROG, *argv])}")
        return 130
    except KlingError as error:  # the journal or the session as a whole (not one row)
        progress.update(batch.snapshot())
        progress.close()
        say(f"error: {error}")
        say(f"fix it, then resume with: {shlex.join([PROG, *argv])}")
        return 1
    progress.update(batch.snapshot())
    progress.close()
    _write_results(results, batch.outcomes)
    _print_rows(batch.outcomes, args.json)
    failed = [o for o in batch.outcomes if o.status != TaskStatus.SUCCEED.value]
    total = len(batch.outcomes)
    _say_spent(batch.outcomes)
    if failed:
        say(f"{len(failed)} of {rows_text(total)} failed; results in {results}")
        return 1
    every = "all " if total > 1 else ""
    say(f"{every}{rows_text(total)} succeeded; results in {results}")
    return 0


def _say_spent(outcomes: Sequence[Outcome]) -> None:
    """``spent 3 units, 1.05 cash`` (of 3 rows): the summary's cost line, when a row had one."""
    units, cash, priced = spent(outcomes)
    if priced:
        say(f"{spent_text(units, cash)} ({rows_text(priced)} reported a cost)")
