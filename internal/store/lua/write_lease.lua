-- Write or refresh a node's lease (lease.lua is prepended). The key has no
-- TTL, so an eviction policy that evicts only keys with one (volatile-*)
-- cannot take it; the script runs with flags=allow-oom, so that a refresh
-- (a same-sized overwrite) gets through when Redis is at maxmemory under
-- noeviction: a full Redis must not make the fleet forget its live nodes.
-- KEYS: 1 the node's registry key, 2 node set
-- ARGV: 1 NodeInfo JSON without "exp", 2 lease ttl in ms, 3 node id
-- Returns {renewed, expires}: renewed is 1 if a live lease was refreshed,
-- 0 if there was none or it had lapsed.
local now = now_ms()
local renewed = 0
if lease_live(KEYS[1], now) then renewed = 1 end
local expires = now + tonumber(ARGV[2])
-- ARGV[1] is a JSON object with at least "id": splice "exp" in before the
-- closing brace rather than re-encode it.
redis.call('SET', KEYS[1], string.sub(ARGV[1], 1, -2) .. ',"exp":' .. string.format('%d', expires) .. '}')
redis.call('SADD', KEYS[2], ARGV[3])
return {renewed, expires}
