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

-- Topic modules are wired when they are part of this build.
local function optional(name, wire)
  if package.preload[name] then wire(require(name)) end
end
optional("atom.assert", function(m) atom.assert_eq = m.assert_eq end)
optional("atom.json", function(m)
  atom.json = m
  atom.base64, atom.hex = m.base64, m.hex
end)
optional("atom.proc", function(m)
  atom.spawn, atom.exec, atom.sh = m.spawn, m.exec, m.sh
end)
optional("atom.http", function(m) atom.http = m end)
optional("atom.rpc", function(m) atom.rpc, atom.rpc_batch = m.rpc, m.rpc_batch end)
optional("atom.tcp", function(m)
  atom.tcp = m
  atom.wait_port, atom.free_port = m.wait_port, m.free_port
end)
optional("atom.itf", function(m) atom.itf = { load = m.load, decode = m.decode } end)
optional("atom.cluster", function(m) atom.cluster = m.cluster end)

package.loaded.atom = atom
return atom
