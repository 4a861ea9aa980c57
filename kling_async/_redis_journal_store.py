"""The Redis journal's records: the scripts, the reads and the fleet-wide writes.

`RecordStore` runs ``_redis_journal_lua``'s scripts on the fleet's client and turns every
Redis failure into a `JournalError` (`JournalUnavailableError` when Redis did not answer);
`RedisJournal` (``_redis_journal``) holds the claims, the fences and the waits on top.
The reads (`get`, `pending_entries`, `doubts`, `keys_of`) and the writes no claim owns
(finish, gone, forget, settle) are here; the decisions are ``_journal_rules``'.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs

from . import _redis_journal_lua as lua
from ._fleet import text
from ._journal import EntryState, JournalEntry, check_id, check_key, check_video
from ._journal_hash import fields_of, read_hash, score_of
from ._journal_rows import stamp_time, task_text
from ._journal_rules import is_pending, settle_refusal
from .errors import FleetError, FleetUnavailableError, JournalError
from .models import TaskStatus

if TYPE_CHECKING:
    from ._fleet import Fleet

__all__ = ["JournalUnavailableError", "RecordStore", "utc_now"]

logger = logging.getLogger("kling_async")

_T = TypeVar("_T")
_CHUNK = 500  # keys read by one script call or one HMGET
TRIES = 50
"""Compare-and-set rounds before a claim or a settle gives up (constant contention)."""


class JournalUnavailableError(JournalError, FleetUnavailableError):
    """The fleet's Redis did not answer a journal call: a `JournalError` (the session's
    journal handling applies) and a `FleetUnavailableError`; the fleet's error is the cause.
    A claim that raises it left no claim the session relies on: nothing is sent. Private:
    users catch either public class (``docs/fleet.md``, "Failure modes").
    """


class RecordStore:
    """The journal's keys under ``fleet.key("j")`` and the scripts that read and write them."""

    def __init__(self, fleet: Fleet, check: Callable[[], None]) -> None:
        self.fleet = fleet
        self._check = check  # the journal's: raises unless it is open
        prefix = fleet.key("j")
        self.rec = f"{prefix}:rec:"
        self.video = f"{prefix}:video:"
        self.pending_keys = f"{prefix}:pending"
        self.tasks = f"{prefix}:tasks"
        self.counter = f"{prefix}:fence"
        self.alive = fleet.alive_key("")
        self.where = f"redis {prefix}"
        client = fleet.client
        self.scripts = {  # registering sends nothing
            name: client.register_script(getattr(lua, name)) for name in lua.__all__
        }

    @property
    def token(self) -> str:
        """The owner token of this fleet instance."""
        return self.fleet.instance

    async def finish(
        self, task_id: str, status: TaskStatus | str, task: Mapping[str, Any] | None = None
    ) -> bool:
        """Record a task's final status; False when no key holds that task id."""
        check_id("task_id", task_id)
        value = TaskStatus(check_id("status", status)).value
        text = task_text(task)
        done = await self.script(
            "FINISH",
            "recording a finished task",
            [self.tasks, self.pending_keys],
            [task_id, value, text or "", "0" if text is None else "1", self.rec],
        )
        return bool(int(done))

    async def gone(self, task_id: str, reason: str, *, before: dt.datetime) -> str | None:
        """CREATED -> GONE for a key claimed before ``before``; the key, or None."""
        check_id("task_id", task_id)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        stamp = stamp_time(before, "before")
        # How old "before" means, measured on Redis's clock against the send (this host's
        # clock may be minutes off the host that sent it).
        age = max(0, int((utc_now() - before).total_seconds() * 1000))
        key = await self.script(
            "GONE",
            "recording a task gone",
            [self.tasks, self.pending_keys],
            [task_id, reason, stamp, self.rec, secrets.token_hex(8), str(age)],
        )
        return None if key is None else text(key)

    async def get(self, key: str) -> JournalEntry | None:
        """The record of ``key``, or None."""
        check_key(key)
        client = self.fleet.client
        raw = await self.redis("reading a key", lambda: client.hgetall(self.rec + key), key=key)
        return read_hash(key, fields_of(raw), self.where, now=utc_now()) if raw else None

    async def pending_entries(self) -> list[JournalEntry]:
        """The whole fleet's CREATED entries and SENDING ones in doubt, oldest claim first."""
        client = self.fleet.client
        members = await self.redis(
            "listing unfinished keys", lambda: client.zrange(self.pending_keys, 0, -1)
        )
        keys = [text(member) for member in members]
        entries: list[JournalEntry] = []
        for start in range(0, len(keys), _CHUNK):
            found = await self.script(
                "PENDING",
                "reading unfinished keys",
                [],
                [self.token, self.alive, self.rec, *keys[start : start + _CHUNK]],
            )
            for member, alive, raw in found:
                entry = self.readable(text(member), raw)
                if entry is not None and is_pending(entry.state, owner_alive=int(alive) == 1):
                    entries.append(entry)
        entries.sort(key=lambda entry: (entry.claimed_at, entry.key))
        return entries

    async def doubts(self, video_id: str) -> list[JournalEntry]:
        """Every SENDING entry for ``video_id``, whoever owns it, in any process."""
        check_video(video_id)
        found = await self.script(
            "DOUBTS", "reading creates in doubt", [self.video + video_id], [self.rec]
        )
        entries = (self.readable(text(member), raw) for member, raw in found)
        return [entry for entry in entries if entry is not None]

    async def keys_of(self, task_ids: Collection[str]) -> dict[str, str]:
        """Which of ``task_ids`` are recorded, and for which key."""
        ids = list(dict.fromkeys(task_ids))
        client = self.fleet.client
        found: dict[str, str] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]

            async def read(chunk: list[str] = chunk) -> list[Any]:
                return await client.hmget(self.tasks, chunk)

            keys = await self.redis("reading task ids", read)
            pairs = zip(chunk, keys, strict=True)
            found.update((tid, text(key)) for tid, key in pairs if key is not None)
        return found

    async def forget(self, key: str) -> bool:
        """Delete the record of ``key``; ``ValueError`` while a live instance owns it."""
        check_key(key)
        done = int(
            await self.script(
                "FORGET",
                "forgetting a key",
                [self.rec + key, self.pending_keys, self.tasks],
                [self.token, self.alive, key, self.video],
                key=key,
            )
        )
        if done < 0:
            raise ValueError(f"key {key!r} is being created by a live journal instance")
        return bool(done)

    async def settle(self, key: str, task_id: str) -> JournalEntry:
        """Record ``task_id`` as the task of ``key`` (a key in doubt or gone): CREATED, not
        owned; ``ValueError`` as `SQLiteJournal.settle` raises it."""
        check_key(key)
        check_id("task_id", task_id)
        for _ in range(TRIES):
            alive, raw = await self.script(
                "READ", "reading a key", [self.rec + key], [self.token, self.alive], key=key
            )
            fields = fields_of(raw)
            if not fields:
                raise ValueError(f"key {key!r} is not in the journal")
            refusal = settle_refusal(
                key,
                state=fields.get("state", ""),
                task_id=fields.get("task_id"),
                owner_alive=int(alive) == 1,
            )
            if refusal is not None:
                raise refusal
            entry = read_hash(key, fields, self.where, now=utc_now())
            reply = await self.script(
                "SETTLE",
                "settling a key",
                [self.rec + key, self.pending_keys, self.tasks],
                [
                    *(self.token, secrets.token_hex(8), key, fields["state"]),
                    *(fields.get("owner", ""), fields.get("fence", ""), self.alive, task_id),
                    *(str(score_of(fields["claimed_at"])), self.video),
                ],
                key=key,
            )
            verdict = text(reply[0])
            if verdict == "taken":
                raise ValueError(
                    f"task {task_id!r} is already journaled for key {text(reply[1])!r}"
                )
            if verdict == "ok":
                return attrs.evolve(
                    entry,
                    state=EntryState.CREATED,
                    owner=None,
                    task_id=task_id,
                    task=None,
                    status=None,
                    refusal_code=None,
                    refusal_reason=None,
                )
        raise JournalError(f"journal {self.where}: the key kept changing under settle", key=key)

    def readable(self, key: str, raw: Any) -> JournalEntry | None:
        """A record read in a list: one that cannot be read is logged and left out."""
        try:
            return read_hash(key, fields_of(raw), self.where, now=utc_now())
        except JournalError as error:
            logger.error("%s; it is left out (fix it or forget the key)", error)
            return None

    async def script(
        self, name: str, what: str, keys: list[str], args: list[str], *, key: str | None = None
    ) -> Any:
        """Run script ``name``, shielded: a write completes even in a cancelled ``finally``."""
        script = self.scripts[name]
        return await self.redis(what, lambda: script(keys=keys, args=args), key=key, shield=True)

    async def redis(
        self,
        what: str,
        call: Callable[[], Awaitable[_T]],
        *,
        key: str | None = None,
        shield: bool = False,
    ) -> _T:
        """``call`` on the fleet's Redis; its failures as `JournalError` (cause chained)."""
        self._check()
        try:
            with self.fleet.guard(what, key=key):
                if not shield:
                    return await call()
                with anyio.CancelScope(shield=True):
                    result = await call()
                return result  # noqa: RET504  (a return in the scope reads as missing)
        except FleetUnavailableError as error:
            raise JournalUnavailableError(
                f"journal {self.where}: {error.args[0]}", key=key
            ) from error
        except FleetError as error:
            raise JournalError(f"journal {self.where}: {error.args[0]}", key=key) from error


def utc_now() -> dt.datetime:
    """This host's clock, on which a record's send is placed (see ``read_hash``)."""
    return dt.datetime.now(dt.timezone.utc)
