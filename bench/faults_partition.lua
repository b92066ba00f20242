-- Benchmark (run with --isolate): the time c:partition and c:heal take on a
-- 5-node cluster, over N changes (default 200). Nodes need no process: a
-- partition is drop rules between their hosts. Prints RESULT lines.
local n = tonumber(atom.args[1]) or 200
local c = atom.cluster{ size = 5, name = "b", cmd = function() return { "true" } end }
local splits = { { { 1, 2 }, { 3, 4, 5 } }, { { 1, 3, 5 }, { 2, 4 } }, { { 1 }, { 2, 3, 4, 5 } },
  { { 1, 2 }, { 3 }, { 4, 5 } } }

local function stats(t)
  table.sort(t)
  local function q(p) return t[math.max(1, math.ceil(p * #t))] * 1000 end
  return q(0.5), q(0.99), t[#t] * 1000
end

local apply, heal = {}, {}
for i = 1, n do
  local s = splits[(i - 1) % #splits + 1]
  local t0 = atom.now()
  c:partition(table.unpack(s))
  apply[#apply + 1] = atom.now() - t0
  t0 = atom.now()
  c:heal()
  heal[#heal + 1] = atom.now() - t0
end
-- host set-up: one host, made and removed
local mk = {}
for i = 1, 50 do
  local t0 = atom.now()
  local h = atom.net.host()
  mk[#mk + 1] = atom.now() - t0
  h:close()
end
print(("RESULT partition_apply_ms median=%.3f p99=%.3f max=%.3f"):format(stats(apply)))
print(("RESULT partition_heal_ms median=%.3f p99=%.3f max=%.3f"):format(stats(heal)))
print(("RESULT host_setup_ms median=%.3f p99=%.3f max=%.3f"):format(stats(mk)))
