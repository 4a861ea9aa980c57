"""``kling-async journal``: what a batch journal holds, and the way out of a key stuck in it.

``show`` lists the keys that need a person: creates in doubt (sent, never answered, nobody
creating them now), tasks that vanished on the server, and requests the server refused.
``settle`` records the task a key's create made (queried first, through the session), and
``forget`` deletes a key's record so that the next run creates, and pays for, a new task.
These commands stand on the public journal and session API like any user's code.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

import anyio
import anyio.to_thread
import attrs

from . import EntryState, JournalEntry, SQLiteJournal
from ._cli_output import (
    PROG,
    OutputClosed,
    check_command,
    clean,
    in_flags,
    remote_session,
    request_text,
    say,
    silence_stdout,
    usage_error,
)
from ._source_requests import source_video_id
from .errors import JournalError, KlingError

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "show a batch journal; settle or forget its keys in doubt"
DESCRIPTION = (
    "Show what a journal holds, and settle or forget the keys that a re-run cannot resolve\n"
    "alone: a create in doubt, a task that vanished on the server, a refused request."
)

# -- arguments ------------------------------------------------------------------------------

_ENVIRONMENT = """\
environment:
  KLING_API_KEY                       a gateway's API key, or
  KLING_ACCESS_KEY, KLING_SECRET_KEY  Kling's access key and secret key
  KLING_BASE_URL                      the base URL (--base-url overrides it)"""


def _journal_path(text: str) -> pathlib.Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return pathlib.Path(text)


def add_arguments(journal: argparse.ArgumentParser) -> None:
    """The ``show``, ``settle`` and ``forget`` actions of ``kling-async journal``."""
    actions = journal.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, help: str, description: str, epilog: str | None = None) -> Any:
        action = actions.add_parser(
            name,
            help=help,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        action.set_defaults(journal_parser=action)
        action.add_argument(
            "journal",
            type=_journal_path,
            metavar="JOURNAL",
            help="the journal file (a batch's is FILE.journal.sqlite3 beside FILE)",
        )
        return action

    show = add(
        "show",
        "list the keys that need attention",
        "List the keys that need a decision: creates in doubt (sent, never answered, and no\n"
        "running process creating them), tasks that vanished on the server, and requests the\n"
        "server refused; then the count of every state. Sends nothing.",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object")

    settle = add(
        "settle",
        "record the task a key's create made",
        "Record TASK_ID as the task of KEY: the way out of a key in doubt, or whose task\n"
        "vanished. The task is queried first; one that extends another video is refused.\n"
        "The next batch run of the file waits for that task instead of creating one.",
        _ENVIRONMENT,
    )
    settle.add_argument("key", metavar="KEY", help="the row's key")
    settle.add_argument("task_id", metavar="TASK_ID", help="the task its create made")
    settle.add_argument(
        "--base-url",
        metavar="URL",
        help="Kling's or a gateway's base URL (default: KLING_BASE_URL, else Kling's global API)",
    )
    settle.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow a plain http:// base URL that is not on this machine",
    )
    settle.add_argument("--json", action="store_true", help="print one JSON object")
    settle.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="log retries on stderr (INFO); -vv logs every request (DEBUG)",
    )

    forget = add(
        "forget",
        "delete a key's record (the next run pays for a new task)",
        "Delete the record of KEY. The next batch run of the file creates, and pays for, a\n"
        "new task for that row. Use it when the create certainly made nothing, its task\n"
        "vanished, or a refused row was fixed. Asks first on a terminal. Sends nothing.",
    )
    forget.add_argument("key", metavar="KEY", help="the row's key")
    forget.add_argument("-y", "--yes", action="store_true", help="do not ask")
    forget.add_argument("--json", action="store_true", help="print one JSON object")


# -- reading a journal ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Key:
    """One key of the report: its state as ``show`` names it, and what a person needs."""

    key: str
    state: str  # in_doubt, sending, gone, refused, unreadable
    video_id: str | None = None  # None for a source create
    family: str = "video-extend"
    subject: str = ""  # what the create is of, in words (``request_text``)
    task_id: str | None = None
    sent_at: str | None = None
    external_task_id: str | None = None
    code: int | None = None
    reason: str | None = None

    def line(self) -> str:
        """``KEY  STATE  details``, every text made printable."""
        if self.state == "in_doubt":
            external = f", external id {self.external_task_id}" if self.external_task_id else ""
            details = (
                f"{self.subject}, sent {self.sent_at}{external}: it may have made a "
                "(paid) task; settle it to that task, or forget it"
            )
        elif self.state == "gone":
            details = f"task {self.task_id} vanished on the server ({self.reason})"
        elif self.state == "refused":
            code = f"{self.code} " if self.code is not None else ""
            details = f"{self.subject}: the server refused it ({code}{self.reason})"
        elif self.state == "sending":
            details = f"{self.subject}: a running process is creating it now"
        else:
            details = str(self.reason)
        return clean(f"{self.key}  {self.state.replace('_', ' ')}  {details}")


def _describe(entry: JournalEntry, in_doubt: bool) -> _Key | None:
    """The report line of ``entry``, or None for a state that needs nobody."""
    state = entry.state
    request = entry.request
    common: dict[str, Any] = {
        "key": entry.key,
        "video_id": source_video_id(request) or None,
        "family": request.family.value,
        "subject": request_text(request),
    }
    if state is EntryState.SENDING:
        return _Key(
            **common,
            state="in_doubt" if in_doubt else "sending",
            sent_at=entry.sent_at.isoformat() if entry.sent_at else None,
            external_task_id=entry.external_task_id,
        )
    if state is EntryState.GONE:
        return _Key(**common, state="gone", task_id=entry.task_id, reason=entry.refusal_reason)
    if state is EntryState.REFUSED:
        return _Key(**common, state="refused", code=entry.refusal_code, reason=entry.refusal_reason)
    return None


_ORDER = ("in_doubt", "unreadable", "gone", "refused", "sending")
_COUNTED = ("created", "finished", "intent", *_ORDER)


async def _report(path: pathlib.Path) -> tuple[list[_Key], dict[str, int]]:
    """The keys that need attention, in ``_ORDER``, and the count of every state."""
    async with SQLiteJournal(path) as journal:  # checks that it is a journal it can read
        keys = await journal.keys()  # every key, the unreadable ones too
        # pending() holds the CREATED keys and the SENDING ones nobody alive owns.
        pending = {entry.key: entry for entry in await journal.pending()}
        counts = dict.fromkeys(_COUNTED, 0)
        shown: list[_Key] = []
        for key in keys:
            entry = pending.get(key)
            try:
                if entry is None:
                    entry = await journal.get(key)
            except JournalError as error:
                counts["unreadable"] += 1
                shown.append(_Key(key=key, state="unreadable", reason=str(error.args[0])))
                continue
            if entry is None:  # forgotten since the keys were read
                continue
            line = _describe(entry, in_doubt=key in pending)
            counts[line.state if line else entry.state.value] += 1
            if line is not None:
                shown.append(line)
    shown.sort(key=lambda line: _ORDER.index(line.state))
    return shown, counts


def _summary(counts: dict[str, int]) -> str:
    parts = [f"{count} {name.replace('_', ' ')}" for name, count in counts.items() if count]
    total = sum(counts.values())
    keys = f"{total} key{'' if total == 1 else 's'}"
    return f"{keys}: {', '.join(parts)}" if parts else "no keys"


# -- the actions ----------------------------------------------------------------------------


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
        raise OutputClosed from None


def run(args: argparse.Namespace) -> int:
    """``kling-async journal ACTION``: 0 done, 1 a failure or an unknown key, 2 bad usage."""
    parser: argparse.ArgumentParser = args.journal_parser
    path: pathlib.Path = args.journal
    if not path.is_file():
        problem = (
            f"{str(path)!r} is a folder, not a journal file"
            if path.is_dir()
            else f"no such file: {str(path)!r}"
        )
        return usage_error(parser, f"JOURNAL: {clean(str(problem))}")
    try:
        if args.action == "show":
            return _show(args, path)
        if args.action == "forget":
            return _forget(args, parser, path)
        return _settle(args, parser, path)
    except JournalError as error:
        say(f"error: {error}")
        return 1


def _show(args: argparse.Namespace, path: pathlib.Path) -> int:
    shown, counts = anyio.run(_report, path)
    if args.json:
        keys = [attrs.asdict(line) for line in shown]
        _print(json.dumps({"journal": str(path), "keys": keys, "counts": counts}))
        return 0
    for line in shown:
        _print(line.line())
    _print(_summary(counts))
    if any(line.state in ("in_doubt", "gone", "unreadable") for line in shown):
        quoted = clean(str(path))
        say(
            f"settle a key to the task its create made with '{PROG} journal settle {quoted} "
            f"KEY TASK_ID', or let the next run create a new (paid) one with '{PROG} journal "
            f"forget {quoted} KEY'"
        )
    return 0


def _state_words(entry: JournalEntry | None, error: JournalError | None) -> str:
    """What ``forget`` is about to delete, in a few words: ``state: detail``."""
    if entry is None:
        return f"unreadable: {error.args[0] if error else 'unknown'}"
    if entry.state is EntryState.SENDING:
        return f"in doubt: a create for {request_text(entry.request)}"
    if entry.state is EntryState.GONE:
        return f"gone: task {entry.task_id} vanished on the server"
    if entry.task_id is not None:
        return f"{entry.state.value}: task {entry.task_id}, which stays on the server"
    return f"{entry.state.value}: {request_text(entry.request)}"


class _Changed(Exception):
    """The key's record changed between the question and the answer."""


def _confirm(question: str) -> bool:
    """Ask on the terminal; anything but y/yes (or end of input) is no."""
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        print(file=sys.stderr, flush=True)  # the shell's prompt starts on a line of its own
        raise
    return answer.strip().lower() in ("y", "yes")


def _forget(args: argparse.Namespace, parser: argparse.ArgumentParser, path: pathlib.Path) -> int:
    key: str = args.key
    if not args.yes and not sys.stdin.isatty():
        return usage_error(
            parser,
            "forgetting a key lets the next batch run create a new (paid) task for it: "
            "pass --yes to confirm when not on a terminal",
        )

    async def words(journal: SQLiteJournal) -> str | None:
        try:
            entry = await journal.get(key)
        except JournalError as unreadable:
            return _state_words(None, unreadable)
        return None if entry is None else _state_words(entry, None)

    async def describe() -> str | None:
        async with SQLiteJournal(path) as journal:
            return await words(journal)

    async def forget(seen: str) -> bool:
        async with SQLiteJournal(path) as journal:
            if await words(journal) != seen:
                raise _Changed
            return await journal.forget(key)

    try:
        what = anyio.run(describe)
        if what is None:
            outcome = None
        else:
            # Asked on the main thread, with no event loop running: Ctrl+C ends it at once.
            question = (
                f"forget key {clean(str(key))!r} ({clean(str(what))})? The next batch run "
                "creates, and pays for, a new task for it. [y/N] "
            )
            yes = args.yes or _confirm(question)
            outcome = (what, yes and anyio.run(forget, what))
    except ValueError as error:  # a live process is creating it right now
        return usage_error(parser, clean(str(error)))
    except _Changed:
        say(f"error: key {clean(str(key))!r} changed while you were asked; nothing forgotten")
        return 1
    if outcome is None:
        return _not_in(key, path)
    what, forgotten = outcome
    if args.json:
        _print(json.dumps({"key": key, "forgotten": forgotten, "was": what}))
    elif forgotten:
        _print(clean(f"{key}  forgotten  (was {what})"))
    if not forgotten:
        say("nothing forgotten")
        return 1
    say("the next batch run of its file creates a new (paid) task for this key")
    return 0


def _not_in(key: str, path: pathlib.Path) -> int:
    say(f"error: key {clean(str(key))!r} is not in journal {clean(str(path))}")
    return 1


def _settle(args: argparse.Namespace, parser: argparse.ArgumentParser, path: pathlib.Path) -> int:
    key: str = args.key
    problem = check_command(args)
    if problem is not None:
        return usage_error(parser, problem)

    async def settle() -> tuple[JournalEntry, JournalEntry] | None:
        async with SQLiteJournal(path) as journal:
            before = await journal.get(key)
            if before is None:
                return None
            async with remote_session(args, journal=journal) as session:
                await session.settle(key, args.task_id)
            after = await journal.get(key)
            assert after is not None  # settled just now; only forget deletes a record
            return before, after

    try:
        outcome = anyio.run(settle)
    except ValueError as error:  # another video, a task of another key, a bad argument
        return usage_error(parser, clean(str(in_flags(error, args))))
    except KlingError as error:  # the query failed: nothing was recorded
        if isinstance(error, JournalError):
            raise
        say(f"error: {error}; nothing was recorded")
        return 1
    if outcome is None:
        return _not_in(key, path)
    before, after = outcome
    if args.json:
        _print(
            json.dumps(
                {
                    "key": key,
                    "state": after.state.value,
                    "task_id": after.task_id,
                    "video_id": source_video_id(after.request) or None,
                    "family": after.request.family.value,
                    "was": before.state.value,
                }
            )
        )
    else:
        _print(
            clean(
                f"{key}  {after.state.value}  task {after.task_id}, "
                f"{request_text(after.request)}  (was {before.state.value})"
            )
        )
    say("the next batch run of its file waits for this task instead of creating one")
    return 0
