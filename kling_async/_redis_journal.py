"""`RedisJournal`: the fleet's `Journal`, kept in its Redis: each key created once, fleet-wide.

The records, the rules and the answers are the SQLite journal's (``_journal``,
``_journal_rules``); what changes is who may write. An owner is a session's fleet instance
(`Fleet.instance`), alive while its lease key exists (no ``flock``), and every claim that
makes this instance a key's owner takes a new *fence* number from a counter. Each owned write
is one Lua script (``_redis_journal_lua``) that checks owner, fence and state together, so an
instance whose lease ran out and whose key another instance took over gets `ClaimLostError`
and changes nothing. A claim reads the record in one script, decides with the pure rules
here, and takes a key over with a compare-and-set on what it read.

**Waiting.** A BUSY claim polls (5 ms doubling to 100 ms) and is woken at once when this
instance lets a key go: keyspace notifications are off by default in Redis and pub/sub loses
messages across reconnects, so a poll would be needed anyway; it costs at most ten one-key
script calls a second per waiting claim.

**Redis trouble.** Every call raises `JournalUnavailableError` when Redis does not answer:
both a `JournalError` (what the session handles for a journal: a write after the create names
its task, a finish not recorded is kept for later, a look-up reading the journal retries) and
a `FleetUnavailableError` (the fleet's typed "Redis is gone"), with the fleet's error as its
cause. Every step is one atomic script with a nonce, so nothing is half-written, and a retry
of a script whose reply was lost is answered as done.

**Durability** is Redis's (``docs/fleet.md``): a ``SENDING`` lost by Redis lets a re-run pay
twice, so run it with ``appendonly yes`` and ``appendfsync always`` where that matters.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import secrets
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs

from ._fleet import text
from ._journal import (
    Claim,
    ClaimOutcome,
    EntryState,
    JournalEntry,
    canonical,
    check_claim,
    check_id,
    check_key,
    fingerprint,
)
from ._journal_hash import UNFINISHED, fields_of, read_hash, score_of
from ._journal_rows import decode_request, stamp_time, task_text
from ._journal_rules import (
    MARK_CREATED,
    MARK_NOT_SENT,
    MARK_REFUSED,
    MARK_SENDING,
    Move,
    carries_stamp,
    existing_outcome,
    missed_move,
    to_record,
)
from ._journal_wait import claim_waiting
from ._redis_journal_store import TRIES, JournalUnavailableError, RecordStore, utc_now
from ._source_requests import CreateRequest, source_video_id
from .errors import ClaimLostError, InvalidArgumentError, JournalError
from .models import TaskStatus

if TYPE_CHECKING:
    from types import TracebackType

    from ._fleet import Fleet

__all__ = ["JournalUnavailableError", "RedisJournal"]

logger = logging.getLogger("kling_async")

_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"


class RedisJournal:
    """The fleet's journal: every session of the fleet sees one record per key.

    Uses ``fleet``'s client (borrowed, never closed) and owner token (``fleet.instance``);
    one journal per `Fleet`. ``async with`` opens it (checking that Redis answers).

    Added in version 0.3.
    """

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._store = RecordStore(fleet, self._check_open)
        self._state = _UNOPENED
        self._fences: dict[str, str] = {}  # keys this instance owns -> the fence of its claim
        self._unsure: set[str] = set()  # claims (or releases) whose reply never came
        self._locks: dict[str, anyio.Lock] = {}  # one claim of a key at a time, here
        self._released: anyio.Event | None = None

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> RedisJournal:
        if self._state != _UNOPENED:
            raise RuntimeError(f"a journal can be opened once; this one is {self._state}")
        self._state = _OPEN
        self._released = anyio.Event()
        try:
            await self._store.redis("opening the journal", self._fleet.client.ping)
        except BaseException:
            self._state = _CLOSED
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release every key owned here (an INTENT is free, a SENDING in doubt); the fleet's
        client stays open. A failure is logged: the lease's end lets the keys go too."""
        if self._state != _OPEN:
            self._state = _CLOSED
            return
        owned = [*self._fences.items(), *((key, "") for key in self._unsure)]
        try:
            for key, fence in owned:
                await self._release(key, fence)
        except JournalError as error:
            logger.warning("journal %s: could not release owned keys: %s", self._store.where, error)
        finally:
            self._state = _CLOSED
            self._fences.clear()
            self._unsure.clear()
            self._wake()

    def __repr__(self) -> str:
        return f"<RedisJournal {self._store.where!r} {self._state}>"

    @property
    def token(self) -> str:
        """This instance's owner token: its fleet instance."""
        return self._fleet.instance

    # -- claim ------------------------------------------------------------------------------

    async def claim(
        self,
        key: str,
        request: CreateRequest,
        *,
        now: dt.datetime,
        stamp: str | None = None,
        wait: float = 0.0,
    ) -> Claim:
        """Look ``key`` up and record the intent atomically; see `ClaimOutcome`.

        A BUSY key is polled for up to ``wait`` seconds (woken at once when this instance
        lets it go, and taken over once its owner's lease lapses) before BUSY is returned.
        """
        check_claim(key, request, stamp, wait)
        claimed_at = stamp_time(now, "now")

        async def once() -> Claim:
            self._check_open()
            return await self._claim_once(key, request, stamp, claimed_at)

        return await claim_waiting(once, lambda: self._released, wait)

    async def _claim_once(
        self, key: str, request: CreateRequest, stamp: str | None, claimed_at: str
    ) -> Claim:
        """One claim, run to its end once started, in a task of its own: a caller cancelled
        meanwhile (an asyncio cancel passes an anyio shield) leaves, and a key the claim
        took is released behind it rather than held for the session's life."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        run = asyncio.ensure_future(self._claim_locked(key, request, stamp, claimed_at))
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            run.add_done_callback(functools.partial(self._abandoned, key))
            raise

    def _abandoned(self, key: str, run: asyncio.Future[Claim]) -> None:
        """A claim whose caller left: release the key if the claim took it."""
        if run.cancelled() or run.exception() is not None:
            return  # nothing was taken, or a failed claim handled its own traces
        if run.result().outcome in (ClaimOutcome.FRESH, ClaimOutcome.IN_DOUBT):
            self._fleet.start(functools.partial(self._release_quietly, key))

    async def _release_quietly(self, key: str) -> None:
        try:
            await self.release(key)
        except (JournalError, RuntimeError) as error:  # closed meanwhile: aclose released it
            logger.info("journal %s: key %r not released yet: %s", self._store.where, key, error)

    async def _claim_locked(
        self, key: str, request: CreateRequest, stamp: str | None, claimed_at: str
    ) -> Claim:
        """One claim at a time per key in this instance."""
        lock = self._locks.setdefault(key, anyio.Lock())
        try:
            with anyio.CancelScope(shield=True):
                async with lock:
                    claim = await self._decide(key, request, stamp, claimed_at)
        except JournalUnavailableError:
            if key in self._fences:
                raise  # this instance's live claim: nothing of this one was recorded
            self._unsure.add(key)  # its reply may be what was lost: released at close
            await self._forget_unsure(key)
            raise
        finally:
            if not lock.statistics().tasks_waiting:
                self._locks.pop(key, None)
        return claim

    async def _decide(
        self, key: str, request: CreateRequest, stamp: str | None, claimed_at: str
    ) -> Claim:
        token = self.token
        sent, stamped = to_record(request, stamp)
        score = str(score_of(claimed_at))
        for _ in range(TRIES):
            nonce = secrets.token_hex(8)
            reply = await self._store.script(
                "CLAIM",
                "claiming a key",
                [self._store.rec + key, self._store.pending_keys, self._store.counter],
                [
                    *(token, nonce, key, fingerprint(request), canonical(sent)),
                    *("1" if stamped else "0", claimed_at, score, source_video_id(sent)),
                    self._store.alive,
                ],
                key=key,
            )
            if text(reply[0]) == "new":
                self._owns(key, text(reply[1]))
                entry = JournalEntry(
                    key=key,
                    request=sent,
                    stamped=stamped,
                    state=EntryState.INTENT,
                    claimed_at=dt.datetime.fromisoformat(claimed_at),
                    owner=token,
                )
                return Claim(outcome=ClaimOutcome.FRESH, entry=entry)
            fields = fields_of(reply[2])
            recorded = self._request_of(key, fields)
            via_stamp = carries_stamp(
                request,
                stamped=fields.get("stamped") == "1",
                recorded_external_id=recorded.external_task_id,
            )
            if fields.get("fingerprint") != fingerprint(request, without_external_id=via_stamp):
                raise ValueError(
                    f"key {key!r} is journaled for another request (of {recorded.subject}, "
                    f"claimed {fields.get('claimed_at')}); a key names "
                    "one request: use a new key"
                )
            entry = read_hash(key, fields, self._store.where, now=utc_now())
            owner = fields.get("owner")
            # This instance's own record is alive while it holds the claim; a record naming
            # it that it does not hold is a claim whose reply was lost: nobody's.
            alive = int(reply[1]) == 1 or (owner == token and key in self._fences)
            outcome = existing_outcome(entry.state, owner_alive=alive)
            if outcome not in (ClaimOutcome.FRESH, ClaimOutcome.IN_DOUBT):
                return Claim(outcome=outcome, entry=entry)
            fresh = outcome is ClaimOutcome.FRESH
            if fresh:
                sent, stamped = to_record(request, stamp, via_stamp=via_stamp)
            taken = await self._store.script(
                "TAKE",
                "taking a key over",
                [self._store.rec + key, self._store.pending_keys, self._store.counter],
                [
                    *(token, nonce, key, entry.state.value, owner or "", fields.get("fence", "")),
                    *(self._store.alive, "fresh" if fresh else "doubt", canonical(sent)),
                    *("1" if stamped else "0", claimed_at, score),
                ],
                key=key,
            )
            if int(taken[0]) != 1:
                continue  # changed since it was read: decide again
            self._owns(key, text(taken[1]))
            if fresh:
                entry = attrs.evolve(
                    entry,
                    request=sent,
                    stamped=stamped,
                    claimed_at=dt.datetime.fromisoformat(claimed_at),
                    owner=token,
                )
            else:
                entry = attrs.evolve(entry, owner=token)
            return Claim(outcome=outcome, entry=entry)
        raise JournalError(
            f"journal {self._store.where}: the key kept changing under claim", key=key
        )

    def _owns(self, key: str, fence: str) -> None:
        self._fences[key] = fence
        self._unsure.discard(key)

    def _request_of(self, key: str, fields: Mapping[str, str]) -> CreateRequest:
        try:
            return decode_request(fields["request"])
        except (KeyError, ValueError, TypeError, InvalidArgumentError) as error:
            raise JournalError(
                f"journal {self._store.where}: the record's request cannot be read ({error})",
                key=key,
            ) from error

    async def _forget_unsure(self, key: str) -> None:
        """After a failed claim, let go of what it may have recorded, if Redis answers."""
        try:
            await self._release(key, "")
        except JournalError:
            pass  # kept in _unsure: aclose tries again, the lease's end frees it anyway
        else:
            self._unsure.discard(key)

    # -- owned writes -------------------------------------------------------------------------

    async def mark_sending(
        self,
        key: str,
        sent_at: dt.datetime,
        *,
        sent_server: dt.datetime | None = None,
        sent_uncertainty: float | None = None,
    ) -> None:
        """INTENT -> SENDING, atomically with the owner and fence check, before the send."""
        check_key(key)
        stamp = stamp_time(sent_at, "sent_at")
        server = None if sent_server is None else stamp_time(sent_server, "sent_server")
        if server is not None and (
            isinstance(sent_uncertainty, bool)
            or not isinstance(sent_uncertainty, (int, float))
            or not sent_uncertainty >= 0
        ):
            raise ValueError("sent_uncertainty must be a number of seconds >= 0")
        uncertainty = None if server is None else repr(float(sent_uncertainty or 0.0))
        await self._move(
            key,
            MARK_SENDING,
            {"sent_at": stamp, "sent_server": server, "sent_uncertainty": uncertainty},
        )

    async def mark_not_sent(self, key: str) -> None:
        """SENDING -> INTENT: the create certainly never reached the server; still owned."""
        check_key(key)
        await self._move(key, MARK_NOT_SENT, {})

    async def mark_created(
        self, key: str, task_id: str, task: Mapping[str, Any] | None = None
    ) -> None:
        """SENDING -> CREATED; ``ValueError`` if that task id is recorded for another key."""
        check_key(key)
        check_id("task_id", task_id)
        text = task_text(task)
        await self._move(key, MARK_CREATED, {"task_id": task_id, "task": text}, task_id=task_id)

    async def mark_refused(self, key: str, reason: str, *, code: int | None = None) -> None:
        """SENDING -> REFUSED: the server answered that it will not make this task."""
        check_key(key)
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise TypeError(f"code must be an int or None, not {type(code).__name__}")
        fields = {"refusal_code": None if code is None else str(code), "refusal_reason": reason}
        await self._move(key, MARK_REFUSED, fields)

    async def release(self, key: str) -> None:
        """Give up ownership of ``key`` (its state stays); a no-op if not owned here, and
        for a claim already lost (never raised from the ``finally`` it is called in)."""
        check_key(key)
        self._check_open()
        fence = self._fences.pop(key, None)
        if fence is None and key not in self._unsure:
            return
        try:
            await self._release(key, fence or "")
        except JournalError:
            self._unsure.add(key)  # released at close, or by the lease's end
            raise
        finally:
            self._wake()
        self._unsure.discard(key)

    async def _release(self, key: str, fence: str) -> None:
        done = await self._store.script(
            "RELEASE", "releasing a key", [self._store.rec + key], [self.token, fence], key=key
        )
        if not int(done) and fence:
            logger.warning("journal key %r had been taken over by another instance", key)

    async def _move(
        self, key: str, move: Move, fields: Mapping[str, str | None], task_id: str | None = None
    ) -> None:
        """One owned transition as one script: owner, fence and state checked with it."""
        token = self.token
        fence = self._fences.get(key)
        values = [
            item for name, value in fields.items() if value is not None for item in (name, value)
        ]
        deleted = [name for name, value in fields.items() if value is None]
        reply = await self._store.script(
            "MOVE",
            f"recording {move.what}",
            [self._store.rec + key, self._store.pending_keys, self._store.tasks],
            [
                *(token, fence or "", secrets.token_hex(8), key, move.source.value),
                *(move.target.value, "1" if move.releases else "0"),
                *("1" if move.target in UNFINISHED else "0", task_id or "", self._store.video),
                *(str(len(values)), *values, *deleted),
            ],
            key=key,
        )
        verdict = text(reply[0])
        if verdict == "ok":
            if move.releases:
                self._fences.pop(key, None)
                self._wake()
            return
        if verdict == "taken":
            raise ValueError(f"task {task_id!r} is already journaled for key {text(reply[1])!r}")
        state, owner, now_fence = (text(part) for part in reply[1:4])
        if fence is not None and (not state or owner != token or now_fence != fence):
            raise ClaimLostError(
                f"{move.what}({key!r}): this instance's claim on the key ended (its lease ran "
                "out and another instance took the key over); nothing was written",
                key=key,
            )
        error = missed_move(
            move,
            key,
            state=state or None,
            owner=owner if fence is not None else None,
            token=token,
        )
        raise error or RuntimeError(f"{move.what}({key!r}): the record changed under it")

    # -- the fleet's records ------------------------------------------------------------------

    async def mark_finished(
        self, task_id: str, status: TaskStatus | str, task: Mapping[str, Any] | None = None
    ) -> bool:
        """Record a task's final status; False when no key holds that task id."""
        return await self._store.finish(task_id, status, task)

    async def mark_gone(self, task_id: str, reason: str, *, before: dt.datetime) -> str | None:
        """CREATED -> GONE for a key claimed before ``before``; the key, or None."""
        return await self._store.gone(task_id, reason, before=before)

    async def get(self, key: str) -> JournalEntry | None:
        """The record of ``key``, or None."""
        return await self._store.get(key)

    async def pending(self) -> list[JournalEntry]:
        """The whole fleet's CREATED entries and SENDING ones in doubt, oldest claim first."""
        return await self._store.pending_entries()

    async def doubts(self, video_id: str) -> list[JournalEntry]:
        """Every SENDING entry for ``video_id``, whoever owns it, in any process."""
        return await self._store.doubts(video_id)

    async def keys_of(self, task_ids: Collection[str]) -> dict[str, str]:
        """Which of ``task_ids`` are recorded, and for which key."""
        return await self._store.keys_of(task_ids)

    async def forget(self, key: str) -> bool:
        """Delete the record of ``key``; ``ValueError`` while a live instance owns it."""
        forgotten = await self._store.forget(key)
        if forgotten:
            self._wake()
        return forgotten

    async def settle(self, key: str, task_id: str) -> JournalEntry:
        """Record ``task_id`` as the task of ``key`` (a key in doubt or gone): CREATED, not
        owned; ``ValueError`` as `SQLiteJournal.settle` raises it."""
        entry = await self._store.settle(key, task_id)
        self._wake()
        return entry

    def _wake(self) -> None:
        if self._released is not None:
            self._released.set()
            self._released = anyio.Event()

    def _check_open(self) -> None:
        if self._state == _UNOPENED:
            raise RuntimeError("open the journal first: 'async with RedisJournal(fleet)'")
        if self._state == _CLOSED:
            raise RuntimeError("the journal is closed")
