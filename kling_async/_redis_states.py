"""Task states in the fleet's Redis: what the callback receiver records.

STAND-IN (branch fcallbacks): the states engineer owns this module (the task's state key
written first, merged never backwards, the leader confirming final hints); this minimal copy
only appends the hint to the fleet's events stream, so that the receiver's branch runs on its
own until theirs is merged over it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._task_codec import encode_task

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .models import Task

__all__ = ["record_hint"]

_EVENTS_MAXLEN = 10000


def _events_key(account: str) -> str:
    return f"kling-async:{account}:events"


async def record_hint(
    client: aioredis.Redis, account: str, task_id: str, task: Task, *, confirm: bool
) -> None:
    """Append a callback's hint of ``task_id`` to the account's events stream (a wake-up)."""
    fields: dict[Any, Any] = {
        "kind": "hint",
        "task": task_id,
        "data": encode_task(task),
        "confirm": "1" if confirm else "0",
    }
    await client.xadd(_events_key(account), fields, maxlen=_EVENTS_MAXLEN, approximate=True)
