"""What a session opens and closes: its transport, its journal, its receiver's tokens.

A session owns what it made and borrows what it was given (``docs/concepts.md``, "The
aiohttp session underneath"): an ``aiohttp.ClientSession`` or a transport passed in is never
closed here, a journal given as a path is opened and closed with the session, and a
receiver's tokens for the session are forgotten when it closes (their callbacks get 404).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio

from ._aiohttp_transport import AiohttpTransport, open_http_session
from ._background import Background
from ._journal import Journal
from ._sqlite_journal import SQLiteJournal
from ._transport import BoundedTransport, Transport

if TYPE_CHECKING:
    import aiohttp

    from ._config import SessionConfig
    from ._seams import AccountParts
    from ._submit import Submitter
    from ._watch import Watcher
    from ._wire import Wire
    from .callbacks import CallbackReceiver

__all__ = ["Lifetime"]


class Lifetime:
    """The resources of one session, checked at construction, opened and closed with it."""

    def __init__(
        self,
        *,
        transport: Transport | None,
        http_session: aiohttp.ClientSession | None,
        trace_configs: Sequence[aiohttp.TraceConfig] | None,
        journal: str | os.PathLike[str] | Journal | None,
        callbacks: CallbackReceiver | None,
        parts: AccountParts,
    ) -> None:
        if http_session is not None and trace_configs is not None:
            raise ValueError(
                "trace_configs go on the aiohttp.ClientSession you pass as http_session"
            )
        if transport is not None:
            if not isinstance(transport, Transport):
                raise TypeError(f"transport must be a Transport, not {type(transport).__name__}")
            if http_session is not None or trace_configs is not None:
                raise ValueError("http_session and trace_configs are for aiohttp, not transport")
        # Checked in the order of the arguments (the journal before the receiver).
        self.journal: Journal | None = None
        self._owns_journal = False
        self.parts = parts
        if journal is None and (shared := parts.journal()) is not None:
            self.journal, self._owns_journal = shared, True  # the fleet's, in its Redis
        elif journal is None or isinstance(journal, Journal):
            self.journal = journal
        elif isinstance(journal, (str, os.PathLike)):
            self.journal, self._owns_journal = SQLiteJournal(journal), True
        else:
            raise TypeError(f"journal must be a path or a Journal, not {type(journal).__name__}")
        if callbacks is not None:
            from .callbacks import CallbackReceiver

            if not isinstance(callbacks, CallbackReceiver):
                raise TypeError(
                    f"callbacks must be a CallbackReceiver, not {type(callbacks).__name__}"
                )
        self.transport = transport
        self.callbacks = callbacks
        self._borrowed = http_session
        self._trace_configs = tuple(trace_configs or ())
        self._http: aiohttp.ClientSession | None = None  # the one this session made
        self.background = Background()  # the session's chains (docs/chains.md)

    async def open(
        self, config: SessionConfig, wire: Wire, watcher: Watcher, submitter: Submitter
    ) -> None:
        """Open the account's shared parts (the fleet's Redis link), the transport (an
        aiohttp one unless given), the journal if it is ours, and the receiver's link; on a
        failure, close what was opened and raise."""
        try:
            await self.parts.open()
            if self.transport is None:
                http = self._borrowed
                if http is None:
                    http = self._http = open_http_session(
                        limit=config.limits.max_in_flight, trace_configs=self._trace_configs
                    )
                self.transport = AiohttpTransport(
                    http,
                    connect_timeout=config.timeouts.connect,
                    read_timeout=config.timeouts.read,
                    max_body=config.limits.max_response_bytes,
                )
            elif not isinstance(self.transport, BoundedTransport):
                self.transport = BoundedTransport(self.transport, config.limits.max_response_bytes)
            wire.open(self.transport)
            if self._owns_journal:
                assert self.journal is not None
                await self.journal.__aenter__()
            if self.callbacks is not None:
                submitter.receiver = self.callbacks
                submitter.link = await self.callbacks._attach(
                    watcher, wire.loop, gateway=config.gateway, fleet=self.parts.fleet
                )
        except BaseException:
            wire.close()
            await self._close_http()
            await self.parts.close()
            raise

    async def close(self, submitter: Submitter) -> None:
        """End the background work (its calls fail: the session is closed), forget the
        receiver's tokens, close what this session made, and write the journal's backlog
        (a failed write of a finish) before closing its journal."""
        with anyio.CancelScope(shield=True):
            await self.background.aclose()
        if submitter.link is not None:
            link, submitter.link = submitter.link, None
            link.close()  # its tokens are forgotten: their callbacks get 404 from now on
        await self._close_http()
        if submitter.keyed is not None:
            with anyio.CancelScope(shield=True):
                await submitter.keyed.flush()
        if self._owns_journal:
            assert self.journal is not None
            await self.journal.aclose()
        await self.parts.close()

    async def _close_http(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()
