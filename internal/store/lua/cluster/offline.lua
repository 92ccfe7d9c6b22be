-- A client's last socket on a node closed, or a survivor finishes a dead
-- node's client, on a Cluster: the client's part of offline.lua, in its
-- bucket slot. If the client goes offline, its channel set moves to its
-- leaving set and the offline event is left pending; the caller then
-- leaves each channel's member set (other slots), emits the pending
-- events and removes the client from the node's set, in that order, so
-- that an offline cut short is found again in the node's set and finished
-- by the reaper, which runs this script again (cluster/presence.lua is
-- prepended, for queue_event).
-- KEYS: 1 bucket hash, 2 client nodes set, 3 client chans set,
--       4 client leaving set, 5 pending event list, 6 event counter (the
--       bucket's slot)
-- ARGV: 1 client, 2 node, 3 offline event json
-- Returns {went, #leaving, leaving channel..., pending event...}: went is
-- 1 if the client went offline now, 0 if it lives on elsewhere; then the
-- channels still to leave (none the client has joined again since) and
-- every pending event, oldest first, as "<number> <json>".
redis.call('SREM', KEYS[2], ARGV[2])
local went = 0
local cur = redis.call('HGET', KEYS[1], ARGV[1])
-- Offline in the bucket already, with steps left over: a run that was cut
-- short, which this one finishes without a second event.
local rerun = not cur and (redis.call('EXISTS', KEYS[4]) == 1 or redis.call('LLEN', KEYS[5]) > 0)
if not cur or cur == ARGV[2] then
  local other = redis.call('SRANDMEMBER', KEYS[2])
  if other then
    redis.call('HSET', KEYS[1], ARGV[1], other)
  else
    went = 1
    redis.call('HDEL', KEYS[1], ARGV[1])
    if redis.call('EXISTS', KEYS[3]) == 1 then
      redis.call('SUNIONSTORE', KEYS[4], KEYS[4], KEYS[3])
      redis.call('DEL', KEYS[3])
    end
    if not rerun then queue_event(KEYS[5], KEYS[6], ARGV[3]) end
  end
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('SDIFFSTORE', KEYS[4], KEYS[4], KEYS[3])
end
local leaving = redis.call('SMEMBERS', KEYS[4])
local out = {went, #leaving}
for _, c in ipairs(leaving) do out[#out + 1] = c end
for _, e in ipairs(redis.call('LRANGE', KEYS[5], 0, -1)) do out[#out + 1] = e end
return out
