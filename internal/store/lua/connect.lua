-- A client's first socket on a node (token.lua and event_json.lua are
-- prepended): the token of consume_token.lua and the presence of
-- online.lua in one script, so that such a connect costs one round trip. The node knows the client before
-- the token is read only from the URL (its client parameter), so that is
-- whose keys it passes; the record says who connects, and when it names
-- another client (or a meta this script cannot put into the event as
-- encoding/json would) the token is consumed without any presence write
-- and the node runs online.lua itself.
-- KEYS: 1 token key, 2 online hash, 3 node clients set,
--       4 client nodes set, 5 client chans set (both of the client the URL
--       names), 6 event stream
-- ARGV: 1 node, 2 the client the URL names, 3 online event JSON before
--       its meta, 4 the rest of it, 5 event channel, 6 stream max length,
--       7 most meta bytes
-- Returns {0} and {2} as consume_token.lua; {3, record}: consumed, no
-- presence written; {1, record, existed, chan...}: consumed and the client
-- marked online as online.lua would have (existed 1: Redis had it online
-- already, no event emitted), then its channels.

local code, v, rec = take_token(KEYS[1], ARGV[1])
if code ~= 1 then return {code} end
local meta = vouch_meta(rec, tonumber(ARGV[7]))
if rec.client ~= ARGV[2] or meta == nil then
  redis.call('DEL', KEYS[1])
  return {3, v}
end
-- The HSET is the script's first write: at maxmemory Redis refuses it and
-- stops the script with nothing written and the token kept, as online.lua
-- failed before the merge. (After a first write Redis lets a script finish
-- past maxmemory; the token's DEL, which needs no memory, therefore comes
-- after it.)
local prev = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[1])
local out = {1, v, 0}
if prev then
  out[3] = 1
else
  local ev = online_event(ARGV[3], meta, ARGV[4])
  redis.call('PUBLISH', ARGV[5], ev)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'e', ev)
end
for _, ch in ipairs(redis.call('SMEMBERS', KEYS[5])) do out[#out + 1] = ch end
return out
