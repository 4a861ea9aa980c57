"""The CLI's shared output and checks: the one place that prints, and speaks in flags.

Every other ``_cli_*`` module builds on it (it imports none of them but the request
builder), so that imports run one way. Results go to stdout; progress, logs and errors to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import decimal
import math
import os
import pathlib
import re
import sys
import tempfile
from typing import Any, TypedDict

from . import Cost, KlingSession, PollPolicy, RetryPolicy
from ._cli_request import RequestProblem, extend_request
from ._source_requests import CreateRequest
from .errors import InvalidArgumentError
from .models import ExtendRequest

_PROMPT_SHOWN = 40  # characters of a source create's prompt a journal listing shows

__all__ = [
    "INTERRUPTED",
    "PROG",
    "SESSION_OPTIONS",
    "SURROGATE",
    "TEST_POLL_VARIABLE",
    "OutputClosed",
    "amount_text",
    "check_command",
    "clean",
    "clock_text",
    "cost_text",
    "file_problem",
    "folder_problem",
    "in_flags",
    "number",
    "one_line",
    "request_text",
    "rich_console",
    "say",
    "seconds_argument",
    "session_options",
    "silence_stdout",
    "size_text",
    "spent_text",
    "timeouts",
    "usage_error",
]

PROG = "kling-async"


# Extra KlingSession options; the tests put instant poll and retry policies here.
SESSION_OPTIONS: dict[str, Any] = {}


# Tests that run the CLI as a child process set this to poll every N seconds (and retry
# without waiting), so that a batch against a fast emulator takes a second, not minutes.
TEST_POLL_VARIABLE = "KLING_ASYNC_TEST_POLL_SECONDS"
# ... and this one as well to keep the default retry policy (crash and clock tests: the
# look-ups of creates in doubt wait between tries, as they do for a user).
_TEST_DEFAULT_RETRY_VARIABLE = "KLING_ASYNC_TEST_DEFAULT_RETRY"


# Ctrl+C ends anyio.run() with KeyboardInterrupt; on Python 3.10 (no Task.uncancel()) the
# runner cannot tell it from another cancellation and lets the CancelledError out instead.
INTERRUPTED = (KeyboardInterrupt, asyncio.CancelledError)


# The SDK's Python names, as a CLI user knows them (for SDK messages the CLI passes on).
_FLAGS = {
    "video_id": "VIDEO_ID",
    "task_id": "TASK_ID",
    "prompt": "--prompt",
    "negative_prompt": "--negative-prompt",
    "cfg_scale": "--cfg-scale",
    "callback_url": "--callback-url",
    "parent_task_id": "--parent-task-id",
    "external_task_id": "--external-task-id",
    "timeout": "--timeout",
    "connect_timeout": "--connect-timeout",
    "read_timeout": "--read-timeout",
    "page_size": "--page-size",
    "max_pages": "--pages",
    "api_key": "KLING_API_KEY",
    "access_key": "KLING_ACCESS_KEY",
    "secret_key": "KLING_SECRET_KEY",
}


class _Timeouts(TypedDict, total=False):
    connect_timeout: float
    read_timeout: float


def timeouts(args: argparse.Namespace) -> _Timeouts:
    """The KlingSession timeouts the command line sets (``--connect-timeout``, ...)."""
    timeouts = _Timeouts()
    if getattr(args, "connect_timeout", None) is not None:
        timeouts["connect_timeout"] = args.connect_timeout
    if getattr(args, "read_timeout", None) is not None:
        timeouts["read_timeout"] = args.read_timeout
    return timeouts


def remote_session(args: argparse.Namespace, **options: Any) -> KlingSession:
    """The session a remote command runs on: its connection flags (``--base-url``,
    ``--allow-insecure-http``, the timeouts), the tests' policies, and ``options``. A bad
    flag raises ``ValueError`` before anything is sent."""
    return KlingSession(
        base_url=args.base_url,
        allow_insecure_http=args.allow_insecure_http,
        **timeouts(args),
        **{**session_options(), **options},
    )


def session_options() -> dict[str, Any]:
    """The extra KlingSession options: the tests' policies, in-process or by environment."""
    options = dict(SESSION_OPTIONS)
    seconds = number(os.environ.get(TEST_POLL_VARIABLE, ""))
    if math.isfinite(seconds) and seconds >= 0:
        options["poll_policy"] = PollPolicy(
            first_delay=seconds,
            interval=seconds,
            list_interval=seconds,
            min_duration=0,
            max_duration=0,
            max_delay=seconds,
            jitter=0,
            learn=False,
        )
        if not os.environ.get(_TEST_DEFAULT_RETRY_VARIABLE):
            options["retry_policy"] = RetryPolicy.instant()
    return options


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def seconds_argument(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (a bad one is a usage error)."""
    value = number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


class OutputClosed(Exception):
    """Stdout's reader went away (``kling-async list | head -1``, or Ctrl+C in a pipeline)."""


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def clock_text(seconds: float) -> str:
    """Elapsed time as ``m:ss`` (``h:mm:ss`` past an hour)."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# Terminal escape sequences, 7-bit and 8-bit: CSI (``ESC [`` ... a final byte); OSC, DCS, SOS,
# PM and APC strings up to BEL or ST; and any other ``ESC`` + intermediates + final byte.
_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d-\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
# What is left that moves the cursor, rings, or reorders text: C0, DEL, C1, the bidi
# embeddings, overrides, isolates and marks, and the Unicode line and paragraph separators.
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)
_SPACING = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029")
SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean(text: str) -> str:
    """``text`` safe to print on one terminal line: what a server (or a file) sent cannot
    move the cursor, clear the screen, retitle the window, ring, or reverse the text.

    Escape sequences go whole; other control characters go, those that separate words
    (tab, CR, LF...) become a space; a lone surrogate (unprintable) becomes U+FFFD.
    """
    text = _ESCAPE.sub("", text)
    text = _CONTROL.sub(lambda m: " " if m.group() in _SPACING else "", text)
    return SURROGATE.sub("\ufffd", text)


def request_text(request: CreateRequest) -> str:
    """What a create is of, in a few words: ``video ID``, or the source family and the
    start of its prompt (a journal's keys are of any family)."""
    if isinstance(request, ExtendRequest):
        return f"video {request.video_id}"
    prompt = request.prompt
    if not prompt:
        return request.subject
    short = prompt if len(prompt) <= _PROMPT_SHOWN else prompt[: _PROMPT_SHOWN - 3] + "..."
    return f"{request.subject} {short!r}"


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def say(message: str) -> None:
    """One line on stderr, cleaned of control characters (it may quote the server)."""
    print(clean(one_line(message)), file=sys.stderr, flush=True)


def amount_text(amount: decimal.Decimal | None) -> str | None:
    """An amount as a plain decimal string (``"0.35"``, ``"10"``, never ``"1E+1"``), or None:
    how the results file and ``--json`` carry money (exact, never a float)."""
    return None if amount is None else format(amount, "f")


def _units(amount: decimal.Decimal) -> str:
    return f"{amount:f} unit" if amount == 1 else f"{amount:f} units"


def cost_text(cost: Cost | None) -> str:
    """``1 unit, 0.35 cash (list price 0.50)``: the parts of a task's cost that are known
    ("" when none is)."""
    if cost is None:
        return ""
    parts = []
    if cost.units is not None:
        parts.append(_units(cost.units))
    if cost.cash is not None:
        parts.append(f"{cost.cash:f} cash")
    text = ", ".join(parts)
    if cost.list_price is not None:
        text += f"{' ' if text else ''}(list price {cost.list_price:f})"
    return text


def spent_text(units: decimal.Decimal, cash: decimal.Decimal) -> str:
    """``spent 3 units, 1.05 cash``: the running total of a batch."""
    return f"spent {_units(units)}, {cash:f} cash"


def size_text(count: float) -> str:
    """Bytes as people read them: ``812 B``, ``4.2 MB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def in_flags(error: ValueError | str, args: argparse.Namespace) -> str:
    """An SDK ValueError's text with its Python names replaced by flags and variables."""
    message = str(error)
    if isinstance(error, InvalidArgumentError):  # "field: why" reads "--flag why" here
        message = f"{error.field} {message.removeprefix(f'{error.field}: ')}"
    base_url = "--base-url" if getattr(args, "base_url", None) is not None else "KLING_BASE_URL"
    words = {
        **_FLAGS,
        "base_url": base_url,
        "allow_insecure_http=True": "--allow-insecure-http",
        "step_seconds": "--step",
    }
    pattern = "|".join(re.escape(name) for name in sorted(words, key=len, reverse=True))
    return re.sub(rf"(?<![\w-])({pattern})(?![\w-])", lambda m: words[m.group(1)], message)


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Like ``parser.error()`` (the command's usage, then one line), but return 2."""
    parser.print_usage(sys.stderr)
    say(f"{parser.prog}: error: {message}")
    return 2


def _unwritable(folder: pathlib.Path) -> str | None:
    """Why a file cannot be made in ``folder`` (it is missing, read-only...), or None.

    It tries: an unnamed temporary file is made and dropped, which also tells a read-only
    file system or a full quota where permission bits say nothing (as root).
    """
    if not folder.is_dir():
        return f"the folder {str(folder)!r} does not exist"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot write into {str(folder)!r} ({error.strerror or error})"
    return None


def folder_problem(path: pathlib.Path) -> str | None:
    """Make the download folder (and its parents); None if it can be used, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return f"cannot use {str(path)!r} as a folder ({error.strerror or error})"
    return _unwritable(path)


def file_problem(path: pathlib.Path) -> str | None:
    """Whether an output file can be written at ``path`` (its folder is not made); None if so."""
    if path.is_dir():
        return f"{str(path)!r} is a folder"
    return _unwritable(path.parent)


def check_command(args: argparse.Namespace) -> str | None:
    """What argparse cannot check alone; None if the command may run."""
    if args.command == "extend":
        if args.timeout is not None and not args.wait:
            return "--timeout bounds --wait; pass --wait too"
        if args.download is not None:
            if not args.wait:
                return "--download saves the result of --wait; pass --wait too"
            problem = folder_problem(args.download)
            if problem is not None:
                return f"--download: {problem}"
        try:
            extend_request(vars(args))
        except RequestProblem as problem:
            return problem.naming(_FLAGS.get(problem.field or "", problem.field or ""))
    if not any(
        os.environ.get(name) for name in ("KLING_API_KEY", "KLING_ACCESS_KEY", "KLING_SECRET_KEY")
    ):
        return (
            "no credentials: set KLING_API_KEY (a gateway's key) or "
            "KLING_ACCESS_KEY and KLING_SECRET_KEY (Kling's keys)"
        )
    return None


def rich_console() -> Any | None:
    """A rich console on stderr when stderr is a terminal and rich is installed
    (``kling-async[cli]``); None for plain lines."""
    if not sys.stderr.isatty():
        return None
    try:
        from rich.console import Console  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return Console(stderr=True)
