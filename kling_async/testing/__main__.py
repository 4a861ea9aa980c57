"""Run the Kling emulator from the command line: ``python -m kling_async.testing``.

Useful to try a client by hand or from another process; stops on SIGINT/SIGTERM (Ctrl+C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from kling_async.testing._emulator import KlingEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kling_async.testing",
        description="Serve an emulated Kling video-extend API until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port, 0 for any (default 8000)")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=None,
        help="advance tasks by time: processing after N s, final after 2N s "
        "(default: advance by polls)",
    )
    parser.add_argument("--polls-to-start", type=int, default=1)
    parser.add_argument("--polls-to-finish", type=int, default=1)
    parser.add_argument("--api-key", default="test-key", help="gateway-style Bearer key")
    parser.add_argument("--access-key", default="test-access-key", help="JWT issuer (iss)")
    parser.add_argument("--secret-key", default="test-secret-key", help="JWT HS256 secret")
    parser.add_argument("--max-running", type=int, default=None, help="parallel task limit")
    parser.add_argument("--list-mode", choices=["ok", "404", "html"], default="ok")
    parser.add_argument("--require-parent-task-id", action="store_true")
    parser.add_argument(
        "--drop-external-task-id",
        action="store_true",
        help="silently ignore external_task_id, like most gateways",
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
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
    )
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
        await stop.wait()
    print("Kling emulator stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve until SIGINT/SIGTERM; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:  # platforms without loop signal handlers
        return 0
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
