-- Token bucket for broker/ratelimit.py: one atomic, O(1) step.
--
-- KEYS[1]  the bucket: a hash {tokens, ts}; a missing key is a full bucket.
-- ARGV[1]  capacity N (tokens), also the refill per period
-- ARGV[2]  period in microseconds
-- ARGV[3]  cost: tokens to take (hit) or to add to the debt (adjust; negative refunds)
-- ARGV[4]  "hit" (take cost only if available) or "adjust" (apply cost unconditionally)
--
-- Returns {allowed, tokens, retry_after_us, reset_after_us}; allowed is 1, 0, or -1 when cost
-- exceeds capacity (it could never pass). Numbers travel as strings: Redis truncates Lua
-- numbers to integers on return.
--
-- The clock is the server's TIME, so replicas with skewed clocks agree. Calling TIME before a
-- write is allowed because scripts are effect-replicated (the default since Redis 5).

local capacity = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local adjust = ARGV[4] == "adjust"
local rate = capacity / period -- tokens per microsecond

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local state = redis.call("HMGET", KEYS[1], "tokens", "ts")
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
else
  -- A clock that went backwards (failover to a server with another clock) refills nothing.
  tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
end

local allowed = 1
local retry = 0
if adjust then
  tokens = math.min(capacity, tokens - cost)
elseif cost > capacity then
  allowed = -1
elseif tokens + 1e-9 >= cost then -- the slack absorbs float rounding of the refill
  tokens = math.max(0, tokens - cost)
else
  allowed = 0
  retry = (cost - tokens) / rate
end

local reset = math.max(0, (capacity - tokens) / rate)
if allowed == 1 then
  if reset <= 0 then
    -- A full bucket and a missing key mean the same; don't keep the key.
    redis.call("DEL", KEYS[1])
  else
    -- %.17g and %d keep full precision; Redis would format a bare number with %.14g.
    redis.call("HSET", KEYS[1], "tokens", string.format("%.17g", tokens), "ts", string.format("%d", now))
    -- The key vanishes once the bucket would be full again.
    redis.call("PEXPIRE", KEYS[1], math.ceil(reset / 1000))
  end
end
-- A refused hit writes nothing: the stored state and its expiry are still right.

return {allowed, string.format("%.17g", tokens), string.format("%.17g", retry),
  string.format("%.17g", reset)}
