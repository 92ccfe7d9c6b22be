-- A client's first socket on a node, on a Cluster (token.lua,
-- event_json.lua and cluster/presence.lua are prepended): connect.lua in
-- the slot of the client the URL names, where its tokens live too. The
-- online event is left pending (cluster/presence.lua).
-- KEYS: 1 token key, 2 bucket hash, 3 client nodes set, 4 client chans
--       set, 5 pending event list, 6 event counter (all in the client's
--       bucket slot)
-- ARGV: 1 node, 2 the client the URL names, 3 online event JSON before
--       its meta, 4 the rest of it, 5 most meta bytes
-- Returns {0} and {2} as consume_token.lua; {3, record}: consumed, no
-- presence written (the record names another client, or a meta this
-- script does not vouch for); {1, record, mark_online's reply...}.
local code, v, rec = take_token(KEYS[1], ARGV[1])
if code ~= 1 then return {code} end
local meta = vouch_meta(rec, tonumber(ARGV[5]))
if rec.client ~= ARGV[2] or meta == nil then
  redis.call('DEL', KEYS[1])
  return {3, v}
end
local out = mark_online(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[2], ARGV[1], online_event(ARGV[3], meta, ARGV[4]))
-- After mark_online's first write, as in connect.lua: the token's DEL
-- needs no memory.
redis.call('DEL', KEYS[1])
table.insert(out, 1, v)
table.insert(out, 1, 1)
return out
