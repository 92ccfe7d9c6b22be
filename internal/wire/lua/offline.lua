-- A client's last socket on a node closed (1 -> 0), or a survivor cleans a
-- dead node's client. If the client is by now online on another node, only
-- this node's index entry goes: presence, membership and events stay with
-- the new node.
-- KEYS: 1 online hash, 2 node clients set, 3 client chans set, 4 event stream,
--       5 channel index set, 6 the node's registry key, 7 node set
-- ARGV: 1 client, 2 node, 3 event json, 4 event channel, 5 stream max length,
--       6 channel member key prefix, 7 "1" when reaping a dead node,
--       8 node clients key prefix
-- Returns 1 if the client went offline, 0 if it lives on elsewhere, -1 if a
-- reap was refused because the node holds a lease again (it came back).
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then return -1 end
redis.call('SREM', KEYS[2], ARGV[1])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cur ~= ARGV[2] then return 0 end
-- The presence entry names this node, but the client may still have a
-- socket on another node (a stale token, a move in progress): hand the
-- entry to that node instead of taking the client offline.
for _, n in ipairs(redis.call('SMEMBERS', KEYS[7])) do
  if n ~= ARGV[2] and redis.call('SISMEMBER', ARGV[8] .. n, ARGV[1]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[1], n)
    return 0
  end
end
redis.call('HDEL', KEYS[1], ARGV[1])
local chans = redis.call('SMEMBERS', KEYS[3])
for _, ch in ipairs(chans) do
  local k = ARGV[6] .. ch
  redis.call('SREM', k, ARGV[1])
  if redis.call('SCARD', k) == 0 then redis.call('SREM', KEYS[5], ch) end
end
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[4], ARGV[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[3])
return 1
