"""The ``kling-async`` command line's parser: the commands, their flags and their help.

Argument types make a bad value a one-line usage error (exit 2) before anything is sent.
"""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Callable
from typing import Any

from . import TaskFamily, __version__, _cli_chain, _cli_journal, _cli_mcp
from ._cli_output import PROG, number, seconds_argument
from .testing import emulator_command

__all__ = ["build_parser"]

# The commands that talk to Kling or a gateway: their help lists the environment.
_REMOTE = ("extend", "get", "wait", "list", "batch", "chain", "mcp")


# -- argument types: argparse reports a bad value as a one-line usage error ------------------


def _fraction(text: str) -> float:
    value = number(text)
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _count(maximum: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from 1 to {maximum}, got {text!r}"
            )
        return value

    return check


def _text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


_ENVIRONMENT = """\
environment:
  KLING_API_KEY                       a gateway's API key, or
  KLING_ACCESS_KEY, KLING_SECRET_KEY  Kling's access key and secret key
  KLING_BASE_URL                      the base URL (--base-url overrides it)"""


_VERBOSE = "log retries on stderr (INFO); -vv logs every request (DEBUG)"


def _add_verbose(parser: argparse.ArgumentParser | Any) -> None:
    # SUPPRESS: a -v before the command is not reset by the command's own default.
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=_VERBOSE)


def _add_waiting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=seconds_argument,
        metavar="SECONDS",
        help="stop waiting after SECONDS (then query the task once more)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="show no progress on stderr")


def _add_connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--base-url",
        type=_text,
        metavar="URL",
        help="Kling's or a gateway's base URL (default: KLING_BASE_URL, else Kling's global API)",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow a plain http:// base URL that is not on this machine (the key travels "
        "unencrypted)",
    )
    group.add_argument(
        "--connect-timeout",
        type=seconds_argument,
        metavar="SECONDS",
        help="give up connecting after SECONDS (default 10)",
    )
    group.add_argument(
        "--read-timeout",
        type=seconds_argument,
        metavar="SECONDS",
        help="give up on a reply after SECONDS without data (default 60); a create in doubt "
        "is looked up until SECONDS x 2 + the connect timeout after it was sent",
    )
    group.add_argument(
        "--json", action="store_true", help="print each task as one JSON object per line"
    )
    _add_verbose(group)


def _family(text: str) -> TaskFamily:
    try:
        return TaskFamily(text)
    except ValueError:
        names = ", ".join(family.value for family in TaskFamily)
        raise argparse.ArgumentTypeError(f"must be one of {names}, got {text!r}") from None


def _add_family(parser: argparse.ArgumentParser) -> None:
    """``--family``: which of Kling's task families (and so which routes) a task id is of."""
    parser.add_argument(
        "--family",
        type=_family,
        default=TaskFamily.EXTEND,
        metavar="FAMILY",
        help="the task's family: video-extend (default), text2video or image2video",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``kling-async`` parser, and each command's own parser by name (for its usage)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Extend Kling videos from the command line.",
        epilog=f"Run '{PROG} COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=description,
            epilog=_ENVIRONMENT if name in _REMOTE else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        subs[name] = sub
        return sub

    demo = add(
        "demo",
        "run against the built-in emulator (no account needed)",
        "Extend three videos on an in-process emulator: one create is retried, one task fails.",
    )
    demo.add_argument(
        "--step",
        type=seconds_argument,
        default=0.5,
        metavar="SECONDS",
        help="emulated seconds per status step (default %(default)s)",
    )
    _add_verbose(demo)

    extend = add(
        "extend",
        "submit an extend task (a paid job)",
        "Submit one extend task (a paid job) and print it. With --wait, show its progress\n"
        "on stderr, then print its final state.",
    )
    extend.add_argument("video_id", metavar="VIDEO_ID", type=_text, help="the video to extend")
    extend.add_argument("--prompt", metavar="TEXT", help="at most 2500 characters")
    extend.add_argument("--negative-prompt", metavar="TEXT", help="at most 2500 characters")
    extend.add_argument("--cfg-scale", type=_fraction, metavar="X", help="0 to 1")
    extend.add_argument("--callback-url", metavar="URL", help="where Kling POSTs status changes")
    extend.add_argument(
        "--parent-task-id", metavar="ID", help="the parent task id some gateways require"
    )
    extend.add_argument("--external-task-id", metavar="ID", help="your own id for the task")
    extend.add_argument("--wait", action="store_true", help="wait until the task is done")
    extend.add_argument(
        "--download",
        type=pathlib.Path,
        metavar="DIR",
        help="with --wait: download the result into DIR (made if missing) and print its path",
    )
    _add_waiting(extend)
    _add_connection(extend)

    get = add(
        "get", "show a task by task id or external task id", "Query one task once and print it."
    )
    get.add_argument("task_id", metavar="TASK_ID", type=_text)
    _add_family(get)
    _add_connection(get)

    waiting = add(
        "wait",
        "wait until a task is done",
        "Wait until a task is done, showing its progress on stderr, then print its final\n"
        "state. The task keeps running if the wait ends early (Ctrl+C, --timeout).",
    )
    waiting.add_argument("task_id", metavar="TASK_ID", type=_text)
    _add_family(waiting)
    _add_waiting(waiting)
    _add_connection(waiting)

    listing = add(
        "list",
        "list tasks, newest first",
        "Print the account's tasks of one family (extends by default), newest first (most\n"
        "gateways do not offer it).",
    )
    _add_family(listing)
    listing.add_argument(
        "--page-size",
        type=_count(500),
        default=30,
        metavar="N",
        help="tasks per page, 1 to 500 (default %(default)s)",
    )
    listing.add_argument(
        "--pages",
        type=_count(1000),
        default=1,
        metavar="N",
        help="pages to fetch, 1 to 1000 (default %(default)s)",
    )
    _add_connection(listing)

    batch = add(
        "batch",
        "extend every row of a JSON Lines or CSV file, resumably",
        "Submit one extend task (a paid job) per row of FILE, wait for all of them, optionally\n"
        "download the results, and write a results file. FILE is JSON Lines (one object per\n"
        "line) or CSV with a header; the fields are key, video_id, prompt, negative_prompt,\n"
        "cfg_scale, callback_url, parent_task_id, external_task_id and watermark. Every row\n"
        "is checked before anything is sent. A journal records each submission, so running\n"
        "the same command again after Ctrl+C or a crash resumes: no row is submitted twice\n"
        "and finished downloads are not fetched again. Exits 1 if any row failed.",
    )
    batch.add_argument("file", type=pathlib.Path, metavar="FILE", help="the requests, one per row")
    batch.add_argument(
        "--journal",
        type=pathlib.Path,
        metavar="PATH",
        help="the journal of submissions (default: FILE.journal.sqlite3 beside FILE)",
    )
    batch.add_argument(
        "--out", type=pathlib.Path, metavar="DIR", help="download each result into DIR"
    )
    batch.add_argument(
        "--results",
        type=pathlib.Path,
        metavar="PATH",
        help="where to write one JSON line per row (default: FILE.results.jsonl beside FILE)",
    )
    batch.add_argument(
        "--concurrency",
        type=_count(64),
        default=8,
        metavar="N",
        help="creates and downloads at once, 1 to 64 (default %(default)s)",
    )
    batch.add_argument("-q", "--quiet", action="store_true", help="show no progress on stderr")
    _add_connection(batch)

    chain = add("chain", _cli_chain.HELP, _cli_chain.DESCRIPTION)
    _cli_chain.add_arguments(chain)
    _add_connection(chain)

    _cli_journal.add_arguments(add("journal", _cli_journal.HELP, _cli_journal.DESCRIPTION))

    _cli_mcp.add_arguments(add("mcp", _cli_mcp.HELP, _cli_mcp.DESCRIPTION))

    emulator = add("emulator", "serve an emulated Kling API (no account needed)", "")
    # main() runs the command with the function that serves what this parser parsed.
    emulator.set_defaults(serve=emulator_command(emulator))
    return parser, subs
