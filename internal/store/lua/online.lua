-- A client's first socket opened on a node (0 -> 1), or a node re-announcing
-- its clients after Redis came back.
-- KEYS: 1 online hash, 2 node clients set, 3 client nodes set,
--       4 client chans set, 5 event stream
-- ARGV: 1 client, 2 node, 3 event json, 4 event channel, 5 stream max length
-- Returns {existed, chan...}: existed is 1 if the client was already online
-- (here or on another node, e.g. during a move), in which case no event is
-- emitted; then the client's channels.
local prev = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
local out = {0}
if prev then
  out[1] = 1
else
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[3])
end
for _, ch in ipairs(redis.call('SMEMBERS', KEYS[4])) do out[#out + 1] = ch end
return out
