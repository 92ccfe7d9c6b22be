-- The event step of a Cluster connect or offline: append one client's
-- pending online/offline events to the event stream and publish them on
-- the event channel, a sharded channel in the stream's slot. Several
-- parties can emit the same client's pending events (its node, another
-- node it moved to, a reaper): each event carries the client's event
-- number, and one at or below the client's mark, the number last
-- emitted, is skipped. Every party's list holds every event not yet taken
-- off the list, oldest first, and events leave the list only after they
-- were emitted, so each event is appended once and in the order the
-- client's slot decided them.
-- KEYS: 1 event stream, 2 the client's mark (in the stream's slot)
-- ARGV: 1 event channel, 2 stream max length, 3 mark ttl ms, 4.. the
--       pending events, "<number> <json>", oldest first
-- Returns the number of events appended.
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local n = 0
for i = 4, #ARGV do
  local num, ev = string.match(ARGV[i], '^(%d+) (.*)$')
  num = tonumber(num)
  if num and num > last then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ev)
    redis.call('SPUBLISH', ARGV[1], ev)
    last = num
    n = n + 1
  end
end
if n > 0 then redis.call('SET', KEYS[2], last, 'PX', ARGV[3]) end
return n
