"""The fleet's pace in Lua: `_pace.Pace`'s bucket and CUBIC curve, run atomically in Redis.

One script, three operations on one small hash (the bucket: tokens, last refill, rate, CUBIC's
``w_max`` and ``k``, the time of the last cut), all on Redis's clock (``TIME``):

- ``cut``: a 1302 (``Pace.throttled``): enables the pace, or cuts the rate once per round
  trip; the send rate cut is the fleet's, the sum of what each process last reported;
- ``take``: the rate climbs (``Pace.succeeded``: a function of the time since the last cut,
  so replies need no write), the bucket refills, and up to ``n`` tokens are granted (never
  lent: the bucket never goes below zero); else the seconds to the next token;
- ``beat``: a process reports its own send rate (each second); the rate climbs.

Beyond `Pace`: once the rate has stayed at or above the one measured before the last cut for
``off_after`` seconds, the pace switches off fleet-wide (requests stop taking turns, so the
pace costs nothing again until the next 1302). Every change of on/off or of a cut is
published on the ``changed`` channel as ``"<on> <rate> <version>"``.

The arithmetic must stay `Pace`'s: ``tests/test_fleet_pace.py`` runs both on the same
sequence (the ``now`` argument replaces ``TIME`` there) and compares the values.

KEYS: the bucket hash, the send-rate hash (instance -> "rate time"), the channel.
ARGV: off_after, now ("" = Redis's clock), the operation, its arguments:
``cut age recent instance`` (``age``: seconds since the 1302's request was sent),
``take n``, ``beat instance recent``. Reply: ``{on, rate, version, granted, wait}``.
"""

from __future__ import annotations

__all__ = ["PACE_SCRIPT", "SENDS_STALE"]

SENDS_STALE = 3.0
"""Seconds after which a process's reported send rate no longer counts (it stopped, or died)."""

PACE_SCRIPT = """
local K, S, CHAN = KEYS[1], KEYS[2], KEYS[3]
-- _pace's constants (the agreement test fails if they drift)
local MIN_RATE, BETA, SCALE, EPS = 0.5, 0.7, 0.4, 1e-9
local STALE, TTL, SENDS_TTL = @STALE@, 3600000, 10000
local off_after = tonumber(ARGV[1])
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local op = ARGV[3]

local function fmt(x) return string.format('%.17g', x) end
local function num(v, d) if v then return tonumber(v) end return d end

local f = redis.call('HMGET', K, 'on', 'rate', 'tokens', 'refill', 'w_max', 'k', 'cut',
  'recent', 'above', 'ver')
local st = {on = num(f[1], 0), rate = num(f[2], 0), tokens = num(f[3], 0),
  refill = num(f[4], 0), w_max = num(f[5], 0), k = num(f[6], 0), cut = num(f[7], nil),
  recent = num(f[8], 0), above = num(f[9], -1), ver = num(f[10], 0)}
local changed = false

local function save()
  redis.call('HSET', K, 'on', st.on, 'rate', fmt(st.rate), 'tokens', fmt(st.tokens),
    'refill', fmt(st.refill), 'w_max', fmt(st.w_max), 'k', fmt(st.k), 'recent', fmt(st.recent),
    'above', fmt(st.above), 'ver', st.ver)
  if st.cut then redis.call('HSET', K, 'cut', fmt(st.cut)) end
  redis.call('PEXPIRE', K, TTL)
  if changed then
    redis.call('PUBLISH', CHAN, st.on .. ' ' .. fmt(st.rate) .. ' ' .. st.ver)
  end
end

local function reply(granted, wait)
  return {st.on, fmt(st.rate), st.ver, granted, fmt(wait)}
end

-- a process's send rate, and the fleet's (the sum of the fresh reports)
local function report(instance, recent)
  redis.call('HSET', S, instance, fmt(recent) .. ' ' .. fmt(now))
  redis.call('PEXPIRE', S, SENDS_TTL)
  local all = redis.call('HGETALL', S)
  local sum = 0
  for i = 1, #all, 2 do
    local rate, at = string.match(all[i + 1], '(%S+) (%S+)')
    if tonumber(at) < now - STALE then
      redis.call('HDEL', S, all[i])
    else
      sum = sum + tonumber(rate)
    end
  end
  return sum
end

local function refill()
  local elapsed = now - st.refill
  if elapsed > 0 then
    st.tokens = math.min(math.max(1, st.rate), st.tokens + elapsed * st.rate)
    st.refill = now
  end
end

-- Pace.succeeded, then the switch-off
local function climb()
  local cubic = SCALE * (now - st.cut - st.k) ^ 3 + st.w_max
  local ceiling = math.max(2 * st.recent, MIN_RATE)
  refill()
  st.rate = math.max(MIN_RATE, math.min(cubic, math.max(ceiling, st.rate)))
  if st.rate >= st.w_max then
    if st.above < 0 then st.above = now end
    if now - st.above >= off_after then
      st.on = 0
      st.ver = st.ver + 1
      changed = true
    end
  else
    st.above = -1
  end
end

if op == 'cut' then
  local age, recent, instance = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
  if st.cut and now - age < st.cut then return reply(0, 0) end  -- sent before the last cut
  local fleet = report(instance, recent)
  local current
  if st.on ~= 1 then
    st.on = 1
    st.tokens = 1
    st.refill = now
    current = fleet
  else
    refill()
    current = math.min(st.rate, fleet)
  end
  st.w_max = math.max(current, MIN_RATE)
  st.rate = math.max(MIN_RATE, current * BETA)
  st.k = (st.w_max * (1 - BETA) / SCALE) ^ (1 / 3)
  st.cut = now
  st.tokens = math.min(st.tokens, 1)
  st.above = -1
  st.recent = fleet
  st.ver = st.ver + 1
  changed = true
  save()
  return reply(0, 0)
elseif op == 'take' then
  local n = tonumber(ARGV[4])
  if st.on ~= 1 then return reply(n, 0) end
  climb()
  if st.on ~= 1 then
    save()
    return reply(n, 0)
  end
  local granted = math.min(n, math.floor(st.tokens + EPS))
  if granted > 0 then st.tokens = math.max(0, st.tokens - granted) end
  local wait = 0
  if granted < n then wait = (1 - st.tokens) / st.rate end
  save()
  return reply(granted, wait)
elseif op == 'beat' then
  local fleet = report(ARGV[4], tonumber(ARGV[5]))
  if st.on == 1 then
    st.recent = fleet
    climb()
    save()
  end
  return reply(0, 0)
end
return redis.error_reply('unknown pace operation ' .. tostring(op))
""".replace("@STALE@", repr(SENDS_STALE))
