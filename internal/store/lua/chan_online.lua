-- Online member count per channel.
-- KEYS: 1 online hash, 2.. one channel member set per channel.
-- Returns one count per channel member set, in order.
local out = {}
for i = 2, #KEYS do
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    if redis.call('HEXISTS', KEYS[1], id) == 1 then n = n + 1 end
  end
  out[#out + 1] = n
end
return out
