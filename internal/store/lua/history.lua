-- Prepended to the scripts that keep or read history (store.withHistory):
-- the one definition of a history stream. A stream's meta HASH holds its
-- epoch (e), its last offset (o) and the replication id of the Redis that
-- last wrote it (r); entry ids are "<offset>-0" and entries hold the frame
-- (f) and when it expires (x, unix ms on this server's clock). A meta
-- without an epoch is a stream whose history is lost (or never was): it
-- starts a new epoch, and anything left of the old one is deleted, so that
-- offsets start again at 1 without clashing.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- replid is this Redis' replication id (INFO replication, master_replid),
-- read once per script run; false where INFO has no replication section
-- (the embedded miniredis), and then streams record none.
local replid_read
local function replid()
  if replid_read == nil then
    replid_read = false
    local info = redis.pcall('INFO', 'replication')
    if type(info) == 'string' then
      -- a replication id is 40 hex digits after its field's name; plain
      -- finds, as a pattern match over the section costs more than INFO
      local function field(name)
        local at = string.find(info, name, 1, true)
        return at and string.sub(info, at + #name, at + #name + 39)
      end
      local id, prev = field('master_replid:'), field('master_replid2:')
      if id and prev then
        replid_read = {id = id, prev = prev}
      end
    end
  end
  return replid_read
end

-- epoch_of returns the stream's epoch, starting a new one if it has none.
-- A meta also records (r) the replication id of the Redis that last wrote
-- it. A Redis promoted from replica keeps its old master's id as
-- master_replid2: a stream it finds under that id was written by the master
-- it replaced, and whatever that master acknowledged last may never have
-- reached it. Its offsets would then be handed out a second time, and a
-- node holding the lost message's position would drop the new one as a
-- duplicate. So that stream starts a new epoch, as a lost one does, and its
-- readers are told recovered:false. Another id (a restart, a slot migrated
-- from another master, a stream from before r was kept) is just taken over.
local function epoch_of(stream, meta, new_epoch, meta_ttl)
  local m = redis.call('HMGET', meta, 'e', 'r')
  local ep, r = m[1], m[2]
  local rid = replid()
  if ep and rid and r == rid.prev then
    ep = false
  end
  if not ep then
    ep = new_epoch
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', ep, 'o', 0)
  end
  if rid and r ~= rid.id then
    redis.call('HSET', meta, 'r', rid.id)
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
