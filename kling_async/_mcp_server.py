"""``kling-async mcp``: the SDK behind a Model Context Protocol server, for AI agents.

One `KlingSession` serves every tool call (one poller per task, one pace, one 1303 gate);
creates run in the server's own task group, so a create whose caller went away (a cancelled
request, a closed connection) still finishes and lands in the journal. The tools are
registered by `_mcp_tools`, one function per group; the rules are pure (`_mcp_results`,
`_mcp_spending`) or look only at the file system (`_mcp_files`). Needs ``kling-async[mcp]``
(docs/mcp.md).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import pathlib
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from uvicorn.server import HANDLED_SIGNALS

from . import KlingSession, PollPolicy, RetryPolicy, SQLiteJournal, __version__
from ._cli_output import remote_session, say, session_options
from ._mcp_calls import KlingTools
from ._mcp_chains import register_chain_tools
from ._mcp_files import default_journal
from ._mcp_spending import Limits
from ._mcp_tools import (
    INSTRUCTIONS,
    register_create_tools,
    register_file_tools,
    register_task_tools,
)
from .testing import KlingEmulator

__all__ = ["build_server", "run"]


def build_server(tools: KlingTools) -> MCPServer:
    """The MCP server with every tool group registered on ``tools``."""
    server: MCPServer = MCPServer(
        "kling-async", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )
    register_create_tools(server, tools)
    register_task_tools(server, tools)
    register_file_tools(server, tools)
    register_chain_tools(server, tools)
    return server


@contextlib.asynccontextmanager
async def _session(args: argparse.Namespace) -> AsyncIterator[tuple[KlingSession, SQLiteJournal]]:
    """The server's one session and its journal (the chain tools read it back): on the
    built-in emulator, or with the CLI's credentials.

    Without ``--journal``, the account's journal is this user's (`default_journal`); the
    emulator's, whose tasks end with the process, is a temporary one, so that emulated keys
    never mix with an account's."""
    if args.emulator and args.journal is None:
        with tempfile.TemporaryDirectory(prefix="kling-async-mcp-") as folder:
            args.journal = pathlib.Path(folder) / "journal.sqlite3"
            async with _session(args) as opened:
                yield opened
        return
    path = default_journal() if args.journal is None else args.journal
    path.parent.mkdir(parents=True, exist_ok=True)
    async with SQLiteJournal(path) as journal, _opened(args, journal) as session:
        yield session, journal


@contextlib.asynccontextmanager
async def _opened(args: argparse.Namespace, journal: SQLiteJournal) -> AsyncIterator[KlingSession]:
    if not args.emulator:
        async with remote_session(args, journal=journal) as session:
            yield session
        return
    step = args.emulator_step
    async with KlingEmulator(step_seconds=step) as emulator:
        options = {
            "poll_policy": PollPolicy(first_delay=step / 2, growth=1.5, max_delay=step * 2),
            "retry_policy": RetryPolicy(first_delay=step / 2),
            **session_options(),
        }
        async with KlingSession(
            access_key=emulator.access_key,
            secret_key=emulator.secret_key,
            base_url=emulator.base_url,
            journal=journal,
            **options,
        ) as session:
            yield session


async def _serve_http(server: MCPServer, host: str, port: int) -> None:
    """Serve the streamable HTTP transport at ``http://HOST:PORT/mcp``; the first line on
    stderr says where (the port may have been 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    say(f"serving MCP on http://{shown}:{bound}/mcp")
    if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
        say(
            "warning: this address is not loopback: whoever reaches it can spend the account's "
            "money through this server"
        )
    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    await _Uvicorn(config).serve(sockets=[sock])


class _Uvicorn(uvicorn.Server):
    """Uvicorn, stopped by SIGINT or SIGTERM without raising the signal again once it
    stopped serving (as uvicorn does, which ended the process at once): the creates still
    running must finish and be recorded first (docs/mcp.md, "Never lost"). A second signal
    while they finish ends the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {number: signal.signal(number, self.handle_exit) for number in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for number, handler in original.items():
                signal.signal(number, handler)


async def _main(args: argparse.Namespace) -> int:
    limits = Limits(units=args.max_units, cash=args.max_cash)
    async with _session(args) as (session, journal), anyio.create_task_group() as watch:
        async with anyio.create_task_group() as group:
            tools = KlingTools(
                session,
                group,
                journal=journal,
                limits=limits,
                out=args.out,
                allow_dirs=tuple(args.allow_dir),
            )
            await tools.start()  # the journal's tasks count, and the unfinished are followed
            server = build_server(tools)
            if args.http is None:  # over HTTP, uvicorn stops serving on a signal (`_Uvicorn`)
                if sys.platform != "win32":  # no signal handlers in Windows' event loops
                    watch.start_soon(_end_on_sigterm, tools)
                await server.run_stdio_async()
            else:
                await _serve_http(server, *args.http)
            tools.stop_runs()  # chains stop here; a keyed one resumes from the journal later
            # Creates still running finish first (they are paid): the group waits for them.
        watch.cancel_scope.cancel()
    return 0


async def _end_on_sigterm(tools: KlingTools) -> None:
    """SIGTERM, which a stdio client sends after closing stdin, ends the process once the
    creates on their way are sent and recorded (docs/mcp.md, "Never lost"), not before. A
    second SIGTERM ends it at once."""
    with anyio.open_signal_receiver(signal.SIGTERM) as received:
        async for _ in received:
            break
    await tools.settled()
    signal.raise_signal(signal.SIGTERM)


def run(args: argparse.Namespace) -> int:
    """Serve until the client closes stdin (stdio) or until interrupted (HTTP)."""
    return anyio.run(_main, args)
