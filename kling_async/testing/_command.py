"""The emulator as a command: its options, and serving until SIGINT/SIGTERM (Ctrl+C).

`emulator_command` gives a parser the emulator's description and options and returns the
function that serves with what it parsed: ``python -m kling_async.testing`` and
``kling-async emulator`` are both built with it. Every option is checked by argparse, so a
bad value is a one-line usage error (exit 2), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import decimal
import math
import shlex
import signal
import sys
from collections.abc import Callable

__all__ = ["emulator_command"]

DESCRIPTION = "Serve an emulated Kling video-extend API until interrupted (Ctrl+C)."


def _number(
    cast: Callable[[str], float], fits: Callable[[float], bool], what: str
) -> Callable[[str], float]:
    """An argparse type: ``text`` read with ``cast``, refused unless it ``fits``."""

    def read(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            value = math.nan
        if not fits(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return read


_port = _number(int, lambda port: 0 <= port <= 65535, "a port number from 0 to 65535")
_whole = _number(int, lambda value: value >= 0, "a whole number >= 0")
_seconds = _number(
    float, lambda value: math.isfinite(value) and value >= 0, "a number of seconds >= 0"
)


def _amount(text: str) -> str | None:
    """A cost the tasks report, as Kling spells it (a decimal string), or ``none``: left out."""
    if text.strip().lower() == "none":
        return None
    try:
        amount = decimal.Decimal(text)
    except decimal.InvalidOperation:
        amount = decimal.Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"expected a decimal amount >= 0 or none, got {text!r}")
    return text.strip()


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8000, help="port, 0 for any free one (default %(default)s)"
    )
    parser.add_argument(
        "--step-seconds",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="advance tasks by time: processing after N s, final after 2N s "
        "(default: advance by polls)",
    )
    parser.add_argument(
        "--polls-to-start",
        type=_whole,
        default=1,
        metavar="N",
        help="queries that still show submitted (default %(default)s)",
    )
    parser.add_argument(
        "--polls-to-finish",
        type=_whole,
        default=1,
        metavar="N",
        help="the following queries that show processing (default %(default)s)",
    )
    parser.add_argument("--api-key", default="test-key", help="gateway-style Bearer key")
    parser.add_argument("--access-key", default="test-access-key", help="JWT issuer (iss)")
    parser.add_argument("--secret-key", default="test-secret-key", help="JWT HS256 secret")
    parser.add_argument(
        "--max-running",
        type=_whole,
        default=None,
        metavar="N",
        help="parallel task limit: more answer 429 code 1303 (default: none)",
    )
    parser.add_argument(
        "--fail-video",
        action="append",
        default=[],
        metavar="VIDEO_ID",
        help="tasks extending this video end failed with 'content risk control' (repeatable)",
    )
    parser.add_argument(
        "--list-mode",
        choices=["ok", "404", "html"],
        default="ok",
        help="how the list endpoint answers: tasks, a 404, or a gateway's HTML page",
    )
    parser.add_argument(
        "--require-parent-task-id",
        action="store_true",
        help="refuse creates without task_id, like some gateways",
    )
    parser.add_argument(
        "--webhook-secret",
        action="append",
        default=[],
        metavar="SECRET",
        help="sign callbacks with this whsec_<base64> Webhook Secret, as Kling does "
        "(repeat it to sign with two during a rotation)",
    )
    parser.add_argument(
        "--drop-external-task-id",
        action="store_true",
        help="silently ignore external_task_id, like most gateways",
    )
    parser.add_argument(
        "--unit-deduction",
        type=_amount,
        default="1",
        metavar="AMOUNT",
        help="units a succeeded task reports it cost, or none (default %(default)s)",
    )
    parser.add_argument(
        "--cash-deduction",
        type=_amount,
        default=None,
        metavar="AMOUNT",
        help="cash (quota) a succeeded task reports it cost (default: none)",
    )
    parser.add_argument(
        "--list-price",
        type=_amount,
        default=None,
        metavar="AMOUNT",
        help="the list price a succeeded task reports (default: none)",
    )


async def _serve(args: argparse.Namespace) -> None:
    from kling_async.testing._emulator import KlingEmulator

    emulator = KlingEmulator(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        access_key=args.access_key,
        secret_key=args.secret_key,
        polls_to_start=args.polls_to_start,
        polls_to_finish=args.polls_to_finish,
        step_seconds=args.step_seconds,
        max_running=args.max_running,
        list_mode=args.list_mode,
        require_parent_task_id=args.require_parent_task_id,
        accept_external_task_id=not args.drop_external_task_id,
        unit_deduction=args.unit_deduction,
        cash_deduction=args.cash_deduction,
        list_price=args.list_price,
        webhook_secret=args.webhook_secret or None,
    )
    for video_id in args.fail_video:
        emulator.fail_video(video_id)
    async with emulator:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)
        print("Kling emulator running (Ctrl+C to stop)", flush=True)
        print(f"  official base URL: {emulator.base_url}", flush=True)
        print(f"  gateway base URL:  {emulator.gateway_url}", flush=True)
        print(f"  api key:           {emulator.api_key}", flush=True)
        print(f"  access key:        {emulator.access_key}", flush=True)
        print(f"  secret key:        {emulator.secret_key}", flush=True)
        if args.webhook_secret:
            count = len(args.webhook_secret)
            print(f"  callbacks signed with {count} webhook secret(s)", flush=True)
        print("try it from another terminal:", flush=True)
        print(
            f"  export KLING_API_KEY={shlex.quote(emulator.api_key)} "
            f"KLING_BASE_URL={shlex.quote(emulator.gateway_url)}",
            flush=True,
        )
        print("  kling-async extend any-video-id --wait", flush=True)
        await stop.wait()
    print("Kling emulator stopped", flush=True)


def _run(args: argparse.Namespace) -> int:
    """Serve with the options `_add_arguments` parsed until SIGINT/SIGTERM; the exit status."""
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:  # platforms without loop signal handlers
        return 0
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # argparse checked each option; this is a combination of them
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def emulator_command(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Give ``parser`` the emulator's description and options; return the function that
    serves with the options it parsed until SIGINT/SIGTERM and returns the exit status."""
    parser.description = DESCRIPTION
    _add_arguments(parser)
    return _run
