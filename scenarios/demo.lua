-- make demo: a real three-node etcd cluster under fault injection — crash
-- the leader, watch a new one take over, restart it, pause a follower.
-- The scenario itself is scenarios/etcd_cluster.lua (one copy, no drift);
-- scenarios/seed.lua keeps SPEC §3's seed case, and
-- scenarios/http_cluster.lua is a cluster that needs nothing installed.
-- Run it: atomlua run scenarios/demo.lua
dofile(atom.dir .. "/etcd_cluster.lua")
