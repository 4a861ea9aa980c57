"""A running chain: the `ChainHandle` callers hold and the driver that makes its links.

The driver only sends and waits, through the session's public calls (`create_source`,
`extend`); what each link asks and whether the plan may run are ``_chain``'s. It runs in the
session's background (``_background``): a caller's cancelled wait never stops it, closing
the session does (``docs/chains.md``, "A chain and its session").
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._chain import (
    ChainSource,
    LinkPrompt,
    foreign_source,
    link_key,
    next_request,
    stop_message,
)
from ._create import REFUSALS
from ._handle import TaskHandle
from ._source_requests import ImageToVideo, TextToVideo
from .errors import ChainError, SessionClosedError, TaskFailedError
from .models import ExtendRequest, Task

if TYPE_CHECKING:
    from ._journal import Journal

__all__ = ["ChainHandle", "ChainSession", "run_chain"]


class ChainSession(Protocol):
    """The session's calls a chain makes its links with."""

    async def create_source(
        self, request: TextToVideo | ImageToVideo, *, key: str | None = None
    ) -> TaskHandle: ...

    async def extend(
        self,
        video_id: str,
        *,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        cfg_scale: float | None = None,
        key: str | None = None,
    ) -> TaskHandle: ...


class ChainHandle:
    """A chain of extends (`KlingSession.chain`): ``await chain`` returns the last link's
    finished task, or raises `ChainError` when a link failed.

    ``links`` holds the handles of the extends made so far (one per prompt, in order),
    ``source`` the source task's handle (None for a video id), and `watch` yields each
    finished task. Waiting never stops the chain: it runs in its session until done or
    until the session closes.

    Added in version 0.3.
    """

    __slots__ = (
        "_changed",
        "_done",
        "_error",
        "_finished",
        "_key",
        "_links",
        "_planned",
        "_result",
        "_source",
    )

    def __init__(self, *, key: str | None, planned: int, source: TaskHandle | None) -> None:
        self._key = key
        self._planned = planned
        self._source = source
        self._links: list[TaskHandle] = []
        self._finished: list[Task] = []
        self._result: Task | None = None
        self._error: ChainError | None = None
        self._done = anyio.Event()
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<ChainHandle {self._key!r} {len(self._links)}/{self._planned} {state}>"

    @property
    def key(self) -> str | None:
        """The chain's journal key (its links are ``key/0`` for the source, ``key/i``)."""
        return self._key

    @property
    def planned(self) -> int:
        """How many extends the chain makes: one per prompt."""
        return self._planned

    @property
    def source(self) -> TaskHandle | None:
        """The handle of the source task the chain made from a request (None for a video id
        or a `Task` given: a `Task` does not say its family)."""
        return self._source

    @property
    def links(self) -> tuple[TaskHandle, ...]:
        """The handles of the extends made so far, in order (``links[i - 1]``: prompt i)."""
        return tuple(self._links)

    @property
    def finished(self) -> tuple[Task, ...]:
        """The tasks the chain has seen finish, in order: the source it made, then links."""
        return tuple(self._finished)

    @property
    def done(self) -> bool:
        """True once the chain ended: its last link finished, or it stopped."""
        return self._done.is_set()

    async def wait(self) -> Task:
        """Return the last link's finished task; raise `ChainError` if the chain stopped.

        A cancelled wait (a cancel scope, ``anyio.fail_after``) leaves the chain running.
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __await__(self) -> Generator[Any, None, Task]:
        return self.wait().__await__()

    async def watch(self) -> AsyncGenerator[Task, None]:
        """Yield each task the chain finishes (the source it made, then each link), in
        order, those finished before the watch began first; end with the chain. It never
        raises for a stopped chain: await the handle for that."""
        index = 0
        while True:
            while index < len(self._finished):
                yield self._finished[index]
                index += 1
            if self._done.is_set():
                return
            await self._changed.wait()

    # -- the driver's side ----------------------------------------------------------------

    def _saw(self, task: Task) -> None:
        self._finished.append(task)
        self._changed.set()
        self._changed = anyio.Event()

    def _end(self, result: Task | None, error: ChainError | None) -> None:
        self._result, self._error = result, error
        self._done.set()
        self._changed.set()


async def run_chain(
    session: ChainSession,
    source: ChainSource,
    links: Sequence[LinkPrompt],
    chain: ChainHandle,
    journal: Journal | None = None,
) -> None:
    """Make ``chain``'s source if needed and its links one after the other; end the handle
    with the last task, or with a `ChainError` for the link that stopped it. ``journal``
    (the session's, for a keyed chain) is read before a source is made."""
    key = chain.key
    at, handle = 0, None

    def stopped(why: str, task_id: str | None, *, failed: bool = True) -> ChainError:
        return ChainError(
            stop_message(
                key=key,
                link=at,
                links=len(links),
                why=why,
                finished=len(chain.finished),
                source_made=isinstance(source, (TextToVideo, ImageToVideo)),
                failed=failed,
            ),
            key=key,
            link=at,
            task_id=task_id,
            finished=chain.finished,
        )

    try:
        if isinstance(source, (TextToVideo, ImageToVideo)):
            made, first = link_key(key, 0), link_key(key, 1)
            if key is not None and made is not None and first is not None and journal is not None:
                refusal = foreign_source(
                    key,
                    source_recorded=await journal.get(made) is not None,
                    first_recorded=await journal.get(first) is not None,
                )
                if refusal is not None:
                    raise ValueError(refusal)
            handle = await session.create_source(source, key=link_key(key, 0))
            chain._source = handle
            task = await _finished(chain, handle)
            video_id = _video_of(task)
        else:
            video_id = source if isinstance(source, str) else _video_of(source)
        for at, link in enumerate(links, 1):
            handle = None
            request: ExtendRequest = next_request(video_id, link)
            handle = await session.extend(
                request.video_id,
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                cfg_scale=request.cfg_scale,
                key=link_key(key, at),
            )
            chain._links.append(handle)
            task = await _finished(chain, handle)
            video_id = _video_of(task)
    except TaskFailedError as error:
        chain._end(None, _chained(stopped(str(error), error.task_id), error))
    except Exception as error:  # a refused create, an outage, the session closing
        task_id = None if handle is None else handle.task_id
        # Only a refusal is kept under the link's key; the rest leave it to a re-run.
        refused = isinstance(error, REFUSALS)
        chain._end(None, _chained(stopped(str(error), task_id, failed=refused), error))
    except BaseException:  # cancelled: the session is closing
        closed = SessionClosedError("the session closed while the chain ran")
        task_id = None if handle is None else handle.task_id
        chain._end(None, _chained(stopped(str(closed), task_id, failed=False), closed))
        raise
    else:
        chain._end(task, None)


async def _finished(chain: ChainHandle, handle: TaskHandle) -> Task:
    task = await handle.wait()
    chain._saw(task)
    return task


def _video_of(task: Task) -> str:
    video = task.video
    if video is None:
        raise ValueError(f"task {task.task_id} succeeded but its reply lists no video")
    return video.id


def _chained(error: ChainError, cause: BaseException) -> ChainError:
    error.__cause__ = cause
    return error
