"""The SQLite journal's synchronous side: one connection, one transaction per transition.

`JournalSQL` opens the file (schema, PRAGMAs, the owner lock), and runs each journal step as
one short transaction on one connection, guarded by a lock: reads as they are, writes under
``BEGIN IMMEDIATE`` (one writer per key across processes, no read-then-upgrade deadlock).
Before every read and write it checks that the file at the path is still the file it opened.
What a step decides comes from ``_journal_rules``; this module only reads and writes rows.
Everything here blocks: `SQLiteJournal` calls it from a worker thread, never on the loop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import pathlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import attrs

from ._journal import Claim, ClaimOutcome, EntryState, JournalEntry, canonical, fingerprint
from ._journal_owners import Owners
from ._journal_rows import read_entries, read_entry, read_request
from ._journal_rules import (
    Move,
    carries_stamp,
    existing_outcome,
    is_pending,
    missed_move,
    settle_refusal,
    to_record,
)
from ._journal_schema import COLUMNS, configure
from ._source_requests import CreateRequest, source_video_id
from .errors import JournalError

__all__ = ["JournalSQL"]

logger = logging.getLogger("kling_async")

_CHUNK = 500  # SQLite caps the number of bound parameters in one statement


class JournalSQL:
    """The journal file at ``path`` and this instance's owner lock, driven synchronously."""

    def __init__(
        self, path: pathlib.Path, owners: Owners, *, synchronous: str, busy_timeout: float
    ) -> None:
        self._path = path
        self._owners = owners
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._identity = (0, 0)  # st_dev, st_ino of the file opened

    @property
    def is_open(self) -> bool:
        """Whether a connection is open (and so must be closed)."""
        return self._connection is not None

    # -- lifetime -------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, check or create the schema, and take this instance's owner lock."""
        try:
            connection = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # one connection, used by one thread at a time
            )
        except sqlite3.Error as error:
            raise JournalError(f"cannot open the journal {self._path}: {error}") from error
        try:
            connection.row_factory = sqlite3.Row
            configure(
                connection,
                self._path,
                synchronous=self._synchronous,
                busy_timeout=self._busy_timeout,
            )
            try:
                self._owners.acquire()
                self._owners.sweep()
            except OSError as error:
                raise JournalError(f"cannot make the journal's owner lock file: {error}") from error
            stat = os.stat(self._path)
        except BaseException:
            connection.close()
            self._owners.release()
            raise
        self._identity = (stat.st_dev, stat.st_ino)
        self._connection = connection

    def close(self) -> None:
        """Let go of every key owned here, close the file and remove the owner lock file."""
        with self._lock:
            connection, self._connection = self._connection, None
            if connection is None:
                return
            try:
                # Keys this instance was creating are let go: an INTENT is free to take, a
                # SENDING becomes in doubt for the next claim.
                connection.execute(
                    "UPDATE creates SET owner = NULL WHERE owner = ?", (self._owners.token,)
                )
            except sqlite3.Error as error:
                logger.warning("journal %s: could not release owned keys: %s", self._path, error)
            finally:
                connection.close()
                self._owners.release()

    @contextlib.contextmanager
    def _db(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, in a ``BEGIN IMMEDIATE`` transaction for writes;
        sqlite3 failures come out as `JournalError`."""
        with self._lock:
            connection = self._connection
            if connection is None:
                raise RuntimeError("the journal is closed")
            try:
                self._check_file()
                if not write:
                    yield connection
                    return
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise JournalError(f"journal {self._path}: {error}") from error

    def _check_file(self) -> None:
        """Refuse to write once the file at the path is not the file this instance opened
        (deleted or replaced while open): what it records would be lost with it."""
        try:
            stat = os.stat(self._path)
            same = (stat.st_dev, stat.st_ino) == self._identity
        except OSError:
            same = False
        if not same:
            raise JournalError(
                f"journal {self._path} was deleted or replaced while open: nothing more can "
                "be recorded in it (what it held is lost; a re-run cannot tell which keys "
                "were paid for)"
            )

    def _alive(self, owner: str | None) -> bool:
        return owner is not None and self._owners.alive(owner)

    def _entry(self, row: sqlite3.Row, *, owner: str | None = None) -> JournalEntry:
        return read_entry(row, self._path, owner=owner)

    # -- the steps ------------------------------------------------------------------------

    def claim(self, key: str, request: CreateRequest, stamp: str | None, claimed_at: str) -> Claim:
        """Look ``key`` up and record the intent in one transaction (see `ClaimOutcome`)."""
        token = self._owners.token
        with self._db(write=True) as db:
            row = db.execute(f"SELECT {COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            if row is None:
                sent, stamped = to_record(request, stamp)
                db.execute(
                    "INSERT INTO creates (key, fingerprint, request, stamped, external_task_id,"
                    " state, owner, claimed_at, video_id)"
                    " VALUES (?, ?, ?, ?, ?, 'intent', ?, ?, ?)",
                    (
                        key,
                        fingerprint(request),
                        canonical(sent),
                        stamped,
                        sent.external_task_id,
                        token,
                        claimed_at,
                        source_video_id(sent),
                    ),
                )
                return Claim(
                    outcome=ClaimOutcome.FRESH,
                    entry=JournalEntry(
                        key=key,
                        request=sent,
                        stamped=stamped,
                        state=EntryState.INTENT,
                        claimed_at=dt.datetime.fromisoformat(claimed_at),
                        owner=token,
                    ),
                )
            recorded = read_request(row, self._path)
            via_stamp = carries_stamp(
                request,
                stamped=bool(row["stamped"]),
                recorded_external_id=recorded.external_task_id,
            )
            if row["fingerprint"] != fingerprint(request, without_external_id=via_stamp):
                raise ValueError(
                    f"key {key!r} is journaled for another request (of {recorded.subject}, "
                    f"claimed {row['claimed_at']}); a key names one "
                    "request: use a new key"
                )
            entry = self._entry(row)
            outcome = existing_outcome(entry.state, owner_alive=self._alive(row["owner"]))
            if outcome is ClaimOutcome.FRESH:
                # Nothing left the machine: take it over with this call's request and stamp
                # (the same request by fingerprint; the stamp may differ, or be gone).
                sent, stamped = to_record(request, stamp, via_stamp=via_stamp)
                db.execute(
                    "UPDATE creates SET owner = ?, claimed_at = ?, request = ?, stamped = ?,"
                    " external_task_id = ? WHERE key = ?",
                    (token, claimed_at, canonical(sent), stamped, sent.external_task_id, key),
                )
                entry = attrs.evolve(
                    entry,
                    request=sent,
                    stamped=stamped,
                    claimed_at=dt.datetime.fromisoformat(claimed_at),
                    owner=token,
                )
            elif outcome is ClaimOutcome.IN_DOUBT:
                db.execute("UPDATE creates SET owner = ? WHERE key = ?", (token, key))
                entry = self._entry(row, owner=token)
            return Claim(outcome=outcome, entry=entry)

    def move(
        self,
        key: str,
        move: Move,
        assignments: str,
        values: tuple[Any, ...],
        task_id: str | None = None,
    ) -> None:
        """One owned transition as one guarded UPDATE (the common case: one statement); a
        miss is explained after, as the session bug or the task id recorded elsewhere."""
        token = self._owners.token
        with self._db(write=True) as db:
            guard = "key = ? AND owner = ? AND state = ?"
            arguments: tuple[Any, ...] = (*values, key, token, move.source.value)
            if task_id is not None:  # one task is never recorded for two keys
                guard += " AND NOT EXISTS (SELECT 1 FROM creates WHERE task_id = ? AND key != ?)"
                arguments += (task_id, key)
            if db.execute(f"UPDATE creates SET {assignments} WHERE {guard}", arguments).rowcount:
                return
            row = db.execute("SELECT state, owner FROM creates WHERE key = ?", (key,)).fetchone()
            error = missed_move(
                move,
                key,
                state=None if row is None else row["state"],
                owner=None if row is None else row["owner"],
                token=token,
            )
            if error is not None:
                raise error
            other = db.execute(
                "SELECT key FROM creates WHERE task_id = ? AND key != ?", (task_id, key)
            ).fetchone()
            raise ValueError(f"task {task_id!r} is already journaled for key {other['key']!r}")

    def release(self, key: str) -> None:
        """Give up this instance's ownership of ``key``, if it has it."""
        with self._db(write=True) as db:
            db.execute(
                "UPDATE creates SET owner = NULL WHERE key = ? AND owner = ?",
                (key, self._owners.token),
            )

    def finish(self, task_id: str, status: str, task: str | None) -> bool:
        """CREATED (or FINISHED again) -> FINISHED for the key holding ``task_id``."""
        with self._db(write=True) as db:
            cursor = db.execute(
                "UPDATE creates SET state = 'finished', status = ?, task = coalesce(?, task)"
                " WHERE task_id = ? AND state IN ('created', 'finished')",
                (status, task, task_id),
            )
            return cursor.rowcount > 0

    def get(self, key: str) -> JournalEntry | None:
        """The record of ``key``, or None."""
        with self._db(write=False) as db:
            row = db.execute(f"SELECT {COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            return None if row is None else self._entry(row)

    def pending(self) -> list[JournalEntry]:
        """What ``resume`` must pick up (`is_pending`), oldest claim first."""
        with self._db(write=False) as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM creates WHERE state IN ('sending', 'created')"
                " ORDER BY claimed_at, key"
            ).fetchall()
            return read_entries(
                (
                    row
                    for row in rows
                    if is_pending(EntryState(row["state"]), owner_alive=self._alive(row["owner"]))
                ),
                self._path,
            )

    def entries(self) -> list[JournalEntry]:
        """Every readable record, oldest claim first (`read_entries` leaves out the others)."""
        with self._db(write=False) as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM creates ORDER BY claimed_at, key").fetchall()
            return read_entries(rows, self._path)

    def keys(self) -> list[str]:
        """Every key, readable or not, oldest claim first."""
        with self._db(write=False) as db:
            rows = db.execute("SELECT key FROM creates ORDER BY claimed_at, key").fetchall()
            return [str(row["key"]) for row in rows]

    def doubts(self, video_id: str) -> list[JournalEntry]:
        """Every SENDING entry for ``video_id``, whoever owns it."""
        with self._db(write=False) as db:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM creates WHERE state = 'sending' AND video_id = ?",
                (video_id,),
            ).fetchall()
            return read_entries(rows, self._path)

    def keys_of(self, task_ids: list[str]) -> dict[str, str]:
        """Which of ``task_ids`` are recorded, and for which key."""
        found: dict[str, str] = {}
        with self._db(write=False) as db:
            for start in range(0, len(task_ids), _CHUNK):
                chunk = task_ids[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                for task_id, key in db.execute(
                    f"SELECT task_id, key FROM creates WHERE task_id IN ({marks})", chunk
                ):
                    found[task_id] = key
        return found

    def settle(self, key: str, task_id: str) -> JournalEntry:
        """Record ``task_id`` as the task of ``key``, if `settle_refusal` allows it."""
        with self._db(write=True) as db:
            row = db.execute(f"SELECT {COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise ValueError(f"key {key!r} is not in the journal")
            refusal = settle_refusal(
                key,
                state=row["state"],
                task_id=row["task_id"],
                owner_alive=self._alive(row["owner"]),
            )
            if refusal is not None:
                raise refusal
            other = db.execute(
                "SELECT key FROM creates WHERE task_id = ? AND key != ?", (task_id, key)
            ).fetchone()
            if other is not None:
                raise ValueError(f"task {task_id!r} is already journaled for key {other['key']!r}")
            db.execute(
                "UPDATE creates SET state = 'created', owner = NULL, task_id = ?, task = NULL,"
                " status = NULL, refusal_code = NULL, refusal_reason = NULL WHERE key = ?",
                (task_id, key),
            )
            row = db.execute(f"SELECT {COLUMNS} FROM creates WHERE key = ?", (key,)).fetchone()
            return self._entry(row)

    def gone(self, task_id: str, reason: str, before: str) -> str | None:
        """CREATED -> GONE for the key holding ``task_id``, claimed before ``before``."""
        with self._db(write=True) as db:
            row = db.execute(
                "SELECT key FROM creates WHERE task_id = ? AND state = 'created'"
                " AND claimed_at < ?",
                (task_id, before),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE creates SET state = 'gone', refusal_reason = ? WHERE key = ?",
                (reason, row["key"]),
            )
            return str(row["key"])

    def forget(self, key: str) -> bool:
        """Delete the record of ``key`` unless a live instance owns it."""
        with self._db(write=True) as db:
            row = db.execute("SELECT owner FROM creates WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            if self._alive(row["owner"]):
                raise ValueError(f"key {key!r} is being created by a live journal instance")
            db.execute("DELETE FROM creates WHERE key = ?", (key,))
            return True
