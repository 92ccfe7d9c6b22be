-- Finish reaping a dead node, unless it holds a live lease again (lease.lua
-- is prepended).
-- KEYS: 1 the node's registry key, 2 node set, 3 reap lock, 4 (on a single
--       Redis only) its node clients set: on a Cluster that set is in the
--       node's own slot, and the caller deletes it after a removal
-- ARGV: 1 node id
-- Returns 1 if the node was removed, 0 if it came back (only the lock goes).
redis.call('DEL', KEYS[3])
if lease_live(KEYS[1], now_ms()) then return 0 end
redis.call('DEL', KEYS[1])
if KEYS[4] then redis.call('DEL', KEYS[4]) end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
