-- Publish a channel message that the channel keeps (history.lua is
-- prepended): appended to the channel's stream and published with its
-- position spliced in as the frame's last fields, in one atomic step.
-- KEYS: 1 the channel's stream, 2 its meta
-- ARGV: 1 the channel's topic, 2 frame (a JSON object), 3 size, 4 ttl ms,
--       5 meta ttl ms, 6 epoch for a stream that has none, 7 the publish
--       command: PUBLISH, or SPUBLISH on a Cluster (the topic is then a
--       sharded channel in the stream's slot)
-- Returns "<epoch>.<offset>".
local ep, off = append(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[5], now_ms())
local o = string.format('%d', off)
redis.call(ARGV[7], ARGV[1], string.sub(ARGV[2], 1, -2) .. ',"epoch":"' .. ep .. '","offset":' .. o .. '}')
return pos_text(ep, off)
