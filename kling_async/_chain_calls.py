"""The session's call that runs a chain of extends: `KlingSession.chain`.

Everything about the plan is checked here, before anything is sent (``_chain``); the links
are then made in the session's background by ``_chain_run`` (``docs/chains.md``).
`KlingSession` takes the call from `ChainCalls`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

from ._chain import (
    ChainSource,
    LinkPrompt,
    check_plan,
    link_prompts,
    source_seconds,
    source_video,
)
from ._chain_run import ChainHandle, ChainSession, run_chain
from ._config import check_key

if TYPE_CHECKING:
    from ._background import Background
    from ._journal import Journal
    from ._submit import Submitter
    from ._wire import Wire

__all__ = ["ChainCalls", "prepare_chain"]


class ChainCalls:
    """`KlingSession.chain`."""

    _submitter: Submitter
    _journal: Journal | None
    _wire: Wire
    _background: Background

    def chain(
        self,
        source: ChainSource,
        prompts: Sequence[str | Mapping[str, object]],
        *,
        key: str | None = None,
    ) -> ChainHandle:
        """Extend ``source`` once per prompt, each extend on the video the one before made,
        and return the running chain's handle: ``await`` it for the last task.

        ``source`` is a video id, a succeeded `Task`, or a `TextToVideo` / `ImageToVideo`
        request the chain makes the source video from first. Each prompt is a ``str`` or a
        mapping with ``"prompt"`` and optionally ``"negative_prompt"`` and ``"cfg_scale"``.
        Everything is checked before anything is sent; so is the plan: a known source
        length plus 5 s per link that could pass 3 minutes raises `InvalidArgumentError`.

        ``key`` (with a ``journal``) keys each create: ``key/0`` the source, ``key/i`` the
        extend for prompt i; the same call run again after a crash finds the links already
        made and pays for none twice (docs/chains.md). A failed link stops the chain with
        `ChainError`. Added in version 0.3.
        """
        links, handle = prepare_chain(self, source, prompts, key=key)
        session = cast("ChainSession", self)  # KlingSession, which has SourceCalls' calls too
        self._background.start(run_chain(session, source, links, handle, self._journal))
        return handle


def prepare_chain(
    calls: ChainCalls,
    source: ChainSource,
    prompts: Sequence[str | Mapping[str, object]],
    *,
    key: str | None,
) -> tuple[tuple[LinkPrompt, ...], ChainHandle]:
    """Check a chain as `KlingSession.chain` does (prompts, source, key, plan, an open
    session) and build its handle, sending nothing: the session and the MCP server
    (``_mcp_chains``) start their chains from it, each with ``run_chain``."""
    links = link_prompts(prompts)
    video_id = source_video(source)
    if key is not None:
        check_key(key, journal=calls._journal is not None)
    known = None if video_id is None else calls._submitter.durations.get(video_id)
    refusal = check_plan(source_seconds(source, known), len(links))
    if refusal is not None:
        raise refusal
    calls._wire.check_open()
    # No handle for a given Task: it carries no family, and a handle on a guessed one would
    # query the wrong route; the caller holds the Task already.
    return links, ChainHandle(key=key, planned=len(links), source=None)
