"""The in-process side of a callback receiver: each session's tokens and their callbacks.

A session opened with a receiver gets a `SessionLink` (`CallbackTokens` in this process):
each create's token is a `Binding`, registered in the receiver's `Bindings` before the
create is sent, tied to its task id by the create's reply, and retired once the task is
seen finished (then it only answers late duplicates). A callback becomes a `Watcher.hint`
on the session's loop (docs/callbacks.md).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

import attrs
import cattrs

from ._converter import converter, load_json
from ._schedule import newer
from .models import Task

if TYPE_CHECKING:
    from ._watch import Watcher

__all__ = ["TOKEN_BYTES", "TOKEN_LENGTH", "Binding", "Bindings", "SessionLink", "parse_callback"]

TOKEN_BYTES = 24  # 192 bits of `secrets`: unguessable (at least 128 are needed)
TOKEN_LENGTH = len(secrets.token_urlsafe(TOKEN_BYTES))
# A callback that beats the create's reply is kept (the newest one per token) this long.
_EARLY_MAX_AGE = 600.0
# Tokens of tasks seen finished, kept per session so that late duplicates get 200, not 404.
_FINISHED_KEPT = 1024
_TASK_HOOK = converter.get_structure_hook(Task)


def parse_callback(body: bytes) -> Task | None:
    """The task a callback body describes, or None when it is not a task object.

    Kling sends the bare task object; an envelope with code 0 around it is accepted too.
    """
    try:
        document = load_json(body)  # amounts stay exact decimals
    except (ValueError, RecursionError):
        return None
    if isinstance(document, dict) and "task_id" not in document and document.get("code") == 0:
        document = document.get("data")
    if not isinstance(document, dict):
        return None
    try:
        return _TASK_HOOK(document, Task)  # type: ignore[no-any-return]
    except (
        cattrs.BaseValidationError,
        TypeError,
        ValueError,
        KeyError,
        AttributeError,
        OverflowError,
        RecursionError,
    ):
        return None


class Bindings:
    """A receiver's tokens: sha256(token) -> (token, binding), looked up by the hash and then
    compared in constant time, so that answers take no longer for tokens that share a prefix
    with real ones."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[str, Binding]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, digest: bytes, token: str, binding: Binding) -> None:
        """Register ``token`` (whose sha256 is ``digest``)."""
        self._entries[digest] = (token, binding)

    def pop(self, digest: bytes) -> None:
        """Forget the token whose sha256 is ``digest`` (if it is known)."""
        self._entries.pop(digest, None)

    def lookup(self, token: object) -> Binding | None:
        """The binding of ``token``, or None (not a token of this receiver)."""
        if not isinstance(token, str) or len(token) != TOKEN_LENGTH or not token.isascii():
            return None  # every token has this length: that tells nothing
        raw = token.encode("ascii")
        entry = self._entries.get(hashlib.sha256(raw).digest())
        if entry is None or not hmac.compare_digest(entry[0].encode("ascii"), raw):
            return None
        return entry[1]


class Binding:
    """One create's token: before the reply, an early callback; after, its task id."""

    __slots__ = (
        "alias",
        "digest",
        "early",
        "early_at",
        "early_signed",
        "finished",
        "link",
        "task_id",
    )

    def __init__(self, link: SessionLink, digest: bytes) -> None:
        self.link = link
        self.digest = digest
        self.task_id: str | None = None  # the id the create's reply gave
        self.alias: str | None = None  # a gateway session: Kling's id for the same task
        self.early: Task | None = None
        self.early_at = 0.0
        self.early_signed = False  # the early callback was signed: Kling's word
        self.finished = False

    def agree(self, task: Task) -> Task | None:
        """The callback's task under the create's id, or None when the ids disagree.

        Through a gateway the body carries Kling's id, which may differ from the gateway's:
        the first differing id is taken for Kling's and must be the one from then on.
        """
        if task.task_id == self.task_id:
            return task
        if self.alias is None:
            if not self.link.gateway:
                return None
            self.alias = task.task_id
        elif task.task_id != self.alias:
            return None
        assert self.task_id is not None
        return attrs.evolve(task, task_id=self.task_id)


class SessionLink:
    """One open session's tokens (`CallbackTokens`, in this process) and its watcher.

    Callbacks become `Watcher.hint` calls on the session's loop; the watcher's ``finished``
    event retires a task's token, which then only answers late duplicates.
    """

    def __init__(
        self,
        bindings: Bindings,
        watcher: Watcher,
        loop: asyncio.AbstractEventLoop,
        *,
        public_url: str,
        confirm: bool,
        gateway: bool,
    ) -> None:
        self.bindings = bindings
        self.public_url = public_url
        self.confirm = confirm
        self.watcher = watcher
        self.loop = loop
        self.gateway = gateway
        self.closed = False
        self.active: set[bytes] = set()
        self.finished: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.by_task: dict[str, Binding] = {}  # bound tokens not yet retired
        watcher.events.finished = self.task_finished

    @property
    def open_tokens(self) -> int:
        """Tokens of this session's creates whose tasks are not yet seen finished."""
        return len(self.active)

    def issue(self) -> tuple[Binding, str]:
        """A fresh token for one create, registered before the create is sent."""
        if self.closed:
            raise RuntimeError("the session's callbacks are closed")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        binding = Binding(self, digest)
        self.bindings.add(digest, token, binding)
        self.active.add(digest)
        return binding, f"{self.public_url}/{token}"

    def bind(self, binding: Binding, task_id: str) -> None:
        """The create's reply came: tie the token to its task and apply an early callback."""
        if self.closed or binding.digest not in self.active:
            return
        binding.task_id = task_id
        self.by_task[task_id] = binding
        early, binding.early = binding.early, None
        if early is not None and time.monotonic() - binding.early_at <= _EARLY_MAX_AGE:
            agreed = binding.agree(early)
            if agreed is not None:
                confirm = self.confirm and not binding.early_signed
                self.watcher.hint(task_id, agreed, confirm=confirm)
        if self.watcher.seen_done(task_id):
            self.retire(binding)

    def discard(self, binding: Binding) -> None:
        """The create made no task (or none sent with this token): forget the token."""
        self.active.discard(binding.digest)
        self.bindings.pop(binding.digest)

    def task_finished(self, task_id: str) -> None:
        """The watcher needs no more callbacks of ``task_id``: retire its token."""
        binding = self.by_task.get(task_id)
        if binding is not None:
            self.retire(binding)

    def retire(self, binding: Binding) -> None:
        """Its task was seen finished: keep the token only to answer late duplicates."""
        if self.closed or binding.finished or binding.digest not in self.active:
            return
        if binding.task_id is not None and self.by_task.get(binding.task_id) is binding:
            del self.by_task[binding.task_id]
        binding.finished = True
        self.active.discard(binding.digest)
        finished = self.finished
        finished[binding.digest] = None
        if len(finished) > _FINISHED_KEPT:
            oldest, _ = finished.popitem(last=False)
            self.bindings.pop(oldest)

    def receive(self, binding: Binding, task: Task, *, signed: bool) -> int:
        """Hand a checked callback to the watcher (``signed``: trusted, no confirming query)."""
        if self.closed:
            return 404
        if binding.finished:
            return 200 if binding.agree(task) is not None else 400
        task_id = binding.task_id
        if task_id is None:  # before the create's reply: keep the newest, checked at bind
            if binding.early is None or newer(binding.early, task):
                binding.early = task
                binding.early_at = time.monotonic()
                binding.early_signed = signed
            return 200
        agreed = binding.agree(task)
        if agreed is None:
            return 400
        confirm = self.confirm and not signed
        hint = functools.partial(self.watcher.hint, task_id, agreed, confirm=confirm)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - deliver() is a coroutine
            running = None
        if running is self.loop:
            hint()
        else:  # another loop or thread serves the receiver: hand it to the session's loop
            try:
                self.loop.call_soon_threadsafe(hint)
            except RuntimeError:  # the session's loop is closed
                return 404
        return 200

    def close(self) -> None:
        """The session closed: its tokens are forgotten (404 from now on)."""
        self.closed = True
        for digest in (*self.active, *self.finished):
            self.bindings.pop(digest)
        self.active.clear()
        self.finished.clear()
        self.by_task.clear()
        events = self.watcher.events
        if events.finished == self.task_finished:
            events.finished = None
