-- A client's first socket on a node (token.lua is prepended): the token of
-- consume_token.lua and the presence of online.lua in one script, so that
-- such a connect costs one round trip. The node knows the client before
-- the token is read only from the URL (its client parameter), so that is
-- whose keys it passes; the record says who connects, and when it names
-- another client (or a meta this script cannot put into the event as
-- encoding/json would) the token is consumed without any presence write
-- and the node runs online.lua itself.
-- KEYS: 1 token key, 2 online hash, 3 node clients set,
--       4 client nodes set, 5 client chans set (both of the client the URL
--       names), 6 event stream
-- ARGV: 1 node, 2 the client the URL names, 3 online event JSON before
--       its meta, 4 the rest of it, 5 event channel, 6 stream max length,
--       7 most meta bytes
-- Returns {0} and {2} as consume_token.lua; {3, record}: consumed, no
-- presence written; {1, record, existed, chan...}: consumed and the client
-- marked online as online.lua would have (existed 1: Redis had it online
-- already, no event emitted), then its channels.

-- valid_utf8 is Go's utf8.ValidString: no overlong forms, surrogates or
-- code points past U+10FFFF.
local function valid_utf8(s)
  if not s:find('[\128-\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    else
      local len, lo, hi
      if c >= 0xC2 and c <= 0xDF then len, lo, hi = 2, 0x80, 0xBF
      elseif c == 0xE0 then len, lo, hi = 3, 0xA0, 0xBF
      elseif c == 0xED then len, lo, hi = 3, 0x80, 0x9F
      elseif c >= 0xE1 and c <= 0xEF then len, lo, hi = 3, 0x80, 0xBF
      elseif c == 0xF0 then len, lo, hi = 4, 0x90, 0xBF
      elseif c >= 0xF1 and c <= 0xF3 then len, lo, hi = 4, 0x80, 0xBF
      elseif c == 0xF4 then len, lo, hi = 4, 0x80, 0x8F
      else return false end
      if i + len - 1 > n then return false end
      local c2 = s:byte(i + 1)
      if c2 < lo or c2 > hi then return false end
      for j = i + 2, i + len - 1 do
        local cj = s:byte(j)
        if cj < 0x80 or cj > 0xBF then return false end
      end
      i = i + len
    end
  end
  return true
end

-- json_string encodes valid UTF-8 as Go's encoding/json does (HTML-safe),
-- so that the event is byte for byte the one the node would have built.
local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
  ['<'] = '\\u003c', ['>'] = '\\u003e', ['&'] = '\\u0026'}
local function json_string(s)
  s = s:gsub('[%z\1-\31"\\<>&]', function(c) return escapes[c] or string.format('\\u%04x', c:byte()) end)
  s = s:gsub('\226\128\168', '\\u2028')
  s = s:gsub('\226\128\169', '\\u2029')
  return '"' .. s .. '"'
end

local code, v, rec = take_token(KEYS[1], ARGV[1])
if code ~= 1 then return {code} end
local meta = rec.meta
if meta == nil or meta == cjson.null then meta = '' end
if rec.client ~= ARGV[2] or type(meta) ~= 'string' or #meta > tonumber(ARGV[7]) or not valid_utf8(meta) then
  redis.call('DEL', KEYS[1])
  return {3, v}
end
-- The HSET is the script's first write: at maxmemory Redis refuses it and
-- stops the script with nothing written and the token kept, as online.lua
-- failed before the merge. (After a first write Redis lets a script finish
-- past maxmemory; the token's DEL, which needs no memory, therefore comes
-- after it.)
local prev = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[1])
local out = {1, v, 0}
if prev then
  out[3] = 1
else
  -- The event's JSON (a payload, not a key): its head, the record's meta
  -- if any, its tail.
  local parts = {ARGV[3]}
  if meta ~= '' then parts[#parts + 1] = ',"meta":' .. json_string(meta) end
  parts[#parts + 1] = ARGV[4]
  local ev = table.concat(parts)
  redis.call('PUBLISH', ARGV[5], ev)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'e', ev)
end
for _, ch in ipairs(redis.call('SMEMBERS', KEYS[5])) do out[#out + 1] = ch end
return out
