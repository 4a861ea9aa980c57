"""The MCP chain tools: ``chain_videos`` starts a chain of extends in the server, ``get_chain``
shows it.

A chain is checked as `KlingSession.chain` checks it (``prepare_chain``) and run by the same
driver (``run_chain``) in the server's own task group, so a cancelled tool call never stops
it. Its links are created through `GuardedChain`, which puts each create behind the
spending limit and into the ledger like any create of the server. Every chain is keyed: its
links are the journal's ``key/0`` (a made source) and ``key/i``, so a restarted server shows
the links from the journal and the same call continues the chain without paying twice
(docs/mcp.md, "Chains").
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import Field

from ._chain import LINK_SECONDS, ChainSource, LinkPrompt
from ._chain_calls import prepare_chain
from ._chain_run import ChainHandle, run_chain
from ._config import check_key
from ._images import image_value
from ._mcp_chain_rules import (
    chain_text,
    journal_mismatch,
    journal_state,
    plan_json,
    same_request,
    source_kind,
)
from ._mcp_files import image_argument
from ._mcp_results import SpendingRefusal, ToolProblem, task_json
from ._mcp_tools import tool_errors
from ._source_requests import ImageToVideo, TextToVideo
from ._source_video import MAX_EXTENDED_SECONDS
from .errors import ChainError, KlingError
from .models import Task, TaskFamily, TaskStatus

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from ._handle import TaskHandle
    from ._journal import JournalEntry
    from ._mcp_calls import KlingTools

__all__ = ["GuardedChain", "register_chain_tools"]

_MOST_LINKS = int(MAX_EXTENDED_SECONDS // LINK_SECONDS)  # no plan passes 3 minutes


class GuardedChain:
    """The `ChainSession` of the server's chains: each link's create goes through
    `KlingTools.create` (the spending limit checked before it is sent, its task recorded
    in the ledger after), then to the session."""

    def __init__(self, tools: KlingTools) -> None:
        self._tools = tools

    async def create_source(
        self, request: TextToVideo | ImageToVideo, *, key: str | None = None
    ) -> TaskHandle:
        session = self._tools.session
        return await self._tools.create(
            request.family, key, lambda used: session.create_source(request, key=used)
        )

    async def extend(
        self,
        video_id: str,
        *,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        key: str | None = None,
    ) -> TaskHandle:
        session = self._tools.session
        return await self._tools.create(
            TaskFamily.EXTEND,
            key,
            lambda used: session.extend(
                video_id,
                prompt=prompt,
                negative_prompt=negative_prompt,
                cfg_scale=cfg_scale,
                key=used,
            ),
        )


class _Chain:
    """A chain this server process started: what it was asked for and its handle."""

    def __init__(
        self,
        source: ChainSource,
        links: tuple[LinkPrompt, ...],
        plan: dict[str, Any],
        handle: ChainHandle,
    ) -> None:
        self.source, self.links, self.plan, self.handle = source, links, plan, handle

    async def ended(self) -> ChainError | None:
        """Why the finished chain stopped, None when it made every link (or still runs)."""
        if not self.handle.done:
            return None
        try:
            await self.handle.wait()
        except ChainError as error:
            return error
        return None


def _shown_image(value: str) -> str:
    """An image as a chain's plan shows it: a URL or a path as it is, never base64."""
    if value.startswith(("http://", "https://")):
        return value
    return f"an image given as data ({len(value)} characters)"


class _Chains:
    """The chains of this server process, by key, and the journal's view of the others."""

    def __init__(self, tools: KlingTools) -> None:
        self._tools = tools
        self._chains: dict[str, _Chain] = {}
        self._starting: dict[str, anyio.Lock] = {}  # one start of a key at a time

    async def source(
        self, video_id: str | None, text: str | None, image: str | None
    ) -> tuple[ChainSource, str, str]:
        """The chain's source from the call's arguments, with its kind and what to show."""
        kind = source_kind(video_id, text, image)
        if video_id is not None:
            return video_id, kind, video_id
        if text is not None:
            return TextToVideo(prompt=text), kind, text
        assert image is not None
        checked = image_argument("image", image, self._tools.allow_dirs)  # --allow-dir
        data = await anyio.to_thread.run_sync(image_value, "image", checked)
        assert data is not None
        shown = str(checked) if isinstance(checked, pathlib.Path) else _shown_image(image)
        return ImageToVideo(image=data), kind, shown

    async def start(
        self, key: str | None, source: ChainSource, kind: str, shown: str, prompts: Sequence[Any]
    ) -> _Chain:
        """Check the call, then return the chain of ``key``: the one running (the same
        call again), or a new run that continues from the journal."""
        if key is None:
            raise ToolProblem(
                "key is required: a chain makes one paid task per prompt, and its key is what "
                "makes a repeated call (or one after a restart) continue it instead of paying "
                "again; nothing was sent"
            )
        check_key(key, journal=True)
        links, handle = prepare_chain(self._tools.session, source, prompts, key=key)
        # Check and start under the key's lock: two calls that both find the chain stopped
        # (or unknown here) must not both start a run of it.
        lock = self._starting.setdefault(key, anyio.Lock())
        async with lock:
            known = await self._known(key, source, links)
            if known is not None:
                return known
            entries = {
                index: await self._tools.journal.get(f"{key}/{index}")
                for index in range(len(links) + 2)
            }
            mismatch = journal_mismatch(key, source, links, entries)
            if mismatch is not None:
                raise ToolProblem(f"{mismatch}; nothing was sent")
            return self._run(key, source, links, plan_json(kind, shown, links), handle)

    def _run(
        self,
        key: str,
        source: ChainSource,
        links: tuple[LinkPrompt, ...],
        plan: dict[str, Any],
        handle: ChainHandle,
    ) -> _Chain:
        """Start the chain of ``key`` in the server's task group (no await: the caller holds
        the key's lock until it is registered)."""
        chain = _Chain(source, links, plan, handle)
        self._chains[key] = chain
        guarded = GuardedChain(self._tools)
        self._tools.start_run(lambda: run_chain(guarded, source, links, handle))
        return chain

    async def _known(
        self, key: str, source: ChainSource, links: tuple[LinkPrompt, ...]
    ) -> _Chain | None:
        chain = self._chains.get(key)
        if chain is None:
            return None
        if not same_request(source, links, chain.source, chain.links):
            raise ToolProblem(
                f"the key {key!r} names another chain of this server (other prompts or another "
                "source); a key names one chain: use a new key; nothing was sent"
            )
        if await chain.ended() is not None:
            return None  # it stopped: run it again, from the journal
        return chain

    async def show(self, key: str) -> CallToolResult:
        """The chain of ``key``: from its handle while this server runs it, else from the
        journal's entries ``key/0``, ``key/1``, ..."""
        chain = self._chains.get(key)
        if chain is not None:
            return await self._from_handle(key, chain)
        return await self._from_journal(key)

    def _task(self, handle: TaskHandle) -> dict[str, Any]:
        task = handle.last or Task(task_id=handle.task_id, status=TaskStatus.SUBMITTED)
        self._tools.saw(task, handle.family)
        return task_json(task, handle.family)

    async def _from_handle(self, key: str, chain: _Chain) -> CallToolResult:
        self._tools.catch_up()
        handle = chain.handle
        source = None
        if handle.source is not None:
            source = {"key": f"{key}/0", **self._task(handle.source)}
        links = [
            {"link": index, "key": f"{key}/{index}", **self._task(link)}
            for index, link in enumerate(handle.links, 1)
        ]
        error = await chain.ended()
        state = "running" if not handle.done else ("done" if error is None else "stopped")
        stopped_on = None
        if error is not None:
            stopped_on = (
                "spending_limit" if isinstance(error.__cause__, SpendingRefusal) else "error"
            )
        reason = None if error is None else str(error)
        return _chain_result(key, state, chain.plan, source, links, reason, stopped_on)

    async def _from_journal(self, key: str) -> CallToolResult:
        entries: list[JournalEntry] = []
        for index in range(_MOST_LINKS + 1):
            entry = await self._tools.journal.get(f"{key}/{index}")
            if entry is None and index > 0:
                break
            if entry is not None:
                entries.append(entry)
        shown = [await self._entry_task(entry) for entry in entries]
        last_status = shown[-1].get("status") if shown else None
        state, reason = journal_state(entries, last_status)
        plan = None
        source = None
        if entries:
            first = entries[0].request
            if isinstance(first, TextToVideo):
                plan = plan_json("text", first.prompt, None)
            elif isinstance(first, ImageToVideo):
                plan = plan_json("image", _shown_image(first.image or ""), None)
            else:
                plan = plan_json("video_id", first.video_id, None)
        if entries and entries[0].key.endswith("/0"):
            source, shown = shown[0], shown[1:]
        links = [{"link": index, **task} for index, task in enumerate(shown, 1)]
        return _chain_result(key, state, plan, source, links, reason, None)

    async def _entry_task(self, entry: JournalEntry) -> dict[str, Any]:
        """A journaled link as the other tools show its task (one query when unknown)."""
        family = entry.request.family
        if entry.task_id is None:
            return {"key": entry.key, "task_id": None, "journal_state": entry.state.value}
        last = self._tools.session.task(entry.task_id, family=family).last
        try:
            task = (
                last
                if last is not None and last.done
                else await self._tools.session.get_task(entry.task_id, family=family)
            )
        except KlingError as error:
            return {
                "key": entry.key,
                "task_id": entry.task_id,
                "journal_state": entry.state.value,
                "error": str(error),
            }
        self._tools.saw(task, family)
        return {"key": entry.key, **task_json(task, family)}


def _chain_result(
    key: str,
    state: str,
    plan: dict[str, Any] | None,
    source: dict[str, Any] | None,
    links: list[dict[str, Any]],
    reason: str | None,
    stopped_on: str | None,
) -> CallToolResult:
    planned = None if plan is None else plan["links"]
    structured = {
        "key": key,
        "state": state,
        "reason": reason,
        "stopped_on": stopped_on,
        "plan": plan,
        "source": source,
        "links": links,
        "links_made": len(links),
    }
    return CallToolResult(
        content=[
            TextContent(type="text", text=chain_text(key, state, len(links), planned, reason))
        ],
        structured_content=structured,
    )


_CHAIN_KEY = (
    "Required: your own id for this chain, such as 'film-7'. Calling again with the same key "
    "returns the chain (while it runs) or continues it (after a server restart) without "
    "paying for any link twice; the same key with other prompts or another source is an error."
)
_PROMPT_ITEM = (
    "The extends, one per item, in order: each a prompt string, or an object with 'prompt' and "
    "optionally 'negative_prompt' and 'cfg_scale' (0 to 1)."
)


def register_chain_tools(server: MCPServer, tools: KlingTools) -> None:
    """``chain_videos`` (paid: one extend per prompt, plus the source) and ``get_chain``."""
    chains = _Chains(tools)

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True
        )
    )
    async def chain_videos(
        prompts: Annotated[list[str | dict[str, Any]], Field(description=_PROMPT_ITEM)],
        key: Annotated[str | None, Field(description=_CHAIN_KEY)] = None,
        video_id: Annotated[
            str | None, Field(description="Start from this video (made by a Kling v1.x model).")
        ] = None,
        text: Annotated[
            str | None, Field(description="Or make the source video from this prompt first.")
        ] = None,
        image: Annotated[
            str | None,
            Field(
                description="Or make the source video from this first frame: an https URL, "
                "bare base64, or a local file inside a folder the server allows."
            ),
        ] = None,
    ) -> CallToolResult:
        """Make a longer video: extend a video once per prompt, each extend on the video the
        one before made (about 4-5 s each, up to 3 minutes in all).

        Paid: one paid extend task per prompt, plus one for the source video when it is made
        from text or an image. Slow: each link takes a few minutes (about 4), one after the
        other, so 10 prompts take most of an hour. Give exactly one of video_id, text or
        image. Returns at once with the chain's key, plan and state; call get_chain to follow
        it. The key makes it safe to call again: the same key never pays for a link twice.
        """
        with tool_errors():
            source, kind, shown = await chains.source(video_id, text, image)
            chain = await chains.start(key, source, kind, shown, prompts)
            assert chain.handle.key is not None
            return await chains.show(chain.handle.key)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True))
    async def get_chain(
        key: Annotated[str, Field(description="The key given to chain_videos.")],
    ) -> CallToolResult:
        """Show a chain (free): each link's task so far (id, status, video, cost), the plan,
        and its state: running, done, stopped (with the reason), not_running (call
        chain_videos again with the same arguments to continue it) or unknown."""
        with tool_errors():
            check_key(key, journal=True)
            return await chains.show(key)
