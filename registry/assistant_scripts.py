"""The Lua scripts of the Assistants store (registry/assistants.py), each one atomic step.

Every script's KEYS and ARGV are written above it; all its keys carry the one hash tag.
"""

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: assistants, order. ARGV: id, JSON, max per owner, ttl ms.
PUT_ASSISTANT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return -1 end
  redis.call('ZADD', KEYS[2], redis.call('HINCRBY', KEYS[1], 'seq', 1), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""

# KEYS: assistants, order. ARGV: id, JSON, ttl ms. Only an assistant that exists.
UPDATE_ASSISTANT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: assistants, order. ARGV: id.
DELETE_ASSISTANT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: order, records hash. ARGV: field prefix, order (asc/desc), limit, after id ('': none),
# run id to match ('': any), whether the hash must exist ('1': else -2).
# Answers the records (up to limit + 1, which says there are more), -1 for an unknown cursor.
PAGE = """
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then return -2 end
local asc, limit = ARGV[2] == 'asc', tonumber(ARGV[3])
local lo, hi = '-inf', '+inf'
if ARGV[4] ~= '' then
  local s = redis.call('ZSCORE', KEYS[1], ARGV[4])
  if not s then return -1 end
  if asc then lo = '(' .. s else hi = '(' .. s end
end
local ids
local take = limit + 1
if ARGV[5] ~= '' then take = -1 end
if asc then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], lo, hi, 'LIMIT', 0, take)
else
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], hi, lo, 'LIMIT', 0, take)
end
local out = {}
for _, id in ipairs(ids) do
  local doc = redis.call('HGET', KEYS[2], ARGV[1] .. id)
  if doc and (ARGV[5] == '' or cjson.decode(doc)['run_id'] == ARGV[5]) then
    table.insert(out, doc)
    if #out > limit then break end
  end
end
return out
"""

# Appending messages, shared by the scripts below. KEYS[1] thread hash, KEYS[2] its message
# order; `first` is the ARGV index of the first (id, JSON) pair. Answers 0 or an error code:
# -3 too many messages (counting `extra` more to come), -4 too many bytes.
_APPEND = """
local function append(first, extra, max_messages, max_bytes)
  local n = (#ARGV - first + 1) / 2
  if redis.call('ZCARD', KEYS[2]) + n + extra > max_messages then return -3 end
  local size = 0
  for i = first + 1, #ARGV, 2 do size = size + #ARGV[i] end
  if (tonumber(redis.call('HGET', KEYS[1], 'bytes')) or 0) + size > max_bytes then return -4 end
  for i = first, #ARGV, 2 do
    redis.call('HSET', KEYS[1], 'm:' .. ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[2], redis.call('HINCRBY', KEYS[1], 'seq', 1), ARGV[i])
  end
  redis.call('HINCRBY', KEYS[1], 'bytes', size)
  return 0
end
local function busy(now)
  local active = redis.call('HGET', KEYS[1], 'active')
  return active and (tonumber(redis.call('HGET', KEYS[1], 'active_until')) or 0) > now
end
local function touch(ttl)
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: thread, messages, runs. ARGV: thread JSON, ttl ms, max messages, max bytes, then
# (id, JSON) per message.
CREATE_THREAD = (
    _APPEND
    + """
if redis.call('HSETNX', KEYS[1], 'thread', ARGV[1]) == 0 then return -5 end
local code = append(5, 0, tonumber(ARGV[3]), tonumber(ARGV[4]))
if code ~= 0 then redis.call('DEL', KEYS[1], KEYS[2]) return code end
touch(ARGV[2])
return 0
"""
)

# KEYS: thread, messages, runs. ARGV: ttl ms, max messages, max bytes, then (id, JSON) pairs.
# Answers 0, -1 no thread, -2 a run is in progress, or append's code.
ADD_MESSAGES = (
    _APPEND
    + _NOW_MS
    + """
if redis.call('HEXISTS', KEYS[1], 'thread') == 0 then return -1 end
if busy(now) then return -2 end
local code = append(4, 0, tonumber(ARGV[2]), tonumber(ARGV[3]))
if code ~= 0 then return code end
touch(ARGV[1])
return 0
"""
)

# KEYS: thread, messages, runs, assistants, assistant order. ARGV: ttl ms, max messages, max
# bytes, run id, run JSON, run deadline (ms from now), max runs kept, then (id, JSON) per
# message added with the run. Room is kept for the answer. Answers as _ADD_MESSAGES.
START_RUN = (
    _APPEND
    + _NOW_MS
    + """
if redis.call('HEXISTS', KEYS[1], 'thread') == 0 then return -1 end
if busy(now) then return -2 end
local code = append(8, 1, tonumber(ARGV[2]), tonumber(ARGV[3]))
if code ~= 0 then return code end
redis.call('HSET', KEYS[1], 'active', ARGV[4], 'active_until', now + tonumber(ARGV[6]),
  'r:' .. ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[1], 'rseq', 1), ARGV[4])
while redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[7]) do
  local oldest = redis.call('ZPOPMIN', KEYS[3])
  redis.call('HDEL', KEYS[1], 'r:' .. oldest[1])
end
touch(ARGV[1])
return 0
"""
)

# KEYS: thread, messages, runs. ARGV: ttl ms, max messages, max bytes, run id, run JSON,
# what becomes of the thread ('end': it is free again; 'keep'; or a number: it stays the
# run's for that many ms more), the status the run must have now ('': any), then the (id,
# JSON) of a message the run adds, if any. Answers 0, -1 no such run (the thread was
# deleted), -6 the run's status was not the one expected, or append's code.
UPDATE_RUN = (
    _APPEND
    + _NOW_MS
    + """
local old = redis.call('HGET', KEYS[1], 'r:' .. ARGV[4])
if not old then return -1 end
if ARGV[7] ~= '' and cjson.decode(old)['status'] ~= ARGV[7] then return -6 end
if #ARGV > 7 then
  local code = append(8, 0, tonumber(ARGV[2]), tonumber(ARGV[3]))
  if code ~= 0 then return code end
end
redis.call('HSET', KEYS[1], 'r:' .. ARGV[4], ARGV[5])
if redis.call('HGET', KEYS[1], 'active') == ARGV[4] then
  if ARGV[6] == 'end' then
    redis.call('HDEL', KEYS[1], 'active', 'active_until')
  elseif ARGV[6] ~= 'keep' then
    redis.call('HSET', KEYS[1], 'active_until', now + tonumber(ARGV[6]))
  end
end
touch(ARGV[1])
return 0
"""
)


# KEYS: thread, messages, runs. ARGV: thread JSON, ttl ms. Answers 0, or -1 no thread.
UPDATE_THREAD = (
    _APPEND
    + """
if redis.call('HEXISTS', KEYS[1], 'thread') == 0 then return -1 end
redis.call('HSET', KEYS[1], 'thread', ARGV[1])
touch(ARGV[2])
return 0
"""
)
