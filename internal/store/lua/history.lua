-- Prepended to the scripts that keep or read history (store.withHistory):
-- the one definition of a history stream. A stream's meta HASH holds its
-- epoch (e) and last offset (o); entry ids are "<offset>-0" and entries
-- hold the frame (f) and when it expires (x, unix ms on this server's
-- clock). A meta without an epoch is a stream whose history is lost (or
-- never was): it starts a new epoch, and anything left of the old one is
-- deleted, so that offsets start again at 1 without clashing.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function epoch_of(stream, meta, new_epoch, meta_ttl)
  local ep = redis.call('HGET', meta, 'e')
  if not ep then
    ep = new_epoch
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', ep, 'o', 0)
  end
  redis.call('PEXPIRE', meta, meta_ttl)
  return ep
end

-- append keeps frame in the stream (at most size entries, each for ttl ms,
-- the whole stream until ttl ms after its last append) and returns its
-- epoch and offset.
local function append(stream, meta, frame, size, ttl, new_epoch, meta_ttl, now)
  local ep = epoch_of(stream, meta, new_epoch, meta_ttl)
  local off = redis.call('HINCRBY', meta, 'o', 1)
  local id = string.format('%d', off) .. '-0'
  redis.call('XADD', stream, 'MAXLEN', size, id, 'f', frame, 'x', string.format('%d', now + tonumber(ttl)))
  redis.call('PEXPIRE', stream, ttl)
  return ep, off
end

local function pos_text(ep, off)
  return ep .. '.' .. string.format('%d', off)
end
