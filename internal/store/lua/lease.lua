-- Prepended to the scripts that read a node's lease (store.withLease): the
-- one definition of a live lease. A lease is the node's NodeInfo JSON whose
-- "exp" is the unix ms, on this server's clock, at which it lapses; one
-- written before "exp" existed lapses by its key TTL, so it is live while
-- the key exists.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function lease_live(key, now)
  local v = redis.call('GET', key)
  if not v then return false end
  local ok, info = pcall(cjson.decode, v)
  if not ok or type(info) ~= 'table' then return false end
  local exp = tonumber(info['exp'])
  return exp == nil or exp >= now
end

