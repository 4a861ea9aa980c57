"""The command line: ``kling-async`` (also ``python -m kling_async``).

``demo`` runs the SDK against the built-in emulator and ``emulator`` serves one (no account
needed); ``extend``, ``get``, ``wait`` and ``list`` talk to Kling or a gateway with the
credentials from the environment (``KLING_API_KEY`` or ``KLING_ACCESS_KEY`` +
``KLING_SECRET_KEY``, and ``KLING_BASE_URL``).

This module runs the commands on the public session API, as any user's code would; the
parser is `_cli_parser`, a task's words `_cli_task`, progress `_cli_progress`, the batch
command `_cli_batch`, the chain command `_cli_chain`, the journal command `_cli_journal`.
Results go to stdout, progress, logs and errors to stderr. Every argument is checked before
anything is sent, and messages speak in flags and commands, not in the SDK's Python names.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import pathlib
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence

import anyio

from . import (
    KlingSession,
    PollPolicy,
    RetryPolicy,
    TaskHandle,
    _cli_batch,
    _cli_chain,
    _cli_journal,
    _cli_mcp,
)
from ._cli_output import (
    INTERRUPTED,
    PROG,
    OutputClosed,
    check_command,
    clean,
    in_flags,
    remote_session,
    say,
    silence_stdout,
    usage_error,
)
from ._cli_parser import build_parser
from ._cli_progress import Progress, progress_view
from ._cli_request import extend_arguments, extend_request
from ._cli_task import download_display, show, task_display, task_line
from .errors import (
    AmbiguousCreateError,
    KlingError,
    ListUnavailableError,
    RateLimitError,
    ResponseDecodeError,
    RetryAfterTooLongError,
    ServerError,
    TaskFailedError,
    TransportError,
    WaitTimeoutError,
)
from .models import ExtendRequest, Task, TaskFamily, TaskStatus

__all__ = ["main"]

# How often a wait looks at its task's newest state (for the progress and its age).
_TICK = 0.25
# When --timeout runs out, one last query tells the state at the deadline; it waits this long.
_FINAL_QUERY_SECONDS = 5.0


# -- waiting --------------------------------------------------------------------------------


class _StaleTimeout(WaitTimeoutError):
    """A timed-out wait whose last query failed: the state shown is ``age`` seconds old."""

    def __init__(self, handle: TaskHandle, *, timeout: float, age: float | None, why: str) -> None:
        super().__init__(handle.task_id, timeout=timeout, last=handle.last)
        self.age = age
        self.why = why


class _Seen:
    """A handle's newest state and the loop time it was first seen (a wait's freshness)."""

    def __init__(self, handle: TaskHandle) -> None:
        self._handle = handle
        self.task = handle.last
        self.at = anyio.current_time()

    def note(self) -> None:
        if self._handle.last is not self.task:
            self.task, self.at = self._handle.last, anyio.current_time()


async def _follow(
    handle: TaskHandle, timeout: float | None, progress: Progress[Task | None]
) -> Task:
    """Wait for the task, reporting each status change; raise as ``handle.wait()`` would.

    When ``timeout`` runs out, one more query (bounded by `_FINAL_QUERY_SECONDS`) tells the
    state at the deadline: a task that finished since the last poll is reported finished,
    and one still running is reported as it is now. Should that query fail, the error says
    how old the last known state is.
    """
    failure: BaseException | None = None
    seen = _Seen(handle)
    with anyio.move_on_after(timeout) as deadline:
        async with anyio.create_task_group() as group:

            async def beat() -> None:
                while True:
                    await anyio.sleep(_TICK)
                    seen.note()
                    progress.tick()

            group.start_soon(beat)
            try:
                async for task in handle.watch():
                    seen.note()
                    progress.update(task)
            except Exception as error:  # re-raised below, outside the task group
                failure = error
            finally:
                group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    last = handle.last
    if deadline.cancelled_caught and (last is None or not last.done):
        seen.note()
        query_error: KlingError | None = None
        answered = False
        with anyio.move_on_after(_FINAL_QUERY_SECONDS):
            try:
                last = await handle.poll()
            except KlingError as error:
                query_error = error
            else:
                answered = True
                if last is not seen.task:
                    progress.update(last)
        if not answered:
            age = None if seen.task is None else anyio.current_time() - seen.at
            why = str(query_error) if query_error else f"no reply in {_FINAL_QUERY_SECONDS:g} s"
            stale = _StaleTimeout(handle, timeout=timeout or 0.0, age=age, why=why)
            raise stale from query_error
    if last is None or not last.done:
        raise WaitTimeoutError(handle.task_id, timeout=timeout or 0.0, last=last)
    if last.status is TaskStatus.FAILED:
        raise TaskFailedError(last)
    return last


# -- commands -------------------------------------------------------------------------------


class _State:
    """What main() must know when a command ends early: the task, and whether it was shown."""

    def __init__(self) -> None:
        self.handle: TaskHandle | None = None
        self.shown = False


async def _demo(args: argparse.Namespace) -> int:
    from .testing import Fault, KlingEmulator

    async with KlingEmulator(step_seconds=args.step) as emulator:
        emulator.fail_video("demo-video-risky", "content risk control")
        # Show a retry: the first create meets Kling's rate limit (1302) and is sent again.
        emulator.inject(Fault.rate_limited(1302), route="create")
        print(f"emulator listening on {emulator.base_url} (no account needed)")
        async with KlingSession(
            access_key=emulator.access_key,
            secret_key=emulator.secret_key,
            base_url=emulator.base_url,
            # Poll about twice per emulated step, so the demo shows every status.
            poll_policy=PollPolicy(first_delay=args.step / 2, growth=1.5, max_delay=args.step * 2),
            retry_policy=RetryPolicy(first_delay=args.step / 2),
        ) as session:
            videos = ["demo-video-1", "demo-video-2", "demo-video-risky"]
            handles = [await session.extend(video, prompt="pull back") for video in videos]
            for video, handle in zip(videos, handles, strict=True):
                print(clean(f"submitted {video} as task {handle.task_id}"))

            async def follow(video: str, handle: TaskHandle) -> None:
                async for task in handle.watch():
                    print(f"{video}: {task_line(task)}")

            async with anyio.create_task_group() as group:
                for video, handle in zip(videos, handles, strict=True):
                    group.start_soon(follow, video, handle)
            stats = session.statistics()
            print(
                f"done: {stats.requests_sent} requests, {stats.retries} retried, "
                f"{stats.tasks_created} tasks created"
            )
    return 0


async def _remote(session: KlingSession, args: argparse.Namespace, state: _State) -> int:
    async with session:
        if args.command == "get":
            show(await session.get_task(args.task_id, family=args.family), args.json)
            return 0
        if args.command == "list":
            listing = session.list_tasks(
                page_size=args.page_size, max_pages=args.pages, family=args.family
            )
            async for listed in listing:
                show(listed, args.json)
            return 0
        if args.command == "extend":
            handle = await session.extend(**extend_arguments(extend_request(vars(args))))
            state.handle = handle
            if not args.wait:
                show(
                    handle.last or Task(task_id=handle.task_id, status=TaskStatus.SUBMITTED),
                    args.json,
                )
                state.shown = True
                return 0
        else:
            handle = state.handle = session.task(args.task_id, family=args.family)
        progress = progress_view(task_display(handle.task_id), None, args.quiet)
        try:
            task = await _follow(handle, args.timeout, progress)
        finally:
            progress.close()
        file = None
        if getattr(args, "download", None) is not None:
            file = await _download(session, task, args.download, args.quiet)
        show(task, args.json, file=file)
        state.shown = True
    return 0


async def _download(
    session: KlingSession, task: Task, folder: pathlib.Path, quiet: bool
) -> pathlib.Path:
    """Download the result into ``folder`` with its progress on stderr; return the file."""
    name = task.video.id if task.video else task.task_id
    progress = progress_view(download_display(name), (0, None), quiet)
    try:
        path = await session.download(
            task, folder, progress=lambda done, total: progress.update((done, total))
        )
    finally:
        progress.close()
    return path


# -- errors in the CLI's words --------------------------------------------------------------


def _resume_command(args: argparse.Namespace, task_id: str) -> str:
    words = [PROG, "wait", task_id]
    family = getattr(args, "family", TaskFamily.EXTEND)
    if family is not TaskFamily.EXTEND:
        words += ["--family", family.value]
    if args.base_url is not None:
        words += ["--base-url", args.base_url]
    if args.allow_insecure_http:
        words.append("--allow-insecure-http")
    if args.json:
        words.append("--json")
    return shlex.join(words)


def _kling_message(error: KlingError, args: argparse.Namespace, task_id: str | None) -> str:
    """One line for a KlingError, saying what the user can run next."""
    if isinstance(error, _StaleTimeout):
        if error.last is None or error.age is None:
            seen = "its status is not known"
        else:
            seen = f"it was {error.last.status.value} as of {error.age:.0f} s ago"
        text = (
            f"stopped waiting for task {error.task_id} after {error.timeout:g} s: {seen} "
            f"(the query at the deadline failed: {error.why}); it keeps running on the server"
        )
    elif isinstance(error, WaitTimeoutError):
        status = error.last.status.value if error.last is not None else "not yet seen"
        text = (
            f"task {error.task_id} was still {status} after waiting {error.timeout:g} s; "
            "it keeps running on the server"
        )
    elif isinstance(error, AmbiguousCreateError):
        how = (
            f"look it up with '{PROG} get {error.external_task_id}'"
            if error.external_task_id
            else f"look for it with '{PROG} list' or in the Kling console"
        )
        request = error.request
        what = (
            f"video {request.video_id}" if isinstance(request, ExtendRequest) else request.subject
        )
        text = (
            f"{error.args[0] if error.args else 'the create outcome is unknown'}; the create for "
            f"{what} sent at {error.sent_at.isoformat()} may have made a "
            f"(paid) task: {how} before you extend that video again"
        )
    elif isinstance(error, RetryAfterTooLongError):
        text = (
            f"the server asked to retry after {error.retry_after:g} s, longer than the "
            f"{error.cap:g} s this command waits; try again later ({error.error})"
        )
    elif isinstance(error, ListUnavailableError):
        text = f"{error}; most gateways do not offer it: use '{PROG} get TASK_ID' instead"
    else:
        text = str(error)
    text = f"error: {text}"
    if task_id is not None:
        text += f"; resume the wait with '{_resume_command(args, task_id)}'"
    return text


# -- logging --------------------------------------------------------------------------------


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (a live view may have redirected it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Log lines quote the server (error messages, task ids): cleaned like the rest.
            print(clean(self.format(record)), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """``-v``: the SDK's INFO lines (retries) on stderr; ``-vv``: DEBUG (every request)."""
    if not verbosity:
        yield
        return
    logger = logging.getLogger("kling_async")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    level = logger.level
    logger.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- main -----------------------------------------------------------------------------------


def _exit_status(exit: SystemExit) -> int:
    return exit.code if isinstance(exit.code, int) else 2 if exit.code else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status.

    0 success, 1 a Kling error (including a failed task or a timeout), 2 bad usage (nothing
    was sent), 130 interrupted (the remote task keeps running).
    """
    parser, commands = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error argparse printed
        return _exit_status(exit)
    command = commands[args.command]
    if unknown:  # argparse would blame the top-level parser and show its usage
        return usage_error(command, f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "emulator":
        serve: Callable[[argparse.Namespace], int] = args.serve
        return serve(args)
    with _logging(args.verbose):
        try:
            if args.command == "demo":
                return anyio.run(_demo, args)
            if args.command == "journal":
                return _cli_journal.run(args)
            if args.command == "mcp":
                return _cli_mcp.run(args, command)
            if args.command == "batch":
                return _cli_batch.run(args, command, list(sys.argv[1:] if argv is None else argv))
            if args.command == "chain":
                return _cli_chain.run(args, command, list(sys.argv[1:] if argv is None else argv))
            return _main_remote(args, command)
        except INTERRUPTED:
            return 130
        except (OutputClosed, BrokenPipeError):  # nobody reads the rest: stop quietly
            silence_stdout()
            return 1


def _main_remote(args: argparse.Namespace, command: argparse.ArgumentParser) -> int:
    problem = check_command(args)
    if problem is not None:
        return usage_error(command, problem)
    try:
        session = remote_session(args)
    except ValueError as error:
        return usage_error(command, in_flags(error, args))
    state = _State()
    try:
        return anyio.run(_remote, session, args, state)
    except INTERRUPTED:
        _show_last(state, args)
        handle = state.handle
        if handle is None and args.command == "extend":
            say(
                "interrupted before Kling answered the create: it may have made a (paid) task; "
                f"look for it with '{PROG} list' or in the Kling console before extending "
                "the video again"
            )
        elif handle is None:
            say("interrupted")
        else:
            say(f"interrupted: stopped waiting for task {handle.task_id}; it keeps running")
            say(f"resume with: {_resume_command(args, handle.task_id)}")
        return 130
    except KlingError as error:
        _show_last(state, args, error.task if isinstance(error, TaskFailedError) else None)
        say(_kling_message(error, args, _resumable(state, error)))
        return 1
    except ValueError as error:  # the SDK refused an argument; nothing was sent for it
        return usage_error(command, in_flags(error, args))


def _resumable(state: _State, error: KlingError) -> str | None:
    """The id of a task whose wait ended early for a reason that waiting again can outlast."""
    handle = state.handle
    if handle is None or handle.done:
        return None
    if isinstance(error, WaitTimeoutError):
        return handle.task_id
    transient = (TransportError, ServerError, RateLimitError, ResponseDecodeError)
    if handle.last is not None and isinstance(error, (*transient, RetryAfterTooLongError)):
        return handle.task_id
    return None


def _show_last(state: _State, args: argparse.Namespace, task: Task | None = None) -> None:
    """When a wait ends early, stdout still gets the task's last known state (and its id)."""
    if task is None and state.handle is not None:
        task = state.handle.last
    if task is not None and not state.shown:
        state.shown = True
        with contextlib.suppress(OutputClosed):  # the message on stderr matters more
            show(task, args.json)
