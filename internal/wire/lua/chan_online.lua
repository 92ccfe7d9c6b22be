-- Online member count per channel. KEYS: 1 online hash.
-- ARGV: 1 channel member key prefix, 2.. channel names. Returns one count per name.
local out = {}
for i = 2, #ARGV do
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', ARGV[1] .. ARGV[i])) do
    if redis.call('HEXISTS', KEYS[1], id) == 1 then n = n + 1 end
  end
  out[#out + 1] = n
end
return out
