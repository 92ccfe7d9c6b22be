-- Read what a stream kept after an offset (history.lua is prepended),
-- starting an epoch if it has none.
-- KEYS: 1 the stream, 2 its meta
-- ARGV: 1 the offset to read after, 2 the most entries to return,
--       3 meta ttl ms, 4 epoch for a stream that has none, 5 "1" to return
--       the first ARGV[2] entries however many follow
-- Returns {epoch, last offset, now ms, off1, frame1, exp1, off2, ...}: the
-- entries after ARGV[1], oldest first; unless ARGV[5] is "1", none if more
-- than ARGV[2] were appended since (a node cannot fill that gap, so it
-- reads nothing).
local ep = epoch_of(KEYS[1], KEYS[2], ARGV[4], ARGV[3])
local top = tonumber(redis.call('HGET', KEYS[2], 'o'))
local after = tonumber(ARGV[1])
local out = {ep, string.format('%d', top), string.format('%d', now_ms())}
if top <= after or (ARGV[5] ~= '1' and top - after > tonumber(ARGV[2])) then return out end
local from = string.format('%d', after + 1) .. '-0'
for _, e in ipairs(redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[2])) do
  local f, x = nil, nil
  for i = 1, #e[2], 2 do
    if e[2][i] == 'f' then f = e[2][i + 1] elseif e[2][i] == 'x' then x = e[2][i + 1] end
  end
  out[#out + 1] = string.match(e[1], '^(%d+)')
  out[#out + 1] = f or ''
  out[#out + 1] = x or '0'
end
return out
