-- Prepended to the Cluster scripts that mark a client online
-- (cluster/connect.lua, cluster/online.lua). Every key is in the client's
-- presence bucket slot: its bucket HASH, node set, channel set and pending
-- event LIST and event counter. The online event is not appended here
-- (the event stream is in another slot): it waits in the pending LIST,
-- numbered by the client's counter, which the caller empties after the
-- event step (cluster/emit.lua), and which a reaper empties for a node
-- that died in between.

-- queue_event numbers ev with the client's next event number and appends
-- it to the pending LIST as "<number> <json>". The counter outlives the
-- event step's mark of the last number emitted (cluster/emit.lua), so
-- that its numbers only grow while the mark holds one.
local function queue_event(pending, counter, ev)
  local n = redis.call('INCR', counter)
  redis.call('PEXPIRE', counter, 172800000) -- 48 h
  redis.call('RPUSH', pending, string.format('%d %s', n, ev))
end

-- mark_online records client on node and, if it was offline, queues ev.
-- Returns {existed, #chans, chan..., pending event...}: existed is 1 if
-- the bucket had the client online already; then the client's channels,
-- then every pending event of the client, oldest first (ev last if queued,
-- after any a dead node left), each as "<number> <json>".
local function mark_online(bucket, nodes, chans, pending, counter, client, node, ev)
  local prev = redis.call('HGET', bucket, client)
  -- The HSET is the first write: at maxmemory Redis refuses it and stops
  -- the script with nothing written.
  redis.call('HSET', bucket, client, node)
  redis.call('SADD', nodes, node)
  local out = {1, 0}
  if not prev then
    out[1] = 0
    queue_event(pending, counter, ev)
  end
  local cs = redis.call('SMEMBERS', chans)
  out[2] = #cs
  for _, c in ipairs(cs) do out[#out + 1] = c end
  for _, e in ipairs(redis.call('LRANGE', pending, 0, -1)) do out[#out + 1] = e end
  return out
end
