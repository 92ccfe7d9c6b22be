-- Prepended to the scripts that build an online event from a token record
-- (connect.lua, cluster/connect.lua): the record's meta goes into the
-- event's JSON exactly as the node's encoding/json would put it.

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

-- online_event is the online event's JSON (a payload, not a key): its head,
-- the record's meta if any, its tail.
local function online_event(head, meta, tail)
  local parts = {head}
  if meta ~= '' then parts[#parts + 1] = ',"meta":' .. json_string(meta) end
  parts[#parts + 1] = tail
  return table.concat(parts)
end

-- vouch_meta returns the record's meta as the event will carry it ('' for
-- none), or nil when the script cannot vouch for it (not a string, too
-- long, or not valid UTF-8): the node then decodes the record itself.
local function vouch_meta(rec, max_len)
  local meta = rec.meta
  if meta == nil or meta == cjson.null then meta = '' end
  if type(meta) ~= 'string' or #meta > max_len or not valid_utf8(meta) then return nil end
  return meta
end
