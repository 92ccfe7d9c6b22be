-- Prepended to the scripts that take a connect token (consume_token.lua,
-- connect.lua): the one definition of a token's check. The record must
-- decode (pcall: a malformed one must not make the script fail) to a JSON
-- object with a string "node".
-- Returns 0 when the token is missing, expired or used, or its value is
-- malformed (deleted then); 2 when it was issued for another node (kept, so
-- that the right node can still take it); 1, value, record when it was
-- issued for node: the caller deletes it.
local function take_token(key, node)
  local v = redis.call('GET', key)
  if not v then return 0 end
  local ok, rec = pcall(cjson.decode, v)
  if not ok or type(rec) ~= 'table' or type(rec.node) ~= 'string' then
    redis.call('DEL', key)
    return 0
  end
  if rec.node ~= node then return 2 end
  return 1, v, rec
end

