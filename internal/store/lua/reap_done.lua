-- Finish reaping a dead node, unless it holds a live lease again (lease.lua
-- is prepended).
-- KEYS: 1 the node's registry key, 2 its node clients set, 3 node set, 4 reap lock
-- ARGV: 1 node id
-- Returns 1 if the node was removed, 0 if it came back (only the lock goes).
redis.call('DEL', KEYS[4])
if lease_live(KEYS[1], now_ms()) then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
