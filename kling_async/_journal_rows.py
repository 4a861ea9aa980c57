"""The row codec: journal values to column text and a stored row back to a `JournalEntry`.

Times are stored as ISO 8601 text in UTC, requests as their canonical JSON
(``_journal_requests``), task objects as compact JSON. A row that cannot be read back raises
`JournalError` naming its key, so that one damaged record is reported (and can be forgotten)
without hiding the others.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pathlib
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from ._journal import EntryState, JournalEntry
from ._journal_requests import decode_request
from ._journal_rules import WITH_TASK
from ._source_requests import CreateRequest
from .errors import InvalidArgumentError, JournalError
from .models import TaskStatus

__all__ = [
    "decode_request",
    "read_entries",
    "read_entry",
    "read_request",
    "read_time",
    "stamp_time",
    "task_text",
]

logger = logging.getLogger("kling_async")


def stamp_time(value: dt.datetime, name: str) -> str:
    """The aware datetime ``value`` (the argument ``name``) as stored: ISO 8601 in UTC."""
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (e.g. datetime.now(timezone.utc))")
    return value.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def read_time(text: str | None) -> dt.datetime | None:
    """A stored time, or None."""
    return None if text is None else dt.datetime.fromisoformat(text)


def task_text(task: Mapping[str, Any] | None) -> str | None:
    """A task object (its JSON mapping) as stored, or None."""
    if task is None:
        return None
    if not isinstance(task, Mapping):
        raise TypeError(f"task must be a mapping (the task's JSON), not {type(task).__name__}")
    return json.dumps(dict(task), separators=(",", ":"), ensure_ascii=False)


def read_entry(row: sqlite3.Row, path: pathlib.Path, *, owner: str | None = None) -> JournalEntry:
    """The record in ``row`` of the journal at ``path`` (``owner`` in place of the stored
    one, if given); `JournalError` naming its key when it cannot be read."""
    key = row["key"]
    try:
        task = row["task"]
        status = row["status"]
        state = EntryState(row["state"])
        task_id = row["task_id"]
        if state in WITH_TASK and (not isinstance(task_id, str) or not task_id):
            raise ValueError(f"it is {state.value} without a task id")
        entry = JournalEntry(
            key=key,
            request=decode_request(row["request"]),
            stamped=bool(row["stamped"]),
            state=state,
            claimed_at=dt.datetime.fromisoformat(row["claimed_at"]),
            sent_at=read_time(row["sent_at"]),
            sent_server=read_time(row["sent_server"]),
            sent_uncertainty=row["sent_uncertainty"],
            task_id=task_id,
            task=None if task is None else json.loads(task),
            status=None if status is None else TaskStatus(status),
            refusal_code=row["refusal_code"],
            refusal_reason=row["refusal_reason"],
            owner=row["owner"] if owner is None else owner,
        )
        if entry.claimed_at.tzinfo is None:
            raise ValueError("its claim time has no time zone")
    except (ValueError, TypeError, KeyError, AttributeError, InvalidArgumentError) as error:
        raise JournalError(
            f"journal {path}: the record cannot be read ({error})", key=key
        ) from error
    return entry


def read_request(row: sqlite3.Row, path: pathlib.Path) -> CreateRequest:
    """The request of ``row``, or `JournalError` naming its key."""
    try:
        return decode_request(row["request"])
    except (ValueError, TypeError, InvalidArgumentError) as error:
        raise JournalError(
            f"journal {path}: the record's request cannot be read ({error})",
            key=row["key"],
        ) from error


def read_entries(rows: Iterable[sqlite3.Row], path: pathlib.Path) -> list[JournalEntry]:
    """The entries of ``rows``; one that cannot be read is logged and left out, so that
    it does not stop the others (reading its key raises `JournalError`)."""
    entries = []
    for row in rows:
        try:
            entries.append(read_entry(row, path))
        except JournalError as error:
            logger.error("%s; it is left out (fix it or forget the key)", error)
    return entries
