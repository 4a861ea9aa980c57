"""The keys, values and Lua scripts of the fleet's shared task states (``_redis_states``).

A task's state is ``task:<id>`` = ``<rank>:<updated ms>:<wire JSON>``, so that the merge
script compares without parsing JSON and a re-read is one MGET. ``events`` is the stream
that wakes waits, ``watched`` the ZSET of the tasks some process waits on (expiry in ms on
Redis's clock), each named with its family (``_task_members``: the leader polls it on its
family's routes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._fleet import Fleet, key_of, text
from ._schedule import rank
from ._task_codec import decode_task, encode_task, updated_millis
from ._task_members import lua_variants
from .models import Task

__all__ = [
    "INTEREST_TTL",
    "MAXLEN",
    "MERGE",
    "READ",
    "TaskKeys",
    "merge_call",
    "stored",
]

INTEREST_TTL = 30_000  # ms a wait's interest outlives its last renewal (a re-read)
_PENDING_TTL = 86_400_000  # ms a pending task's state is kept past its last change
_DONE_TTL = 86_400_000  # ms a finished task's state is kept
MAXLEN = 10_000  # the events stream's approximate bound

# Merge replies (never backwards: status rank, then updated_at, as `_schedule.newer`), then
# announce each one that changed something; a finished task leaves ``watched`` under
# whichever family names it. KEYS: events, watched, leader, then one task key per reply.
# ARGV: token ('' for none), pending ttl, done ttl, maxlen, kind, then per reply its id,
# rank, updated ms, data. Returns {replies taken, still leads}. A stale poller's
# write is not refused: the merge never goes backwards, so a reply it got is still true;
# what fences it is the answer (0: you no longer lead), on which it stops at once.
MERGE = (
    """
local leads = 1
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then leads = 0 end
local taken = 0
for i = 4, #KEYS do
  local at = 5 + (i - 4) * 4
  local id, data = ARGV[at + 1], ARGV[at + 4]
  local rank, upd = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local ttl = ARGV[2]
  if rank >= 2 then ttl = ARGV[3] end
  local old = redis.call('GET', KEYS[i])
  local take, same = true, false
  if old then
    local orank, oupd, odata = string.match(old, '^(%d+):(%-?%d+):(.*)$')
    orank, oupd = tonumber(orank), tonumber(oupd)
    if rank ~= orank then
      take = rank > orank
    elseif oupd < 0 or upd < 0 then
      take = orank < 2
    else
      take = upd >= oupd
    end
    same = take and odata == data
  end
  if same then
    redis.call('PEXPIRE', KEYS[i], ttl)
  elseif take then
    redis.call('SET', KEYS[i], rank .. ':' .. ARGV[at + 3] .. ':' .. data, 'PX', ttl)
    if rank >= 2 then redis.call('ZREM', KEYS[2], """
    + lua_variants("id")
    + """) end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*',
      'kind', ARGV[5], 'task', id, 'data', data, 'confirm', '0')
    taken = taken + 1
  end
end
return {taken, leads}
"""
)

# Renew interest and read states in one call. KEYS: watched, then the task keys to read.
# ARGV: interest ttl ms, then the entries to renew (`_task_members.member`'s). Expiry on
# Redis's clock; the set itself goes when nobody renews anything in it. Returns the values
# read (nil where none).
READ = """
if #ARGV > 1 then
  local t = redis.call('TIME')
  local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
  for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expiry, ARGV[i]) end
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
end
if #KEYS < 2 then return {} end
return redis.call('MGET', unpack(KEYS, 2))
"""


class TaskKeys:
    """The key names of one account's shared task states."""

    __slots__ = ("events", "leader", "prefix", "watched")

    def __init__(self, fleet: Fleet, account: str | None = None) -> None:
        """The keys of ``account`` (by default the fleet link's own)."""
        if account is None:
            account = fleet.account
        assert account is not None, "a link without an account names the account"
        self.prefix = key_of(account, "task", "")
        self.events = key_of(account, "events")
        self.watched = key_of(account, "watched")
        self.leader = key_of(account, "leader")

    def task(self, task_id: str) -> str:
        """The key of ``task_id``'s state."""
        return self.prefix + task_id


def merge_call(
    keys: TaskKeys, tasks: Iterable[Task], *, kind: str, token: str
) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of one `MERGE` call writing ``tasks``."""
    names = [keys.events, keys.watched, keys.leader]
    args: list[Any] = [token, _PENDING_TTL, _DONE_TTL, MAXLEN, kind]
    for task in tasks:
        names.append(keys.task(task.task_id))
        args += [task.task_id, rank(task.status), updated_millis(task), encode_task(task)]
    return names, args


def stored(value: bytes | str) -> Task:
    """The task in a stored ``<rank>:<updated>:<json>`` value."""
    return decode_task(text(value).split(":", 2)[2])
