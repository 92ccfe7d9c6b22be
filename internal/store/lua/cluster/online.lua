-- A client's first socket opened on a node, or a node re-announcing its
-- clients, on a Cluster (cluster/presence.lua is prepended): online.lua's
-- presence in the client's bucket slot, the event left pending.
-- KEYS: 1 bucket hash, 2 client nodes set, 3 client chans set,
--       4 pending event list, 5 event counter (all in the client's bucket
--       slot)
-- ARGV: 1 client, 2 node, 3 event json
-- Returns mark_online's reply.
return mark_online(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
