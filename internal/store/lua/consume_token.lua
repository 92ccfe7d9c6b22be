-- Consume a connect token once, only on the node it was issued for
-- (token.lua is prepended).
-- KEYS[1] token key; ARGV[1] node id.
-- Returns {0} missing/expired/used, {1, record} consumed, {2} issued for another node (kept).
local code, v = take_token(KEYS[1], ARGV[1])
if code ~= 1 then return {code} end
redis.call('DEL', KEYS[1])
return {1, v}
