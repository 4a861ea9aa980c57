"""The Redis journal's Lua scripts: each step of a key's record as one atomic script.

A script only checks and writes what the Python side decided with ``_journal_rules``: a
claim reads the record (and its owner's lease) and records a new key at once; a takeover
is a compare-and-set on the (state, owner, fence) the decision was made on; an owned move
checks owner, fence and source state. Every writing script carries a nonce (``op``), so
that the client's retry of a script whose reply was lost is answered as done, not refused.

Keys (under the journal's prefix ``P``): ``P:rec:<key>`` a hash per key (``_journal_hash``),
``P:pending`` a ZSET of the unfinished keys by claim time, ``P:tasks`` a hash task id -> key,
``P:video:<video id>`` the set of a video's SENDING keys, ``P:fence`` the fence counter.
Keys built inside a script come from prefixes passed as arguments (one Redis, no cluster).
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "DOUBTS",
    "FINISH",
    "FORGET",
    "GONE",
    "MOVE",
    "PENDING",
    "READ",
    "RELEASE",
    "SETTLE",
    "TAKE",
]

# Every record read carries Redis's clock now ('redis_now', ms), beside 'sent_redis' (Redis's
# clock when the key went to *sending*): a reader on another host measures the time since
# the send on one clock, whatever the hosts' own clocks say.
_NOW = """
local function with_now(fields)
  local t = redis.call('TIME')
  fields[#fields + 1] = 'redis_now'
  fields[#fields + 1] = tostring(t[1] * 1000 + math.floor(t[2] / 1000))
  return fields
end
"""

# KEYS: rec, pending, fence counter.
# ARGV: token, nonce, member, fingerprint, request, stamped, claimed_at, score, video_id,
# alive prefix. -> {'new', fence} | {'old', owner alive 0/1, fields}
CLAIM = (
    _NOW
    + """
local rec = KEYS[1]
if redis.call('EXISTS', rec) == 0 then
  local fence = redis.call('INCR', KEYS[3])
  redis.call('HSET', rec, 'fingerprint', ARGV[4], 'request', ARGV[5], 'stamped', ARGV[6],
    'state', 'intent', 'owner', ARGV[1], 'fence', fence, 'claimed_at', ARGV[7],
    'video_id', ARGV[9], 'op', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[3])
  return {'new', fence}
end
if redis.call('HGET', rec, 'op') == ARGV[2] then
  return {'new', redis.call('HGET', rec, 'fence')}
end
local owner = redis.call('HGET', rec, 'owner')
local alive = 0
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[10] .. owner) == 1 then
  alive = 1
end
return {'old', alive, with_now(redis.call('HGETALL', rec))}
"""
)

# KEYS: rec, pending, fence counter.
# ARGV: token, nonce, member, state, owner, fence (as read), alive prefix, mode
# ('fresh' | 'doubt'), request, stamped, claimed_at, score. -> {1, fence} | {0}
TAKE = """
local rec = KEYS[1]
if redis.call('HGET', rec, 'op') == ARGV[2] then
  return {1, redis.call('HGET', rec, 'fence')}
end
local cur = redis.call('HMGET', rec, 'state', 'owner', 'fence')
local owner = cur[2] or ''
if cur[1] ~= ARGV[4] or owner ~= ARGV[5] or cur[3] ~= ARGV[6] then return {0} end
if owner ~= '' and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[7] .. owner) == 1 then
  return {0}
end
local fence = redis.call('INCR', KEYS[3])
redis.call('HSET', rec, 'owner', ARGV[1], 'fence', fence, 'op', ARGV[2])
if ARGV[8] == 'fresh' then
  redis.call('HSET', rec, 'request', ARGV[9], 'stamped', ARGV[10], 'claimed_at', ARGV[11])
  redis.call('ZADD', KEYS[2], ARGV[12], ARGV[3])
end
return {1, fence}
"""

# KEYS: rec, pending, tasks.
# ARGV: token, fence, nonce, member, source, target, releases, unfinished, task id ('' none),
# video prefix, n (values of fields to set, as name/value pairs), the pairs, then names to
# delete. -> {'ok'} | {'miss', state, owner, fence} | {'taken', other key}
MOVE = """
local rec = KEYS[1]
local cur = redis.call('HMGET', rec, 'state', 'owner', 'fence', 'op')
if cur[4] == ARGV[3] then return {'ok'} end
if not cur[1] then return {'miss', '', '', ''} end
local owner = cur[2] or ''
if owner ~= ARGV[1] or cur[3] ~= ARGV[2] or cur[1] ~= ARGV[5] then
  return {'miss', cur[1], owner, cur[3]}
end
if ARGV[9] ~= '' then
  local other = redis.call('HGET', KEYS[3], ARGV[9])
  if other and other ~= ARGV[4] then return {'taken', other} end
end
local n = tonumber(ARGV[11])
if n > 0 then redis.call('HSET', rec, unpack(ARGV, 12, 11 + n)) end
if #ARGV > 11 + n then redis.call('HDEL', rec, unpack(ARGV, 12 + n, #ARGV)) end
redis.call('HSET', rec, 'state', ARGV[6], 'op', ARGV[3])
if ARGV[7] == '1' then redis.call('HDEL', rec, 'owner') end
local video = ARGV[10] .. redis.call('HGET', rec, 'video_id')
if ARGV[6] == 'sending' then
  local t = redis.call('TIME')
  redis.call('HSET', rec, 'sent_redis', tostring(t[1] * 1000 + math.floor(t[2] / 1000)))
  redis.call('SADD', video, ARGV[4])
elseif ARGV[5] == 'sending' then
  redis.call('SREM', video, ARGV[4])
end
if ARGV[9] ~= '' then redis.call('HSET', KEYS[3], ARGV[9], ARGV[4]) end
if ARGV[8] == '0' then redis.call('ZREM', KEYS[2], ARGV[4]) end
return {'ok'}
"""

# KEYS: rec. ARGV: token, fence ('' for a claim whose reply was lost: any fence).
# -> 1 released, 0 not owned by this claim
RELEASE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'fence')
if cur[1] == ARGV[1] and (ARGV[2] == '' or cur[2] == ARGV[2]) then
  redis.call('HDEL', KEYS[1], 'owner')
  return 1
end
return 0
"""

# KEYS: tasks, pending. ARGV: task id, status, task JSON, has task ('1'/'0'), rec prefix.
FINISH = """
local key = redis.call('HGET', KEYS[1], ARGV[1])
if not key then return 0 end
local rec = ARGV[5] .. key
local state = redis.call('HGET', rec, 'state')
if state ~= 'created' and state ~= 'finished' then return 0 end
redis.call('HSET', rec, 'state', 'finished', 'status', ARGV[2])
if ARGV[4] == '1' then redis.call('HSET', rec, 'task', ARGV[3]) end
redis.call('ZREM', KEYS[2], key)
return 1
"""

# KEYS: tasks, pending. ARGV: task id, reason, before (ISO text), rec prefix, nonce, age ms.
# Old enough: sent (on Redis's clock, as every host reads it) more than age ms ago; a record
# never sent from here (settled by hand) is judged by its claim's time against before.
GONE = """
local key = redis.call('HGET', KEYS[1], ARGV[1])
if not key then return false end
local rec = ARGV[4] .. key
local cur = redis.call('HMGET', rec, 'state', 'claimed_at', 'op', 'task_id', 'sent_redis')
if cur[3] == ARGV[5] then return key end
if cur[1] ~= 'created' or cur[4] ~= ARGV[1] then return false end
local old
if cur[5] then
  local t = redis.call('TIME')
  old = tonumber(cur[5]) <= t[1] * 1000 + math.floor(t[2] / 1000) - tonumber(ARGV[6])
else
  old = cur[2] < ARGV[3]
end
if not old then return false end
redis.call('HSET', rec, 'state', 'gone', 'refusal_reason', ARGV[2], 'op', ARGV[5])
redis.call('ZREM', KEYS[2], key)
return key
"""

# KEYS: rec. ARGV: token, alive prefix. -> {owner alive 0/1, fields} (fields empty: none)
READ = (
    _NOW
    + """
local owner = redis.call('HGET', KEYS[1], 'owner')
local alive = 0
if owner and (owner == ARGV[1] or redis.call('EXISTS', ARGV[2] .. owner) == 1) then
  alive = 1
end
return {alive, with_now(redis.call('HGETALL', KEYS[1]))}
"""
)

# KEYS: rec, pending, tasks. ARGV: token, nonce, member, state, owner, fence (as read),
# alive prefix, task id, score, video prefix. -> {'ok'} | {'changed'} | {'taken', other key}
SETTLE = """
local rec = KEYS[1]
if redis.call('HGET', rec, 'op') == ARGV[2] then return {'ok'} end
local cur = redis.call('HMGET', rec, 'state', 'owner', 'fence', 'task_id', 'video_id')
local owner = cur[2] or ''
if cur[1] ~= ARGV[4] or owner ~= ARGV[5] or cur[3] ~= ARGV[6] then return {'changed'} end
if owner ~= '' and (owner == ARGV[1] or redis.call('EXISTS', ARGV[7] .. owner) == 1) then
  return {'changed'}
end
local other = redis.call('HGET', KEYS[3], ARGV[8])
if other and other ~= ARGV[3] then return {'taken', other} end
if cur[4] and cur[4] ~= ARGV[8] and redis.call('HGET', KEYS[3], cur[4]) == ARGV[3] then
  redis.call('HDEL', KEYS[3], cur[4])
end
redis.call('HDEL', rec, 'owner', 'task', 'status', 'refusal_code', 'refusal_reason')
redis.call('HSET', rec, 'state', 'created', 'task_id', ARGV[8], 'op', ARGV[2])
if cur[1] == 'sending' then redis.call('SREM', ARGV[10] .. cur[5], ARGV[3]) end
redis.call('HSET', KEYS[3], ARGV[8], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[3])
return {'ok'}
"""

# KEYS: rec, pending, tasks. ARGV: token, alive prefix, member, video prefix.
# -> 1 forgotten, 0 no record, -1 a live instance owns it
FORGET = """
local rec = KEYS[1]
local cur = redis.call('HMGET', rec, 'state', 'owner', 'task_id', 'video_id')
if not cur[1] then return 0 end
if cur[2] and (cur[2] == ARGV[1] or redis.call('EXISTS', ARGV[2] .. cur[2]) == 1) then
  return -1
end
if cur[3] and redis.call('HGET', KEYS[3], cur[3]) == ARGV[3] then
  redis.call('HDEL', KEYS[3], cur[3])
end
if cur[4] then redis.call('SREM', ARGV[4] .. cur[4], ARGV[3]) end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('DEL', rec)
return 1
"""

# KEYS: the video's set. ARGV: rec prefix. -> {{member, fields}, ...} of its SENDING keys
DOUBTS = (
    _NOW
    + """
local found = {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local rec = ARGV[1] .. member
  if redis.call('HGET', rec, 'state') == 'sending' then
    found[#found + 1] = {member, with_now(redis.call('HGETALL', rec))}
  end
end
return found
"""
)

# ARGV: token, alive prefix, rec prefix, members... -> {{member, owner alive, fields}, ...}
# of those CREATED or SENDING (``is_pending`` decides which of them resume picks up).
PENDING = (
    _NOW
    + """
local found = {}
for i = 4, #ARGV do
  local rec = ARGV[3] .. ARGV[i]
  local cur = redis.call('HMGET', rec, 'state', 'owner')
  if cur[1] == 'created' or cur[1] == 'sending' then
    local alive = 0
    if cur[2] and (cur[2] == ARGV[1] or redis.call('EXISTS', ARGV[2] .. cur[2]) == 1) then
      alive = 1
    end
    found[#found + 1] = {ARGV[i], alive, with_now(redis.call('HGETALL', rec))}
  end
end
return found
"""
)
