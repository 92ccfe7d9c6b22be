-- The current position of a stream (history.lua is prepended), starting an
-- epoch if it has none.
-- KEYS: 1 the stream, 2 its meta
-- ARGV: 1 meta ttl ms, 2 epoch for a stream that has none
-- Returns "<epoch>.<offset>".
local ep = epoch_of(KEYS[1], KEYS[2], ARGV[2], ARGV[1])
return pos_text(ep, tonumber(redis.call('HGET', KEYS[2], 'o')))
