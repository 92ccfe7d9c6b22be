-- Keep one copy of a kept send in a receiver's personal stream, on a
-- Cluster (history.lua is prepended): what send_kept.lua appends, for one
-- stream per run, since receivers' streams are in different slots. The caller
-- publishes the node message with the positions after every append.
-- KEYS: 1 the stream, 2 its meta
-- ARGV: 1 frame, 2 size, 3 ttl ms, 4 epoch for a stream that has none,
--       5 meta ttl ms
-- Returns "<epoch>.<offset>".
local ep, off = append(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], now_ms())
return pos_text(ep, off)
