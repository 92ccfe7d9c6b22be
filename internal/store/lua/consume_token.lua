-- Consume a connect token once, only on the node it was issued for.
-- KEYS[1] token key; ARGV[1] node id.
-- Returns {0} missing/expired/used, {1, record} consumed, {2} issued for another node (kept).
local v = redis.call('GET', KEYS[1])
if not v then return {0} end
local ok, rec = pcall(cjson.decode, v)
if not ok or type(rec) ~= 'table' or type(rec.node) ~= 'string' then
  redis.call('DEL', KEYS[1])
  return {0}
end
if rec.node ~= ARGV[1] then return {2} end
redis.call('DEL', KEYS[1])
return {1, v}
