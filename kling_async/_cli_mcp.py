"""``kling-async mcp``: its flags, and starting the server when the ``mcp`` extra is there.

The server itself is `_mcp_server`; it is imported only when the command runs, so that the
rest of the CLI works without ``kling-async[mcp]`` (docs/mcp.md).
"""

from __future__ import annotations

import argparse
import decimal
import ipaddress
import pathlib

from ._cli_output import PROG, say, seconds_argument, usage_error

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "serve the SDK to AI agents over the Model Context Protocol"
DESCRIPTION = (
    "Serve Kling's video tools to an AI agent over MCP: stdio by default (what desktop and\n"
    "IDE clients start), or streamable HTTP with --http. Creates return at once with their\n"
    "task; a create with a key is made at most once (the journal); --max-units/--max-cash\n"
    "refuse creates before anything is sent once spent plus running tasks reach the limit.\n"
    "Local images are read only inside --allow-dir folders; downloads go only into --out."
)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
        if host != "localhost":
            ipaddress.ip_address(host)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(
            f"must be HOST:PORT with an IP address (or localhost) and a port, got {text!r}"
        )
    return host, number


def _amount(text: str) -> decimal.Decimal:
    try:
        amount = decimal.Decimal(text)
    except decimal.InvalidOperation:
        amount = decimal.Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise argparse.ArgumentTypeError(f"must be a decimal amount >= 0, got {text!r}")
    return amount


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mcp`` command's flags."""
    parser.add_argument(
        "--http",
        type=_address,
        metavar="HOST:PORT",
        help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio (keep HOST on "
        "loopback, such as 127.0.0.1:8765: the server spends the account's money)",
    )
    parser.add_argument(
        "--emulator", action="store_true", help="run against the built-in emulator (no account)"
    )
    parser.add_argument(
        "--emulator-step",
        type=seconds_argument,
        default=2.0,
        metavar="SECONDS",
        help="with --emulator: emulated seconds per status step (default %(default)s)",
    )
    parser.add_argument(
        "--journal",
        type=pathlib.Path,
        metavar="PATH",
        help="the journal of keyed creates (default: kling-async/mcp.journal.sqlite3 in this "
        "user's data folder, such as ~/.local/share)",
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=pathlib.Path("kling-videos"),
        metavar="DIR",
        help="where download_video saves videos (default: %(default)s)",
    )
    parser.add_argument(
        "--max-units", type=_amount, metavar="N", help="refuse creates past N units spent"
    )
    parser.add_argument(
        "--max-cash", type=_amount, metavar="X", help="refuse creates past X cash spent"
    )
    parser.add_argument(
        "--allow-dir",
        type=pathlib.Path,
        action="append",
        default=[],
        metavar="DIR",
        help="image_to_video may read local images inside DIR (repeatable; default: none)",
    )
    group = parser.add_argument_group("connection")
    group.add_argument("--base-url", metavar="URL", help="Kling's or a gateway's base URL")
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow a plain http:// base URL that is not on this machine",
    )
    group.add_argument("--connect-timeout", type=seconds_argument, metavar="SECONDS")
    group.add_argument("--read-timeout", type=seconds_argument, metavar="SECONDS")


def run(args: argparse.Namespace, command: argparse.ArgumentParser) -> int:
    """Serve until the client goes away; 2 when the ``mcp`` extra is missing or a flag is
    refused by the session (nothing was sent)."""
    try:
        from ._mcp_server import run as serve
    except ImportError as error:
        if (error.name or "").split(".")[0] != "mcp":
            raise
        say(f"{PROG} mcp needs the mcp extra: pip install 'kling-async[mcp]'")
        return 2
    try:
        return serve(args)
    except ValueError as error:  # the session refused an option (a base URL, credentials)
        return usage_error(command, str(error))
