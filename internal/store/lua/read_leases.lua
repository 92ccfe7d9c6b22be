-- Read every node's lease with the clock of the Redis that holds them
-- (Cluster only: there the registry keys share one slot, and TIME sent on
-- its own would go to any master, whose clock may differ).
-- KEYS: the nodes' registry keys.
-- Returns {seconds, microseconds, lease or false, ...} in the order of KEYS.
local t = redis.call('TIME')
local out = {t[1], t[2]}
for i = 1, #KEYS do
  out[#out + 1] = redis.call('GET', KEYS[i])
end
return out
