-- Remove a client from channels.
-- KEYS: 1 client chans set, 2 channel index set, 3 online hash,
--       4.. one channel member set per name in ARGV[2..].
-- ARGV: 1 client, 2.. channel names, in the order of KEYS[4..].
-- Returns the node the client is online on, or nil.
for i = 2, #ARGV do
  redis.call('SREM', KEYS[i + 2], ARGV[1])
  redis.call('SREM', KEYS[1], ARGV[i])
  if redis.call('SCARD', KEYS[i + 2]) == 0 then redis.call('SREM', KEYS[2], ARGV[i]) end
end
return redis.call('HGET', KEYS[3], ARGV[1])
