"""A chain of extends as pure decisions: its prompts, its source, its plan, its keys.

A chain (``docs/chains.md``) makes a source video if it is given a request for one, then
extends the newest video once per prompt. Everything here is decided before or between
sends, from values alone: the prompts checked as `extend` checks them, the source's length,
whether the plan would pass Kling's 3-minute limit, each link's journal key and request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ._source_requests import ImageToVideo, TextToVideo
from ._source_video import MAX_EXTENDED_SECONDS
from .errors import InvalidArgumentError
from .models import ExtendRequest, Task, TaskStatus

__all__ = [
    "LINK_SECONDS",
    "ChainSource",
    "LinkPrompt",
    "check_plan",
    "foreign_source",
    "link_key",
    "link_prompts",
    "next_request",
    "source_seconds",
    "source_video",
    "stop_message",
]

ChainSource = str | Task | TextToVideo | ImageToVideo

LINK_SECONDS = 5.0  # an extend adds 4-5 s: a plan counts the most, so none passes 3 minutes
_SOURCE_DEFAULT_SECONDS = 5.0  # a source request without ``duration`` gets Kling's "5"
_FIELDS = frozenset({"prompt", "negative_prompt", "cfg_scale"})


@attrs.frozen(kw_only=True)
class LinkPrompt:
    """What one extend of a chain says: its prompt and the options `extend` takes for it."""

    prompt: str
    negative_prompt: str | None = None
    cfg_scale: float | None = None


def next_request(video_id: str, link: LinkPrompt) -> ExtendRequest:
    """The extend of ``video_id`` (the video the previous link made) for ``link``."""
    return ExtendRequest(
        video_id=video_id,
        prompt=link.prompt,
        negative_prompt=link.negative_prompt,
        cfg_scale=link.cfg_scale,
    )


def link_prompts(prompts: object) -> tuple[LinkPrompt, ...]:
    """``prompts`` (a non-empty sequence of ``str`` or of mappings with ``"prompt"`` and
    optionally ``"negative_prompt"``, ``"cfg_scale"``), each checked as `extend` checks it;
    ``TypeError`` or ``ValueError`` naming the item otherwise."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a sequence of prompts, not {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts must not be empty: a chain extends once per prompt")
    links = []
    for index, item in enumerate(prompts):
        if isinstance(item, str):
            fields: Mapping[str, object] = {"prompt": item}
        elif isinstance(item, Mapping):
            fields = item
            unknown = sorted(str(name) for name in fields if name not in _FIELDS)
            if unknown:
                raise ValueError(
                    f"prompts[{index}]: unknown keys {', '.join(map(repr, unknown))}; a link "
                    f"takes {', '.join(sorted(_FIELDS))}"
                )
            if "prompt" not in fields:
                raise ValueError(f"prompts[{index}]: the 'prompt' key is required")
        else:
            raise TypeError(
                f"prompts[{index}] must be a str or a mapping, not {type(item).__name__}"
            )
        prompt = fields["prompt"]
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{index}]: prompt must be a str, not {type(prompt).__name__}")
        try:
            link = LinkPrompt(
                prompt=prompt,
                negative_prompt=fields.get("negative_prompt"),  # type: ignore[arg-type]  # checked next
                cfg_scale=fields.get("cfg_scale"),  # type: ignore[arg-type]  # checked next
            )
            next_request("chain-check", link)  # extend's own checks, before any I/O
        except TypeError as error:
            raise TypeError(f"prompts[{index}]: {error}") from error
        except ValueError as error:
            raise ValueError(f"prompts[{index}]: {error}") from error
        links.append(link)
    return tuple(links)


def source_video(source: object) -> str | None:
    """The video the first extend takes (None: the chain makes it from a request first);
    ``TypeError`` or ``ValueError`` for a source no chain can start from."""
    if isinstance(source, (TextToVideo, ImageToVideo)):
        return None
    if isinstance(source, str):
        next_request(source, LinkPrompt(prompt=""))  # extend's checks of a video id
        return source
    if isinstance(source, Task):
        video = source.video
        if source.status is not TaskStatus.SUCCEED or video is None:
            state = source.status.value if video is not None else f"{source.status.value}, no video"
            raise ValueError(
                f"source task {source.task_id} is {state}: a chain starts from a succeeded "
                "task with a video (wait for it first)"
            )
        return video.id
    raise TypeError(
        "source must be a video id (str), a finished Task, a TextToVideo or an ImageToVideo, "
        f"not {type(source).__name__}"
    )


def source_seconds(source: ChainSource, known: float | None) -> float | None:
    """The source video's length in seconds, None when unknown: a finished task's video's,
    a request's ``duration`` (Kling's default 5 s without one), else ``known`` (what the
    session saw of a video id)."""
    if isinstance(source, (TextToVideo, ImageToVideo)):
        return _SOURCE_DEFAULT_SECONDS if source.duration is None else float(source.duration)
    if isinstance(source, Task):
        video = source.video
        return None if video is None else video.duration
    return known


def check_plan(seconds: float | None, links: int) -> InvalidArgumentError | None:
    """The refusal of a chain of ``links`` extends on a source ``seconds`` long (None:
    unknown, then only the links count) that could pass 3 minutes; None when it cannot."""
    total = (seconds or 0.0) + LINK_SECONDS * links
    if total <= MAX_EXTENDED_SECONDS:
        return None
    source = "a source of unknown length" if seconds is None else f"a {seconds:g} s source"
    return InvalidArgumentError(
        "prompts",
        f"{links} extend{'' if links == 1 else 's'} ({LINK_SECONDS:g} s each at most) on "
        f"{source} could reach {total:g} s, past the {MAX_EXTENDED_SECONDS:g} s an extended "
        "video may be; nothing was sent",
    )


def link_key(key: str | None, link: int) -> str | None:
    """The journal key of link ``link`` (0: the source) of the chain keyed ``key``."""
    return None if key is None else f"{key}/{link}"


def foreign_source(key: str, *, source_recorded: bool, first_recorded: bool) -> str | None:
    """Why a keyed chain from a source request may not make its source: the journal holds
    its first link but no source, so the key's links were made from a video id or a task,
    and the source would be paid for a link the journal then refuses. None: it may."""
    if source_recorded or not first_recorded:
        return None
    return (
        f"key {link_key(key, 1)!r} is journaled but {link_key(key, 0)!r} is not: the chain "
        f"keyed {key!r} was made from a video, not from a source request; nothing was sent: "
        "use a new key, or run it from the video again"
    )


def stop_message(
    *,
    key: str | None,
    link: int,
    links: int,
    why: str,
    finished: int,
    source_made: bool,
    failed: bool = True,
) -> str:
    """Why a chain stopped at ``link`` of ``links`` and how to go on, in words. ``failed``:
    the link's key holds its failure (a failed task, a refused create), which a re-run gives
    again; a link stopped otherwise (the session closed) is resumed by a re-run."""
    what = "its source" if link == 0 else f"link {link} of {links}"
    done = max(0, finished - (1 if source_made else 0))
    message = f"the chain stopped at {what}: {why}; {done} of {links} links finished"
    if key is not None:
        message += (
            f"; running the same chain again (key {key!r}) resumes after the last finished link"
        )
        if failed:
            message += (
                f", and a failed link's key {link_key(key, link)!r} gives its failure again "
                "until the journal forgets it"
            )
    return message
