-- A client's first socket opened on a node (0 -> 1).
-- KEYS: 1 online hash, 2 node clients set, 3 client chans set, 4 event stream
-- ARGV: 1 client, 2 node, 3 event json, 4 event channel, 5 stream max length
-- Returns the client's channels. The online event is emitted only when the
-- client was not already online on another node (a move in progress).
local prev = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if not prev then
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[3])
end
return redis.call('SMEMBERS', KEYS[3])
