-- Remove a client from channels.
-- KEYS: 1 client chans set, 2 channel index set, 3 online hash.
-- ARGV: 1 client, 2 channel member key prefix, 3.. channel names.
-- Returns the node the client is online on, or nil.
for i = 3, #ARGV do
  local k = ARGV[2] .. ARGV[i]
  redis.call('SREM', k, ARGV[1])
  redis.call('SREM', KEYS[1], ARGV[i])
  if redis.call('SCARD', k) == 0 then redis.call('SREM', KEYS[2], ARGV[i]) end
end
return redis.call('HGET', KEYS[3], ARGV[1])
