-- Publish one node message whose receivers keep history (history.lua is
-- prepended): each receiver's copy is appended to its personal stream and
-- the node message carries every copy's position, in one atomic step, so a
-- message is never published without being kept, or kept without being
-- published. The node message is either one send or a batch of sends
-- (SendMessages: one run and one PUBLISH per owning node per batch).
-- KEYS: a stream and its meta for each slot below whose size is not 0, in
--       slot order (all sends' slots, send by send).
-- ARGV: 1 node channel, 2 the batch's first line ({"v":2,"k":"batch"}), or
--       "" to publish the one send alone, 3 meta ttl ms, 4 epoch for a
--       stream that has none; then per send: its header JSON without the
--       closing brace, its frame, its echo frame ("" if none), n = number
--       of receivers (the header's "to"), then a slot per receiver and, if
--       there is an echo, one for the echo: size, ttl ms (size "0": no
--       history for it).
-- Returns every slot's position, send by send ({pos1, ..., posn, echo
-- pos} each): "<epoch>.<offset>" or "".
local now = now_ms()
local out = {}
local lines = {}
if ARGV[2] ~= '' then lines[1] = ARGV[2] end
local k = 1
local a = 5
while a <= #ARGV do
  local head, frame, echo, n = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 4
  local slots = n
  if echo ~= '' then slots = n + 1 end
  local first = #out
  for i = 1, slots do
    local size = ARGV[a]
    local p = ''
    if size ~= '0' then
      local f = frame
      if i > n then f = echo end
      local ep, off = append(KEYS[k], KEYS[k + 1], f, size, ARGV[a + 1], ARGV[4], ARGV[3], now)
      p = pos_text(ep, off)
      k = k + 2
    end
    a = a + 2
    out[first + i] = p
  end
  if n > 0 then
    local quoted = {}
    for i = 1, n do quoted[i] = '"' .. out[first + i] .. '"' end
    head = head .. ',"pos":[' .. table.concat(quoted, ',') .. ']'
  end
  if slots > n and out[first + slots] ~= '' then head = head .. ',"epos":"' .. out[first + slots] .. '"' end
  -- The send: header, frame and echo frame, one per line.
  lines[#lines + 1] = head .. '}'
  lines[#lines + 1] = frame
  if echo ~= '' then lines[#lines + 1] = echo end
end
redis.call('PUBLISH', ARGV[1], table.concat(lines, '\n'))
return out
