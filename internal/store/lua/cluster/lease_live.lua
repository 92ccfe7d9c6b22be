-- Whether a node holds a live lease (lease.lua is prepended): on a
-- Cluster a reap's offline cannot read the registry in its own script (a
-- different slot), so it asks first.
-- KEYS: 1 the node's registry key
-- Returns 1 if the lease is live, else 0.
if lease_live(KEYS[1], now_ms()) then return 1 end
return 0
