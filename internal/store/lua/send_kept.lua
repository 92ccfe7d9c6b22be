-- Publish one node message whose receivers keep history (history.lua is
-- prepended): each receiver's copy is appended to its personal stream and
-- the node message carries every copy's position, in one atomic step, so a
-- message is never published without being kept, or kept without being
-- published.
-- KEYS: a stream and its meta for each slot below whose size is not 0, in
--       slot order.
-- ARGV: 1 node channel, 2 node message header JSON without its closing
--       brace, 3 frame, 4 echo frame ("" if none), 5 meta ttl ms, 6 epoch
--       for a stream that has none, 7 n = number of receivers (the
--       header's "to"), then a slot per receiver and, if there is an echo,
--       one for the echo: size, ttl ms (size "0": no history for it).
-- Returns {pos1, ..., posn, echo pos}: "<epoch>.<offset>" or "" per slot.
local now = now_ms()
local n = tonumber(ARGV[7])
local slots = n
if ARGV[4] ~= '' then slots = n + 1 end
local out = {}
local k = 1
for i = 1, slots do
  local size = ARGV[6 + 2 * i]
  local p = ''
  if size ~= '0' then
    local frame = ARGV[3]
    if i > n then frame = ARGV[4] end
    local ep, off = append(KEYS[k], KEYS[k + 1], frame, size, ARGV[7 + 2 * i], ARGV[6], ARGV[5], now)
    p = pos_text(ep, off)
    k = k + 2
  end
  out[i] = p
end
local head = ARGV[2]
if n > 0 then
  local quoted = {}
  for i = 1, n do quoted[i] = '"' .. out[i] .. '"' end
  head = head .. ',"pos":[' .. table.concat(quoted, ',') .. ']'
end
if slots > n and out[slots] ~= '' then head = head .. ',"epos":"' .. out[slots] .. '"' end
-- The node message: header, frame and echo frame, one per line.
local lines = {head .. '}', ARGV[3]}
if ARGV[4] ~= '' then lines[3] = ARGV[4] end
redis.call('PUBLISH', ARGV[1], table.concat(lines, '\n'))
return out
