"""The MCP chain tools' rules: which source a call names, whether a key's journal entries are
this chain's, and how a chain is shown.

Pure (values in, values out): ``_mcp_chains`` hands in the arguments, the journal's entries
``key/0``, ``key/1``, ... and the tasks it saw, and sends what comes out. A key names one
chain: the same key with other prompts or another source is refused before anything is
paid (docs/mcp.md, "Chains").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._chain import ChainSource, LinkPrompt
from ._journal import EntryState, JournalEntry
from ._journal_requests import canonical
from ._mcp_results import ToolProblem
from ._source_requests import ImageToVideo, TextToVideo
from .models import ExtendRequest

__all__ = [
    "chain_text",
    "journal_mismatch",
    "journal_state",
    "plan_json",
    "same_request",
    "source_kind",
]


def source_kind(video_id: str | None, text: str | None, image: str | None) -> str:
    """Which source the call names (``video_id``, ``text`` or ``image``): exactly one."""
    given = [
        name
        for name, value in (("video_id", video_id), ("text", text), ("image", image))
        if value is not None
    ]
    if len(given) != 1:
        what = "none was" if not given else f"{' and '.join(given)} were"
        raise ToolProblem(
            "give exactly one source: video_id (a video to extend), text (a prompt for a new "
            f"source video) or image (its first frame); {what} given; nothing was sent"
        )
    return given[0]


def _source_identity(source: ChainSource) -> str:
    if isinstance(source, (TextToVideo, ImageToVideo)):
        return canonical(source, without_external_id=True)  # base64 images as digests
    return f"video:{source}"


def same_request(
    source: ChainSource,
    links: Sequence[LinkPrompt],
    other_source: ChainSource,
    other_links: Sequence[LinkPrompt],
) -> bool:
    """Whether two chain calls ask for the same chain (the same source and prompts)."""
    return _source_identity(source) == _source_identity(other_source) and tuple(links) == tuple(
        other_links
    )


def _cfg(value: float | None) -> float | None:
    return None if value is None else float(value)


def journal_mismatch(
    key: str,
    source: ChainSource,
    links: Sequence[LinkPrompt],
    entries: Mapping[int, JournalEntry | None],
) -> str | None:
    """Why the journal's entries ``key/0`` to ``key/len(links)+1`` (``entries[i]``, None when
    absent) belong to another chain than this call's, or None when they may be this one's."""
    made = isinstance(source, (TextToVideo, ImageToVideo))
    first = entries.get(0)
    other = f"the key {key!r} is journaled for another chain"
    if first is not None:
        if not made:
            return f"{other}, whose source video was made from a request; use a new key"
        if canonical(first.request, without_external_id=True) != _source_identity(source):
            return f"{other}, made from another source request ({key}/0); use a new key"
    elif made and entries.get(1) is not None:
        return f"{other}, which started from a video id, not from a request; use a new key"
    for index, link in enumerate(links, 1):
        entry = entries.get(index)
        if entry is None:
            continue
        request = entry.request
        if not isinstance(request, ExtendRequest) or (
            request.prompt,
            request.negative_prompt,
            _cfg(request.cfg_scale),
        ) != (link.prompt, link.negative_prompt, _cfg(link.cfg_scale)):
            return f"{other}: its link {index} ({key}/{index}) has another prompt; use a new key"
        if index == 1 and isinstance(source, str) and request.video_id != source:
            return f"{other}, which extends video {request.video_id}, not {source}; use a new key"
    if entries.get(len(links) + 1) is not None:
        return f"{other}, with more than the {len(links)} prompts given; use a new key"
    return None


def journal_state(entries: Sequence[JournalEntry], last_status: str | None) -> tuple[str, str]:
    """The state of a chain this server is not running, from its journal entries in link
    order and the status of its last link's task: ``(state, reason)``."""
    if not entries:
        return "unknown", "no chain with this key: nothing is journaled under key/0, key/1"
    last = entries[-1]
    if last.state is EntryState.REFUSED:
        return "stopped", f"Kling refused link {last.key}: {last.refusal_reason}"
    if last_status == "failed":
        return "stopped", f"the task of link {last.key} failed"
    return (
        "not_running",
        "this server is not running the chain (it was restarted, or the chain stopped); call "
        "chain_videos with the same key, prompts and source to continue it: links already "
        "made are not paid again",
    )


def plan_json(kind: str, shown: str, links: Sequence[LinkPrompt] | None) -> dict[str, Any]:
    """The plan as a tool shows it: the source (``kind`` and what to show of it; never an
    image's base64) and each link's prompt; ``links`` None when only the journal is known."""
    return {
        "source": {"kind": kind, "value": shown},
        "prompts": None
        if links is None
        else [
            {
                "prompt": link.prompt,
                "negative_prompt": link.negative_prompt,
                "cfg_scale": link.cfg_scale,
            }
            for link in links
        ],
        "links": None if links is None else len(links),
    }


def chain_text(key: str, state: str, made: int, planned: int | None, reason: str | None) -> str:
    """One line about a chain that tells a model what to do next."""
    of = "" if planned is None else f" of {planned}"
    head = f"chain {key!r} is {state}: {made}{of} links made"
    if state == "running":
        return (
            f"{head}; each link is a paid extend that takes a few minutes; call get_chain to "
            "follow it"
        )
    if state == "done":
        return f"{head}; the last link's video is the chain's film: download it with download_video"
    return f"{head}; {reason}" if reason else head
