"""The keys' rate buckets in Redis, shared by every replica of a deployment (a `BucketStore` of
server/protection/shared_rates.py, which holds the fairness rules and the fall-back to local buckets).

A key's buckets are one hash, `llamaserve:<deployment>:rate:<key id>` (the key's id, never the key; or the client
address without keys): the levels `r` (requests) and `t` (tokens) as of `at`, in Redis's own clock (`TIME`), so
that the replicas' clocks never matter. Each operation is one Lua script, atomic and one round trip: it refills
the buckets to now at capacity per minute, decides, writes, and lets the hash expire once it would be full again
(an idle key's buckets are full: nothing to keep).
"""

from __future__ import annotations

from server.fleet.link import RedisDown, RedisLink
from server.protection.shared_rates import BucketsUnavailable, Levels, Verdict

_REFILL = """
local function refilled(key, rpm, tpm)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  local state = redis.call('HMGET', key, 'r', 't', 'at')
  local elapsed = math.max(0, now - (tonumber(state[3]) or now))
  local r = math.min(rpm, (tonumber(state[1]) or rpm) + elapsed * rpm / 60)
  local t = math.min(tpm, (tonumber(state[2]) or tpm) + elapsed * tpm / 60)
  return now, r, t
end

local function store(key, now, rpm, tpm, r, t)
  redis.call('HSET', key, 'r', tostring(r), 't', tostring(t), 'at', tostring(now))
  local full_in = 0
  if rpm > 0 then full_in = math.max(full_in, (rpm - r) * 60 / rpm) end
  if tpm > 0 then full_in = math.max(full_in, (tpm - t) * 60 / tpm) end
  redis.call('PEXPIRE', key, math.ceil(full_in * 1000) + 1000)
end
"""

# KEYS[1]: the key's hash. ARGV: rpm, tpm, the reservation, the prompt's counted tokens (0: not counted yet).
# Reply: {1 admitted | 0 refused | 2 prompt over a full bucket, requests level, tokens level, seconds to wait}.
CHARGE = _REFILL + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local reserve, prompt = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, r, t = refilled(KEYS[1], rpm, tpm)
if tpm > 0 and prompt > tpm then return {2, tostring(r), tostring(t), '0'} end
local wait = 0
if rpm > 0 then wait = math.max(wait, (1 - r) * 60 / rpm) end
if tpm > 0 then wait = math.max(wait, (reserve - t) * 60 / tpm) end
if wait > 0 then return {0, tostring(r), tostring(t), tostring(wait)} end
if rpm > 0 then r = r - 1 end
if tpm > 0 then t = t - reserve end
store(KEYS[1], now, rpm, tpm, r, t)
return {1, tostring(r), tostring(t), '0'}
"""

# KEYS[1]: the key's hash. ARGV: rpm, tpm, requests and tokens to add (negative: to take, below zero as a debt).
# Reply: {requests level, tokens level}.
GIVE_BACK = _REFILL + """
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, r, t = refilled(KEYS[1], rpm, tpm)
if rpm > 0 then r = math.min(rpm, r + tonumber(ARGV[3])) end
if tpm > 0 then t = math.min(tpm, t + tonumber(ARGV[4])) end
store(KEYS[1], now, rpm, tpm, r, t)
return {tostring(r), tostring(t)}
"""


def key_prefix(deployment: str) -> str:
    return f"llamaserve:{deployment}:rate:"


class RedisBuckets:
    """A `BucketStore` in Redis, through the fleet's link (its time limit on every call)."""

    def __init__(self, link: RedisLink, deployment: str):
        self._link = link
        self._prefix = key_prefix(deployment)
        # Sent by their digest (EVALSHA); loaded again by the client when a restarted Redis no longer has them.
        self._charge = link.client.register_script(CHARGE)
        self._give_back = link.client.register_script(GIVE_BACK)

    async def charge(self, identity: str, rpm: int, tpm: int, reserve: int, prompt_tokens: int) -> Verdict:
        reply = await self._run(lambda client: self._charge(
            keys=[self._prefix + identity], args=[rpm, tpm, reserve, prompt_tokens], client=client))
        status, requests, tokens, wait = reply
        levels = _levels(rpm, tpm, requests, tokens)
        return Verdict(levels, wait_s=float(wait), prompt_too_large=int(status) == 2)

    async def give_back(self, identity: str, rpm: int, tpm: int, requests: int, tokens: int) -> Levels:
        reply = await self._run(lambda client: self._give_back(
            keys=[self._prefix + identity], args=[rpm, tpm, requests, tokens], client=client))
        return _levels(rpm, tpm, *reply)

    async def _run(self, operation):
        try:
            return await self._link.call(operation)
        except RedisDown as exc:
            raise BucketsUnavailable(str(exc)) from exc


def _levels(rpm: int, tpm: int, requests: bytes | str, tokens: bytes | str) -> Levels:
    return Levels(float(requests) if rpm else None, float(tokens) if tpm else None)
