-- atom.cluster: SPEC §7 — N nodes on free ports with their own directories,
-- started together, and faults injected on purpose (kill, pause, restart),
-- plus SPEC §11's network faults (partition, isolate, block) on atom.net.
-- A library on the public `atom` API only (as a user's own module would be):
-- process groups, reaping, owners and the no-orphans promise are atom's.
local atom = require "atom"

local M = {}

local format, concat = string.format, table.concat

local function raise(kind, message, fields) error(atom.error(kind, message, fields), 0) end
local function argerror(n, fname, msg) raise("usage", format("bad argument #%d to '%s' (%s)", n, fname, msg)) end

local READY_TIMEOUT = 30
local TAIL_LINES = 20

local Cluster = {}
local mt = { __name = "atom.cluster", __index = Cluster }

-- {==== helpers ====

local function check_self(self, fname)
  if getmetatable(self) ~= mt then
    raise("usage", format("bad argument #0 to '%s' (cluster expected; use c:%s)", fname, fname))
  end
end

-- A number is the timeout; a table may carry `timeout`.
local function opt_timeout(opts, n, fname, default)
  if opts == nil then return default end
  if type(opts) == "number" then
    if not (opts >= 0) then argerror(n, fname, "timeout must not be negative") end
    return opts
  end
  if type(opts) ~= "table" then argerror(n, fname, "number or table expected, got " .. type(opts)) end
  local t = opts.timeout
  if t ~= nil and (type(t) ~= "number" or not (t >= 0)) then
    argerror(n, fname, "field 'timeout' must be a non-negative number")
  end
  if t == nil then return default end
  return t
end

-- Node i (an index, or a node of this cluster) for argument n of fname.
local function node_arg(self, i, n, fname)
  if type(i) == "table" then
    for _, node in ipairs(self.nodes) do if node == i then return node end end
    argerror(n, fname, "node of this cluster expected")
  end
  if math.type(i) ~= "integer" then
    argerror(n, fname, "node index expected, got " .. (i == nil and "no value" or math.type(i) or type(i)))
  end
  local node = self.nodes[i]
  if not node then argerror(n, fname, format("node index out of range (1..%d)", #self.nodes)) end
  return node
end

-- "last 20 lines of etcd2: | ..." and the log's path, as process errors quote them.
local function tail_block(p) return p:tail_text(TAIL_LINES) end

local function status_text(code, sig)
  if code then return "code " .. code end
  return "signal " .. tostring(sig)
end

-- Wrap a node's failure so it names the cluster and the node; user errors
-- (raised by cmd or ready) and cancellations pass through unchanged.
-- `at` = {where, task} of the c:start / c:restart call, which the error
-- reports rather than the helper task the node was waited for in.
local function node_failure(c, node, e, verb, at)
  if not atom.is_error(e) or e.kind == "cancelled" or e.kind == "usage" or e.node then return e end
  return atom.error(e.kind, format("cluster %s: node %s failed to %s: %s", c.name, node.name, verb, e.message),
    { node = node.name, cause = e, where = at.where or false, task = at.task })
end

local function call_site() return { where = atom.where(2), task = atom.name() } end

local function exited_error(node, p, when)
  local _, code, sig = p:status()
  return atom.error("process", format("node %s (pid %d) exited with %s %s\n%s", node.name, p.pid,
    status_text(code, sig), when, tail_block(p)), { node = node.name, code = code, signal = sig })
end

-- A `fault` event (SPEC §11) for this cluster.
local function fault(c, action, detail)
  atom.emit("fault", { action = action, detail = detail, cluster = c.name })
end

-- }====

-- {==== spawning for the owner ====
-- SPEC §4: a cluster's processes belong to the owner at c:start(), also when
-- c:restart(i) runs in another test: c:start() records that owner and every
-- (re)start spawns for it.

-- On the node's host (atom.host, SPEC §14) when the cluster has hosts.
local function spawn(node, spec)
  if node._h then return node._h:spawn(spec) end
  return atom.spawn(spec)
end

local function spawn_for_owner(c, node, spec)
  spec.owner = c._owner -- nil: never started, the current owner gets it
  node.proc = spawn(node, spec)
end

local function start_owner(c) c._owner = atom.owner() end
local function stop_owner(c) c._owner = nil end

-- }====

-- {==== starting one node ====

-- The spawn spec for node: cmd's table plus the cluster's fields (SPEC §7).
-- critical stays off until the node is ready: an exit while starting is the
-- start's error, raised to its caller, not the owner's failure.
local function node_spec(c, node)
  local got = c._cmd(node, c)
  if type(got) ~= "table" then
    raise("usage", format("cluster %s: cmd must return a spawn spec (a table) for node %s, got %s",
      c.name, node.name, type(got)))
  end
  local spec = {}
  for k, v in pairs(got) do spec[k] = v end
  spec.name, spec.critical = node.name, false
  spec.cwd = got.cwd or c._cwd or node.dir
  if node.net then spec.net = node.net end
  if c._env or got.env then
    local env = {}
    for k, v in pairs(c._env or {}) do env[k] = v end
    for k, v in pairs(got.env or {}) do env[k] = v end
    spec.env = env
  end
  return spec
end

-- Wait until node is ready, failing at once when its process exits.
local function wait_ready(c, node, timeout)
  local p, ready = node.proc, c._ready
  if type(ready) == "string" then
    p:expect(ready, timeout)
  elseif ready then
    local exited = false
    local ok, e = pcall(atom.wait_until, function()
      if not p:is_running() then exited = true; return true end
      return ready(node, c)
    end, timeout)
    if not ok then
      if atom.is_error(e, "timeout") then
        raise("timeout", format("%s not ready: %s\n%s", node.name, e.message, tail_block(p)),
          { last_error = e.last_error, last_value = e.last_value })
      end
      error(e, 0)
    end
    if exited then error(exited_error(node, p, "before it was ready"), 0) end
  end
end

-- Spawn node (for the owner when `for_owner`) and wait until it is ready.
local function start_node(c, node, timeout, for_owner)
  local spec = node_spec(c, node)
  node._state = "starting"
  if for_owner then spawn_for_owner(c, node, spec) else node.proc = spawn(node, spec) end
  wait_ready(c, node, timeout)
end

local function arm(node)
  node._state = "up"
  node.proc.critical = true
  atom.emit("process_ready", { name = node.name, pid = node.proc.pid })
end

-- Stop every node at once (p:stop() sends SIGCONT too, so paused nodes go).
local function stop_all(c)
  local fns = {}
  for _, node in ipairs(c.nodes) do
    local p = node.proc
    node._state = "down"
    if p then fns[#fns + 1] = function() p:stop() end end
  end
  atom.gather(fns)
  stop_owner(c)
end

-- }====

-- {==== the cluster's methods ====

--- Spawn every node at once and wait until all are ready. One node failing
--- stops the others and raises an error naming it and quoting its log tail.
---@param opts number|{timeout: number?}|nil readiness timeout (default: ready_timeout)
function Cluster:start(opts)
  check_self(self, "start")
  local timeout = opt_timeout(opts, 1, "start", self._ready_timeout)
  local at = call_site()
  atom.checkpoint("c:start")
  for _, node in ipairs(self.nodes) do
    if node.proc and node.proc:is_running() then
      raise("usage", format("cluster %s is running (node %s); c:stop() it first", self.name, node.name))
    end
  end
  start_owner(self)
  local all, up = atom.event(), 0
  local fns = {}
  for i, node in ipairs(self.nodes) do
    fns[i] = function()
      local ok, e = pcall(start_node, self, node, timeout, false)
      if not ok then error(node_failure(self, node, e, "start", at), 0) end
      up = up + 1
      if up == #self.nodes then all:set() end
      -- Still part of the start: an exit before the others are ready fails it.
      if atom.race(function() all:wait() end, function() node.proc:wait() end) == 2 then
        error(node_failure(self, node, exited_error(node, node.proc, "while the cluster started"), "start", at), 0)
      end
    end
  end
  local ok, e = pcall(atom.gather, fns)
  for _, node in ipairs(self.nodes) do -- an exit in the very last moment
    if ok and not node.proc:is_running() then
      ok, e = false, node_failure(self, node, exited_error(node, node.proc, "while the cluster started"), "start", at)
    end
  end
  if not ok then
    atom.shield(stop_all, self)
    error(e, 0)
  end
  for _, node in ipairs(self.nodes) do arm(node) end
end

--- Stop all nodes at once, each with its grace; paused nodes are resumed.
function Cluster:stop()
  check_self(self, "stop")
  stop_all(self)
end

-- <close>: c:stop(), shielded so it may wait while the task is cancelled
-- (SPEC §3 rule 4: the close of atom's own objects is a cleanup).
mt.__close = function(self) atom.shield(stop_all, self) end
mt.__tostring = function(self) return format("cluster %s (%d nodes)", self.name, #self.nodes) end

--- Signal node i's group and return once the node has exited.
---@param i integer|table node index or node
---@param sig string|integer|nil "TERM" (default), "KILL" for a crash, ...
---@param opts number|{timeout: number?}|nil no timeout by default
---@return integer|nil code, string|nil signal
function Cluster:kill(i, sig, opts)
  check_self(self, "kill")
  local node = node_arg(self, i, 1, "kill")
  if sig ~= nil and type(sig) ~= "string" and math.type(sig) ~= "integer" then
    argerror(2, "kill", "string or integer expected, got " .. type(sig))
  end
  local num = atom.signum(sig or "TERM")
  if not num then argerror(2, "kill", format("unknown signal '%s'", tostring(sig))) end
  local timeout = opt_timeout(opts, 3, "kill", nil)
  atom.checkpoint("c:kill")
  local p = node.proc
  if not p then raise("usage", format("c:kill: node %s was never started", node.name)) end
  fault(self, "kill", { node = node.id, signal = type(sig) == "string" and sig or num })
  local paused = node._state == "paused"
  node._state = "down"
  p:kill(num)                      -- disarms critical
  if paused then p:resume() end    -- a stopped process must run to act on the signal
  return p:wait(timeout)
end

--- Stop node i if it runs, spawn it again with the same ports, directory and
--- log, and wait until it is ready.
---@param i integer|table node index or node
---@param opts number|{timeout: number?}|nil readiness timeout (default: ready_timeout)
function Cluster:restart(i, opts)
  check_self(self, "restart")
  local node = node_arg(self, i, 1, "restart")
  local timeout = opt_timeout(opts, 2, "restart", self._ready_timeout)
  local at = call_site()
  atom.checkpoint("c:restart")
  fault(self, "restart", { node = node.id })
  node._state = "down"
  if node.proc then node.proc:stop() end
  local ok, e = pcall(start_node, self, node, timeout, true)
  if not ok then
    node._state = "down"
    local p = node.proc
    if p and p:is_running() then atom.shield(p.stop, p) end
    error(node_failure(self, node, e, "restart", at), 0)
  end
  arm(node)
end

local function running_node(self, i, fname)
  local node = node_arg(self, i, 1, fname)
  if not (node.proc and node.proc:is_running()) then
    raise("usage", format("c:%s: node %s is not running", fname, node.name))
  end
  return node
end

--- SIGSTOP to node i's group; the node is not critical until c:resume(i).
---@param i integer|table node index or node
function Cluster:pause(i)
  check_self(self, "pause")
  local node = running_node(self, i, "pause")
  node.proc.critical = false
  node._state = "paused"
  node.proc:pause()
  fault(self, "pause", { node = node.id })
end

--- SIGCONT to node i's group; a node paused by c:pause is critical again.
---@param i integer|table node index or node
function Cluster:resume(i)
  check_self(self, "resume")
  local node = running_node(self, i, "resume")
  node.proc:resume()
  if node._state == "paused" then arm(node) end
  fault(self, "resume", { node = node.id })
end

-- }====

-- {==== network faults (SPEC §11), on atom.net only ====
-- Every cut is a drop rule of the calling task: a partition or block made in
-- a test goes away when that test ends, as every rule does.

local function need_net(self, fname)
  if not atom.isolated then
    raise("usage", format("c:%s needs an isolated run: atomlua run --isolate (or ATOMLUA_ISOLATE=1)", fname))
  end
end

-- Replace the current partition with drops between every pair of nodes in
-- different groups (both ways), in one step.
local function set_partition(self, groups)
  local drops = {}
  for gi, g in ipairs(groups) do
    for gj, h in ipairs(groups) do
      if gi ~= gj then
        for _, a in ipairs(g) do
          for _, b in ipairs(h) do drops[#drops + 1] = { from = a.net, to = b.net } end
        end
      end
    end
  end
  local old = self._partition
  self._partition = nil
  if old then old:remove() end
  if #drops > 0 then self._partition = atom.net.drop(drops) end
end

local function ids(group)
  local out = {}
  for i, node in ipairs(group) do out[i] = node.id end
  return out
end

--- Split the nodes into groups that cannot reach each other (every node in
--- exactly one group); replaces the previous partition. The scenario still
--- reaches every node.
---@param ... integer[] groups of node indexes (or nodes)
function Cluster:partition(...)
  check_self(self, "partition")
  local n = select("#", ...)
  if n == 0 then argerror(1, "partition", "at least one group expected") end
  local seen, groups = {}, {}
  for gi = 1, n do
    local g = select(gi, ...)
    if type(g) ~= "table" then argerror(gi, "partition", "group (a list of node indexes) expected, got " .. type(g)) end
    local group = {}
    for k, i in ipairs(g) do
      local node = node_arg(self, i, gi, "partition")
      if seen[node] then
        raise("usage", format("c:partition: node %d is in two groups (%d and %d)", node.id, seen[node], gi))
      end
      seen[node] = gi
      group[k] = node
    end
    groups[gi] = group
  end
  for _, node in ipairs(self.nodes) do
    if not seen[node] then raise("usage", format("c:partition: node %d is in no group", node.id)) end
  end
  need_net(self, "partition")
  set_partition(self, groups)
  local detail = {}
  for gi, g in ipairs(groups) do detail[gi] = ids(g) end
  fault(self, "partition", { groups = detail })
end

--- Cut node i off from every other node (a partition {i} | the rest).
---@param i integer|table node index or node
function Cluster:isolate(i)
  check_self(self, "isolate")
  local node = node_arg(self, i, 1, "isolate")
  need_net(self, "isolate")
  local rest = {}
  for _, other in ipairs(self.nodes) do if other ~= node then rest[#rest + 1] = other end end
  set_partition(self, { { node }, rest })
  fault(self, "isolate", { node = node.id })
end

--- One way: node i's packets to node j vanish (j's still reach i).
function Cluster:block(i, j)
  check_self(self, "block")
  local a, b = node_arg(self, i, 1, "block"), node_arg(self, j, 2, "block")
  if a == b then argerror(2, "block", "a node cannot block itself") end
  need_net(self, "block")
  local key = a.id .. ">" .. b.id
  if not self._blocks[key] then self._blocks[key] = atom.net.drop{ from = a.net, to = b.net } end
  fault(self, "block", { from = a.id, to = b.id })
end

--- Undo c:block(i, j); does nothing when it is not in force.
function Cluster:unblock(i, j)
  check_self(self, "unblock")
  local a, b = node_arg(self, i, 1, "unblock"), node_arg(self, j, 2, "unblock")
  need_net(self, "unblock")
  local key = a.id .. ">" .. b.id
  local r = self._blocks[key]
  self._blocks[key] = nil
  if r then r:remove() end
  fault(self, "unblock", { from = a.id, to = b.id })
end

--- Remove this cluster's partition and blocks.
function Cluster:heal()
  check_self(self, "heal")
  need_net(self, "heal")
  local old, blocks = self._partition, self._blocks
  self._partition, self._blocks = nil, {}
  if old then old:remove() end
  for _, r in pairs(blocks) do r:remove() end
  fault(self, "heal", {})
end

-- }====

-- {==== atom.cluster ====

local fields = {
  size = "number", name = "string", ports = "table", cmd = "function", ready = "string|function",
  ready_timeout = "number", env = "table", cwd = "string", hosts = "table",
}

local used_dirs = {} -- node directories handed out in this Lua state

local function bad(msg) argerror(1, "cluster", msg) end

local function check_opts(o)
  if type(o) ~= "table" then bad("table expected, got " .. (o == nil and "no value" or type(o))) end
  for k, v in pairs(o) do
    local want = type(k) == "string" and fields[k]
    if not want then bad(format("unknown field '%s'", tostring(k))) end
    if not want:find(type(v), 1, true) then
      bad(format("field '%s' must be a %s, got %s", k, (want:gsub("|", " or ")), type(v)))
    end
  end
  if math.type(o.size) ~= "integer" or o.size < 1 then bad("field 'size' must be an integer >= 1") end
  if not o.cmd then bad("field 'cmd' (a function returning a spawn spec) is required") end
  if o.name and not o.name:find("^[%w._-]+$") then bad("field 'name' must match [A-Za-z0-9._-]+") end
  -- `not (x >= 0)` also rejects NaN
  if o.ready_timeout and not (o.ready_timeout >= 0) then bad("field 'ready_timeout' must not be negative") end
  if type(o.ready) == "string" then
    local ok, msg = pcall(string.find, "", o.ready)
    if not ok then bad("field 'ready': " .. tostring(msg):gsub("^.-:%d+: ", "")) end
  end
  local seen = {}
  for i, pn in ipairs(o.ports or {}) do
    if type(pn) ~= "string" or seen[pn] then bad(format("ports[%d] must be a new port name", i)) end
    seen[pn] = true
  end
  for i, h in ipairs(o.hosts or {}) do
    if type(h) ~= "table" or type(h.spawn) ~= "function" or type(h.free_port) ~= "function" then
      bad(format("hosts[%d] must be a host (from atom.host)", i))
    end
  end
  if o.hosts and #o.hosts == 0 then bad("field 'hosts' must not be empty") end
  for k, v in pairs(o.env or {}) do
    if type(k) ~= "string" or not (type(v) == "string" or type(v) == "number" or v == false) then
      bad(format("env.%s must be a string, a number or false", tostring(k)))
    end
  end
end

-- A fresh directory for node `name` under <file_dir>/nodes/.
local function node_dir(name)
  local base = atom.run_dir()
  if not base then raise("usage", "atom.cluster needs a run (a scenario file or atom.run)") end
  local dir, k = base .. "/nodes/" .. name, 1
  while used_dirs[dir] do
    k = k + 1
    dir = format("%s/nodes/%s-%d", base, name, k)
  end
  used_dirs[dir] = true
  return atom.mkdir(dir)
end

---@class atom.cluster_node
---@field id integer 1..size
---@field name string `<name><id>`
---@field ports table<string, integer> one free port per name in `ports`
---@field dir string the node's own directory in the run directory
---@field proc table|nil its process, once started
---@field host string its address: its host's in an isolated run, else "127.0.0.1"
---@field net table|nil its host (atom.net.host) in an isolated run

---@class atom.cluster_opts
---@field size integer number of nodes
---@field name string? node names are <name><id> (default "node")
---@field ports string[]? port names: each node gets one free port per name
---@field cmd fun(node: atom.cluster_node, c: table): table the spawn spec, at each (re)start
---@field ready (string|fun(node: atom.cluster_node, c: table): any)? a pattern to expect, or a poll
---@field ready_timeout number? seconds (default 30)
---@field env table? merged under each spec's env
---@field cwd string? instead of node.dir
---@field hosts table[]? node i runs on hosts[(i - 1) % #hosts + 1] (atom.host)

--- Make a cluster (nothing starts yet): ports and directories are assigned
--- now, so `cmd` can read every node's ports.
---@param opts atom.cluster_opts
---@return table cluster with c.nodes, c.name, c.size
function M.cluster(opts)
  check_opts(opts)
  local free_port = atom.free_port
  local c = setmetatable({ name = opts.name or "node", size = opts.size, nodes = {},
    _cmd = opts.cmd, _ready = opts.ready, _ready_timeout = opts.ready_timeout or READY_TIMEOUT,
    _env = opts.env, _cwd = opts.cwd, _blocks = {} }, mt)
  for id = 1, opts.size do
    local name = c.name .. id
    local ports = {}
    local h = opts.hosts and opts.hosts[(id - 1) % #opts.hosts + 1]
    for _, pn in ipairs(opts.ports or {}) do ports[pn] = h and h:free_port() or free_port() end
    local node = { id = id, name = name, ports = ports, _state = "new", _h = h }
    if h then -- its directory, ports and address are its host's (SPEC §14)
      node.dir = h.dir .. "/" .. name
      h:exec { "mkdir", "-p", node.dir }
      node.host = h.address
    else
      node.dir = node_dir(name)
      -- In an isolated run each node is a host of its own (SPEC §11).
      if atom.isolated then node.net = atom.net.host(name) end
      node.host = node.net and node.net.address or "127.0.0.1"
    end
    c.nodes[id] = node
  end
  return c
end

-- }====

return M
