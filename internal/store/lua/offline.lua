-- A client's last socket on a node closed (1 -> 0), or a survivor cleans a
-- dead node's client (lease.lua is prepended). If the client is by now online on another node, or
-- still has a socket on one (a stale token, a move in progress), only this
-- node's entries go: presence, membership and events stay with that node.
-- KEYS: 1 online hash, 2 node clients set, 3 client nodes set,
--       4 client chans set, 5 event stream, 6 channel index set,
--       7 the node's registry key,
--       8.. one channel member set per name in ARGV[7..]
-- ARGV: 1 client, 2 node, 3 event json, 4 event channel, 5 stream max length,
--       6 "1" when reaping a dead node, 7.. the channel names the caller
--       believes the client has joined, in the order of KEYS[8..]
-- Returns {1} if the client went offline, {0} if it lives on elsewhere,
-- {-1} if a reap was refused because the node holds a lease again (it came
-- back), {2, chan...} if the client has joined channels that the caller did
-- not pass: nothing was written, and the caller runs the script again with
-- those channels' keys.
if ARGV[6] == '1' and lease_live(KEYS[7], now_ms()) then return {-1} end
local given = {}
for i = 7, #ARGV do given[ARGV[i]] = true end
local joined = redis.call('SMEMBERS', KEYS[4])
for _, ch in ipairs(joined) do
  if not given[ch] then
    local out = {2}
    for _, c in ipairs(joined) do out[#out + 1] = c end
    return out
  end
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cur ~= ARGV[2] then return {0} end
local other = redis.call('SRANDMEMBER', KEYS[3])
if other then
  redis.call('HSET', KEYS[1], ARGV[1], other)
  return {0}
end
redis.call('HDEL', KEYS[1], ARGV[1])
for i = 8, #KEYS do
  redis.call('SREM', KEYS[i], ARGV[1])
  if redis.call('SCARD', KEYS[i]) == 0 then redis.call('SREM', KEYS[6], ARGV[i - 1]) end
end
redis.call('DEL', KEYS[4])
redis.call('PUBLISH', ARGV[4], ARGV[3])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[3])
return {1}
