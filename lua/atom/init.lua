-- atom: the public module of atomlua (SPEC §2–§7), assembled from the topic
-- modules. The same table is the global `atom` in scenarios and the result
-- of `require "atom"` (also from stock lua5.4, module mode).
local _atom = require "_atom"
local sched = require "atom.sched"
local sync = require "atom.sync"
local runner = require "atom.runner"

local atom = {
  version = _atom.version,
  sleep = sched.sleep, now = sched.now, name = sched.name,
  gather = sched.gather, race = sched.race, map = sched.map,
  timeout = sched.timeout, shield = sched.shield, go = sched.go,
  defer = sched.defer, wait_until = sched.wait_until,
  channel = sync.channel, event = sync.event, semaphore = sync.semaphore,
  test = runner.test, skip = runner.skip, run = runner.run,
  args = {},
  _stats = _atom.stats,
}

-- Topic modules load on first use, so a scenario pays only for what it
-- touches (start-up time is a benchmark): name -> {module, field}.
local lazy = {
  assert_eq = { "atom.assert", "assert_eq" },
  json = { "atom.json" }, base64 = { "atom.json", "base64" }, hex = { "atom.json", "hex" },
  spawn = { "atom.proc", "spawn" }, exec = { "atom.proc", "exec" }, sh = { "atom.proc", "sh" },
  http = { "atom.http" },
  rpc = { "atom.rpc", "rpc" }, rpc_batch = { "atom.rpc", "rpc_batch" },
  tcp = { "atom.tcp" }, wait_port = { "atom.tcp", "wait_port" }, free_port = { "atom.tcp", "free_port" },
  itf = { "atom.itf", nil, function(m) return { load = m.load, decode = m.decode } end },
  cluster = { "atom.cluster", "cluster" },
}
setmetatable(atom, { __index = function(t, k)
  local l = lazy[k]
  if not l or not package.preload[l[1]] then return nil end
  local m = require(l[1])
  local v = l[3] and l[3](m) or (l[2] and m[l[2]] or m)
  rawset(t, k, v)
  return v
end })

package.loaded.atom = atom
return atom
