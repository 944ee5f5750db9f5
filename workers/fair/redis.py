"""The fair queue in Redis, beside the Redis broker's queues: every step one Lua script, so that workers on
every host take turns on one state atomically, on Redis's clock.

Keys, under `<namespace>:fair:` (the paced lane's under `<namespace>:fair-paced:`): `orgs` (sorted set: the
organizations with chunks waiting, by pass), `q:<organization>` (sorted set: its chunks' sequence numbers by
the time they are booked at), `chunk` (hash: sequence number → the chunk's ids as JSON), `seq`, `weight`,
`rate`, `booked`, `tat` (hashes by organization), `left` (hash: an organization's pass when it stopped
waiting), `virtual` (the highest pass served), `claims` (hash: claim → organization and ids) and `claimed`
(sorted set: claim → when).
The scripts name keys they build themselves: fine on one Redis (what Dramatiq's broker needs too), not on a
cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import redis

from workers.fair import (
    CATCH_UP_PACE,
    CLAIM_TTL_S,
    MAX_WEIGHT,
    PACE_BURST_S,
    PACE_LIMIT,
    READY_GRACE_S,
    STRIDE,
    FairLaneName,
    Taken,
)

# The take's pacing arguments after the burst: workers.fair.catch_up_pace's.
_PACE = (CATCH_UP_PACE, PACE_LIMIT)
# Chunks put by one script call: Redis runs nothing else during a script, and a million-device rollout is
# thousands of chunks; a hundred of 250 ids is some 650 KB, a few milliseconds.
PUT_AT_ONCE = 100

# The clock of every script: ARGV[1] when a test gives one, else Redis's own, one for all hosts.
_NOW = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# ARGV: now, organization, weight, rate (0: unpaced), then each chunk's ids as JSON. Returns each chunk's
# delay. An organization that starts waiting joins at workers.fair.joining_pass: its own pass kept in `left`,
# the virtual time in `virtual`, the lowest pass waiting.
_PUT = (
    _NOW
    + """
local p, org = KEYS[1], ARGV[2]
local weight, rate = tonumber(ARGV[3]), tonumber(ARGV[4])
local q = p .. 'q:' .. org
if redis.call('ZCARD', q) == 0 then
  local lowest = redis.call('ZRANGE', p .. 'orgs', 0, 0, 'WITHSCORES')
  local own = tonumber(redis.call('HGET', p .. 'left', org) or '0')
  local virtual = tonumber(redis.call('GET', p .. 'virtual') or '0')
  local pass = math.max(own, virtual, tonumber(lowest[2] or '0'))
  redis.call('ZADD', p .. 'orgs', string.format('%d', pass), org)
end
redis.call('HSET', p .. 'weight', org, weight)
redis.call('HSET', p .. 'rate', org, rate)
local booked = tonumber(redis.call('HGET', p .. 'booked', org) or '0')
local delays = {}
for i = 5, #ARGV do
  local at = now
  if rate > 0 then
    at = math.max(now, booked)
    booked = at + #cjson.decode(ARGV[i]) / rate
  end
  local seq = string.format('%016d', redis.call('INCR', p .. 'seq'))
  redis.call('HSET', p .. 'chunk', seq, ARGV[i])
  redis.call('ZADD', q, string.format('%.6f', at), seq)
  delays[#delays + 1] = string.format('%.6f', at - now)
end
if rate > 0 then redis.call('HSET', p .. 'booked', org, string.format('%.6f', booked)) end
return delays
"""
)

# ARGV: now, claim, stride, claim TTL, pace burst, the largest weight, the catch-up pace, the pace limit.
# Returns {organization, ids} taken, {'', wait} or {}. A pass is an integer below 2**53
# (workers.fair.STRIDE), exact in a Lua number and a score; it goes to Redis through '%d', since Lua would
# pass a number on with 14 digits ('%.14g'). A tat is kept with 17 digits, as the other stores keep it.
_TAKE = (
    _NOW
    + """
local p, claim, stride_base, ttl = KEYS[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local burst, max_weight, catch_up_pace = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local pace_limit = tonumber(ARGV[8])
local held = redis.call('HGET', p .. 'claims', claim)
if held then
  local c = cjson.decode(held)
  return {c[1], c[2]}
end
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', p .. 'claimed', '-inf', now - ttl, 'LIMIT', 0, 100)) do
  redis.call('HDEL', p .. 'claims', stale)
  redis.call('ZREM', p .. 'claimed', stale)
end
local earliest = nil
for _, org in ipairs(redis.call('ZRANGE', p .. 'orgs', 0, -1)) do
  local q = p .. 'q:' .. org
  local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  local tat = tonumber(redis.call('HGET', p .. 'tat', org) or '0')
  local at = math.max(tonumber(head[2]), tat)
  if at <= now then
    local ids = redis.call('HGET', p .. 'chunk', head[1])
    local size = #cjson.decode(ids)
    redis.call('HDEL', p .. 'chunk', head[1])
    redis.call('ZREM', q, head[1])
    local rate = tonumber(redis.call('HGET', p .. 'rate', org) or '0')
    if rate > 0 then  -- workers.fair.next_tat, with workers.fair.catch_up_pace
      local behind = math.max(0, burst - size / rate)
      local most = math.floor(pace_limit * rate / size) * size / (rate * (1 + behind))
      local pace = math.max(1, math.min(catch_up_pace, most))
      tat = math.max(tat, now - behind) + size / (rate * pace)
      redis.call('HSET', p .. 'tat', org, string.format('%.17g', tat))
    end
    local pass = tonumber(redis.call('ZSCORE', p .. 'orgs', org))
    if pass > tonumber(redis.call('GET', p .. 'virtual') or '0') then
      redis.call('SET', p .. 'virtual', string.format('%d', pass))
    end
    local weight = tonumber(redis.call('HGET', p .. 'weight', org) or '1')
    weight = math.max(1, math.min(weight, max_weight))  -- workers.fair.advance
    pass = pass + math.floor(size * stride_base / weight)
    if redis.call('ZCARD', q) == 0 then
      redis.call('ZREM', p .. 'orgs', org)
      redis.call('HSET', p .. 'left', org, string.format('%d', pass))
    else
      redis.call('ZADD', p .. 'orgs', string.format('%d', pass), org)
    end
    redis.call('HSET', p .. 'claims', claim, cjson.encode({org, ids}))
    redis.call('ZADD', p .. 'claimed', now, claim)
    return {org, ids}
  end
  if earliest == nil or at < earliest then earliest = at end
end
if earliest == nil then return {} end
return {'', string.format('%.6f', earliest - now)}
"""
)

_DONE = """
redis.call('HDEL', KEYS[1] .. 'claims', ARGV[2])
redis.call('ZREM', KEYS[1] .. 'claimed', ARGV[2])
"""

# ARGV: now, limit, grace. Returns how many chunks could have been taken a grace ago already (booked by
# then, their organization's tat come by then), counted up to the limit: one ZCOUNT per organization waiting.
_READY = (
    _NOW
    + """
local p, limit = KEYS[1], tonumber(ARGV[2])
local since = now - tonumber(ARGV[3])
local ready = 0
for _, org in ipairs(redis.call('ZRANGE', p .. 'orgs', 0, -1)) do
  if tonumber(redis.call('HGET', p .. 'tat', org) or '0') <= since then
    ready = ready + redis.call('ZCOUNT', p .. 'q:' .. org, '-inf', since)
    if ready >= limit then return limit end
  end
end
return ready
"""
)


class RedisFairQueue:
    """`workers.fair.FairQueue` in Redis, through `client` (the broker's), under `namespace`, for `lane`.
    `clock`: seconds, Redis's own clock unless a test gives one."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        clock: Callable[[], float] | None = None,
        *,
        lane: FairLaneName = FairLaneName.bulk,
    ) -> None:
        self._client = client
        self._clock = clock
        self._prefix = f"{namespace}:fair:" if lane is FairLaneName.bulk else f"{namespace}:fair-{lane}:"
        self._put = client.register_script(_PUT)
        self._take = client.register_script(_TAKE)
        self._done = client.register_script(_DONE)
        self._ready = client.register_script(_READY)

    def put(
        self,
        organization_id: str,
        chunks: Sequence[Sequence[str]],
        *,
        weight: int = 1,
        rate_per_s: float | None = None,
    ) -> list[float]:
        delays: list[float] = []
        for start in range(0, len(chunks), PUT_AT_ONCE):
            payloads = [
                json.dumps(list(c), separators=(",", ":")) for c in chunks[start : start + PUT_AT_ONCE]
            ]
            args = [self._now(), organization_id, weight, rate_per_s or 0, *payloads]
            answer: list[Any] = self._put(keys=[self._prefix], args=args)
            delays += [float(d) for d in answer]
        return delays

    def take(self, claim: str) -> Taken:
        answer: list[Any] = self._take(
            keys=[self._prefix],
            args=[self._now(), claim, STRIDE, CLAIM_TTL_S, PACE_BURST_S, MAX_WEIGHT, *_PACE],
        )
        if not answer:
            return Taken()
        organization, rest = answer[0].decode(), answer[1].decode()
        if not organization:
            return Taken(wait_s=float(rest))
        return Taken(organization, json.loads(rest))

    def done(self, claim: str) -> None:
        self._done(keys=[self._prefix], args=[self._now(), claim])

    def ready(self, limit: int) -> int:
        return int(self._ready(keys=[self._prefix], args=[self._now(), limit, READY_GRACE_S]))

    def waits(self, organization_id: str) -> bool:
        # `q:<organization>` holds its chunks not yet taken; a take removes a chunk from it as it claims it.
        return int(self._client.zcard(f"{self._prefix}q:{organization_id}")) > 0

    def _now(self) -> str:
        """The scripts' ARGV[1]: empty for Redis's clock."""
        return "" if self._clock is None else f"{self._clock():.6f}"
