"""The Redis journal's record codec: one key's record as the fields of a Redis hash.

Pure (values in, values out): `RedisJournal` (``_redis_journal``) reads a hash with
``HGETALL`` and writes fields with Lua scripts; this module turns those fields into a
`JournalEntry` and back. Values are the SQLite journal's column texts (``_journal_rows``):
times as ISO 8601 in UTC, the request as its canonical JSON, the task object as compact JSON.
A record that cannot be read raises `JournalError` naming its key, as a bad row does.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import attrs

from ._journal import EntryState, JournalEntry
from ._journal_rows import decode_request, read_time
from ._journal_rules import WITH_TASK
from .errors import InvalidArgumentError, JournalError
from .models import TaskStatus

__all__ = ["UNFINISHED", "fields_of", "read_hash", "score_of"]

UNFINISHED = frozenset({EntryState.INTENT, EntryState.SENDING, EntryState.CREATED})
"""The states a key is kept in the pending index for (``pending()`` filters them further
with ``is_pending``); a key leaves the index once FINISHED, REFUSED or GONE."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fields_of(raw: Any) -> dict[str, str]:
    """A hash as Redis answered it (a mapping, or Lua's flat list; bytes or str) as text."""
    if isinstance(raw, Mapping):
        return {_text(name): _text(value) for name, value in raw.items()}
    items = list(raw)
    return {_text(items[i]): _text(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def score_of(claimed_at: str) -> float:
    """The pending index's score of a stored claim time: seconds since the epoch (the order
    is refined by the stored text itself, so float precision does not matter)."""
    return dt.datetime.fromisoformat(claimed_at).timestamp()


def read_hash(
    key: str, fields: Mapping[str, str], where: str, *, now: dt.datetime | None = None
) -> JournalEntry:
    """The record of ``key`` in ``fields`` (the journal ``where``, for messages);
    `JournalError` naming the key when it cannot be read.

    ``now`` is the reader's clock: a create in doubt (SENDING) whose send was stamped on
    Redis's clock (``sent_redis``, read with ``redis_now``) has its ``sent_at`` placed on the
    reader's clock, so that a look-up measures the time since the send on one clock even
    when the sending host's clock was off.
    """
    try:
        state = EntryState(fields["state"])
        task_id = fields.get("task_id")
        if state in WITH_TASK and not task_id:
            raise ValueError(f"it is {state.value} without a task id")
        task = fields.get("task")
        status = fields.get("status")
        code = fields.get("refusal_code")
        uncertainty = fields.get("sent_uncertainty")
        entry = JournalEntry(
            key=key,
            request=decode_request(fields["request"]),
            stamped=fields.get("stamped") == "1",
            state=state,
            claimed_at=dt.datetime.fromisoformat(fields["claimed_at"]),
            sent_at=read_time(fields.get("sent_at")),
            sent_server=read_time(fields.get("sent_server")),
            sent_uncertainty=None if uncertainty is None else float(uncertainty),
            task_id=task_id,
            task=None if task is None else json.loads(task),
            status=None if status is None else TaskStatus(status),
            refusal_code=None if code is None else int(code),
            refusal_reason=fields.get("refusal_reason"),
            owner=fields.get("owner"),
        )
        if entry.claimed_at.tzinfo is None:
            raise ValueError("its claim time has no time zone")
        sent_redis, redis_now = fields.get("sent_redis"), fields.get("redis_now")
        if (
            now is not None
            and entry.state is EntryState.SENDING
            and entry.sent_at is not None
            and sent_redis
            and redis_now
        ):
            since = (int(redis_now) - int(sent_redis)) / 1000
            entry = attrs.evolve(entry, sent_at=now - dt.timedelta(seconds=max(0.0, since)))
    except (ValueError, TypeError, KeyError, AttributeError, InvalidArgumentError) as error:
        raise JournalError(
            f"journal {where}: the record cannot be read ({error})", key=key
        ) from error
    return entry
