"""The journal file's schema: the table, its PRAGMAs, the identity checks and the upgrade.

A journal file is marked by ``PRAGMA application_id`` (``KLJ1``) and versioned by
``PRAGMA user_version``: a new file gets the schema, a version-1 file is upgraded in place
(in the opening transaction), and anything else (another database, a newer journal) is
refused with `JournalError` rather than written to. WAL mode with ``synchronous`` NORMAL
(survives a killed process) or FULL (also a power loss) is set on every open.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sqlite3
import time

from .errors import JournalError

__all__ = ["APPLICATION_ID", "COLUMNS", "SCHEMA_VERSION", "configure"]

logger = logging.getLogger("kling_async")

SCHEMA_VERSION = 2  # PRAGMA user_version of the files this code writes (it reads 1 and 2)
APPLICATION_ID = 0x4B4C4A31  # PRAGMA application_id: "KLJ1", marks a kling_async journal


def _table(name: str) -> str:
    """The ``CREATE TABLE`` statement of the current schema, for a table called ``name``."""
    return f"""
CREATE TABLE {name} (
    key            TEXT PRIMARY KEY NOT NULL,
    fingerprint    TEXT NOT NULL,     -- sha256 of the caller's request, stamp left out
    request        TEXT NOT NULL,     -- canonical JSON of the request as sent
    stamped        INTEGER NOT NULL,  -- 1: request's external_task_id is the session's stamp
    external_task_id TEXT,
    state          TEXT NOT NULL
        CHECK (state IN ('intent', 'sending', 'created', 'refused', 'finished', 'gone')),
    owner          TEXT,              -- token of the instance creating it now, or NULL
    claimed_at     TEXT NOT NULL,     -- ISO 8601, UTC
    sent_at        TEXT,
    sent_server    TEXT,              -- the same moment on the server's clock, if known
    sent_uncertainty REAL,            -- seconds sent_server may be off
    task_id        TEXT,
    task           TEXT,              -- the task object's JSON, when given
    status         TEXT,
    refusal_code   INTEGER,
    refusal_reason TEXT,              -- why it was refused, or why its task is gone
    video_id       TEXT NOT NULL DEFAULT ''  -- the request's, to find rivals in doubt
) WITHOUT ROWID"""


_INDEXES = (
    "CREATE INDEX creates_task_id ON creates (task_id) WHERE task_id IS NOT NULL",
    "CREATE INDEX creates_open ON creates (state) WHERE state IN ('sending', 'created')",
    "CREATE INDEX creates_owner ON creates (owner) WHERE owner IS NOT NULL",
    "CREATE INDEX creates_doubts ON creates (video_id) WHERE state = 'sending'",
)
_V1_COLUMNS = (
    "key, fingerprint, request, stamped, external_task_id, state, owner, claimed_at, sent_at,"
    " task_id, task, status, refusal_code, refusal_reason"
)
COLUMNS = (
    "key, request, stamped, state, owner, claimed_at, sent_at, sent_server, sent_uncertainty,"
    " task_id, task, status,"
    " refusal_code, refusal_reason, fingerprint, video_id"
)
"""The columns a record is read with (see ``_journal_rows``)."""


def configure(
    connection: sqlite3.Connection,
    path: pathlib.Path,
    *,
    synchronous: str,
    busy_timeout: float,
) -> None:
    """WAL, the sync level, and the schema: created on a new file, checked on an old one."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.DatabaseError as error:
            # Switching a new file to WAL needs a moment alone with it; a busy file
            # is waited for, anything else is not a journal this code can use.
            busy = isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
            if not busy or time.monotonic() > deadline:
                raise JournalError(f"{path} cannot be used as a journal: {error}") from error
            time.sleep(0.01)
    if str(mode).lower() != "wal":
        raise JournalError(f"{path}: WAL mode is not available (journal_mode {mode})")
    connection.execute(f"PRAGMA synchronous = {synchronous}")
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            _check_schema(connection, path)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    except sqlite3.Error as error:
        raise JournalError(f"{path} cannot be used as a journal: {error}") from error


def _check_schema(connection: sqlite3.Connection, path: pathlib.Path) -> None:
    """Create the schema in a new file; accept a journal of this version, upgrade one of
    version 1 in place, refuse anything else (another database, a newer journal)."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    application = connection.execute("PRAGMA application_id").fetchone()[0]
    if version == 0 and application == 0:
        tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise JournalError(f"{path} is an SQLite database but not a kling_async journal")
        connection.execute(_table("creates"))  # not executescript(): it would COMMIT
        for statement in _INDEXES:
            connection.execute(statement)
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    if application != APPLICATION_ID:
        raise JournalError(f"{path} is an SQLite database but not a kling_async journal")
    if version == 1:
        _migrate_from_1(connection, path)
        return
    if version != SCHEMA_VERSION:
        newer = "a newer" if version > SCHEMA_VERSION else "an older"
        raise JournalError(
            f"{path} is a journal of schema version {version}, written by {newer} "
            f"kling_async; this version reads version {SCHEMA_VERSION} only"
        )


def _migrate_from_1(connection: sqlite3.Connection, path: pathlib.Path) -> None:
    """Version 1 -> 2 (the GONE state and a ``video_id`` column), in the open transaction."""
    connection.execute(_table("creates_v2"))
    connection.execute(f"INSERT INTO creates_v2 ({_V1_COLUMNS}) SELECT {_V1_COLUMNS} FROM creates")
    for key, request in connection.execute("SELECT key, request FROM creates").fetchall():
        try:
            video_id = str(json.loads(request).get("video_id", ""))
        except (ValueError, AttributeError):
            continue  # an unreadable record stays unreadable, and is reported when read
        connection.execute("UPDATE creates_v2 SET video_id = ? WHERE key = ?", (video_id, key))
    connection.execute("DROP TABLE creates")
    connection.execute("ALTER TABLE creates_v2 RENAME TO creates")
    for statement in _INDEXES:
        connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    logger.info("journal %s: upgraded to schema version %d", path, SCHEMA_VERSION)
