-- atom: the public module of atomlua (SPEC §2–§7), assembled from the topic
-- modules. The same table is the global `atom` in scenarios and the result
-- of `require "atom"` (also from stock lua5.4, module mode).
local _atom = require "_atom"
-- How every task ends (src/sched.c's trampoline); atom.sched and atom.sync
-- are topic modules loaded on first use, below.
require "atom.task"
local errors = require "atom.errors"
local state = require "atom.state"

-- {==== for libraries: what cluster.lua, trace.lua and users' own modules
-- build on (a library module requires "atom" and nothing below it) ====

--- A new error value of `kind` (SPEC §3 rule 5) whose tostring starts with the
--- calling script's file:line; raise it with error(e).
---@param kind string
---@param message string
---@param fields table|nil extra fields (cause, code, ...; where = false: no position)
local function new_error(kind, message, fields)
  errors.checktype(1, "error", kind, "string")
  errors.checktype(2, "error", message, "string")
  errors.checktype(3, "error", fields, "table", true)
  return errors.new(kind, message, fields)
end

--- "file:line" of the innermost script frame (atom's own code skipped).
local function where(level)
  errors.checktype(1, "where", level, "number", true)
  local w = errors.where((level or 1) + 1) -- not a tail call: it would move the levels
  return w
end

--- This scenario file's directory in the run directory (absolute), created
--- on first use; nil outside a run.
local function run_dir()
  local dir = state.file_dir or state.run_dir
  if dir and not state._dir_made then
    _atom.mkdir_p(dir)
    state._dir_made = true
  end
  return dir
end

--- mkdir -p: create `path` and its parents; returns path.
local function mkdir(path)
  errors.checktype(1, "mkdir", path, "string")
  _atom.mkdir_p(path)
  return path
end

--- Add an event of `type` to the event log (--events), with `fields`.
local function emit(type_, fields)
  errors.checktype(1, "emit", type_, "string")
  errors.checktype(2, "emit", fields, "table", true)
  require("atom.events").emit(type_, fields)
end

--- The task that owns what the current task spawns (SPEC §4): the nearest
--- test among it and its ancestors, else the root.
local function owner()
  _atom.checkpoint("owner")
  return _atom.owner()
end

--- A signal's number ("TERM", "SIGTERM" or 15), or nil when unknown.
local function signum(sig)
  errors.checktype(1, "signum", sig, "string|number")
  return _atom.proc_signum(sig)
end

--- Check a history (a list of events as h:ops() gives them) for
--- linearizability on a worker thread; a plain result table (SPEC §12, and
--- docs/histories.md "For library writers"). Waits: a cancellation point.
local function linearizable(events, opts)
  errors.checktype(1, "linearizable", events, "table")
  errors.checktype(2, "linearizable", opts, "table")
  errors.checktype(2, "linearizable", opts.timeout, "number", true)
  return _atom.linearizable(events, opts)
end

-- }====

local atom = {
  version = _atom.version,
  sleep = _atom.sleep, now = _atom.now,
  args = {},
  error = new_error, is_error = errors.is, where = where, checkpoint = function(what)
    errors.checktype(1, "checkpoint", what, "string", true)
    _atom.checkpoint(what or "checkpoint")
  end,
  work = _atom.work, linearizable = linearizable,
  run_dir = run_dir, mkdir = mkdir, emit = emit, owner = owner, signum = signum,
  isolated = _atom.isolated(),
  -- tasks, handles, refs and timers from the scheduler; children from processes
  _stats = function()
    local s = _atom.stats()
    s.children = _atom.proc_children()
    return s
  end,
}

-- Topic modules load on first use, so a scenario pays only for what it
-- touches (start-up time is a benchmark): name -> {module, field}.
local lazy = {
  -- structured concurrency and synchronisation
  name = { "atom.sched", "name" }, gather = { "atom.sched", "gather" }, race = { "atom.sched", "race" },
  map = { "atom.sched", "map" }, timeout = { "atom.sched", "timeout" }, shield = { "atom.sched", "shield" },
  go = { "atom.sched", "go" }, defer = { "atom.sched", "defer" }, wait_until = { "atom.sched", "wait_until" },
  channel = { "atom.sync", "channel" }, event = { "atom.sync", "event" },
  semaphore = { "atom.sync", "semaphore" },
  -- tests (the runner, one layer up, loaded when a scenario or atom.run needs it)
  test = { "atom.runner", "test" }, skip = { "atom.runner", "skip" }, run = { "atom.runner", "run" },
  assert_eq = { "atom.assert", "assert_eq" }, repr = { "atom.assert", "render" },
  json = { "atom.json" }, base64 = { "atom.json", "base64" }, hex = { "atom.json", "hex" },
  spawn = { "atom.proc", "spawn" }, exec = { "atom.proc", "exec" }, sh = { "atom.proc", "sh" },
  http = { "atom.http" },
  -- atom.rpc is callable (JSON-RPC over HTTP) and has .connect (over a WebSocket)
  rpc = { "atom.rpc", nil, function(m)
    local rpc = m.rpc
    return setmetatable({ connect = function(url, opts) return require("atom.wsrpc").connect(url, opts) end },
      { __call = function(_, url, method, params, opts) return rpc(url, method, params, opts) end })
  end },
  rpc_batch = { "atom.rpc", "rpc_batch" },
  ws = { "atom.ws" },
  tcp = { "atom.tcp" }, wait_port = { "atom.tcp", "wait_port" }, free_port = { "atom.tcp", "free_port" },
  itf = { "atom.itf", nil, function(m) return { load = m.load, decode = m.decode } end },
  cluster = { "atom.cluster", "cluster" },
  host = { "atom.host", "host" },
  net = { "atom.net", nil, function(m) return { host = m.host, drop = m.drop, heal = m.heal } end },
  proxy = { "atom.net", "proxy" },
  history = { "atom.history" },
  grpc = { "atom.grpc" },
}
setmetatable(atom, { __index = function(t, k)
  local l = lazy[k]
  if not l or not package.preload[l[1]] then return nil end
  local m = require(l[1])
  -- Fields of one module are bound together: atom.test and atom.run must
  -- share the runner's counts even if its module is loaded again later.
  for k2, l2 in pairs(lazy) do
    if l2[1] == l[1] and rawget(t, k2) == nil then
      rawset(t, k2, l2[3] and l2[3](m) or (l2[2] and m[l2[2]] or m))
    end
  end
  return rawget(t, k)
end })

-- Lua's os.execute and io.popen wait as tasks do inside tasks (SPEC §15).
-- atom.blocking is loaded at the first call of one of them (most runs make
-- none; loading it is a tenth of an empty run's start-up): until then
-- io.type and io.close are Lua's own, as no file of ours exists yet. The
-- stubs tail-call, so argument errors name the caller's line as before.
do
  local reg = debug.getregistry()
  local orig = reg["atom.blocking.orig"]
  if not orig then
    orig = { execute = os.execute, popen = io.popen, type = io.type, close = io.close }
    reg["atom.blocking.orig"] = orig
  end
  local blocking
  local function load()
    if not blocking then
      blocking = require("atom.blocking")
      blocking.install()
    end
    return blocking
  end
  local otype, oclose = orig.type, orig.close
  -- luacheck: ignore 122
  os.execute = function(...) return load().execute(...) end
  io.popen = function(...) return load().popen(...) end
  io.type = function(...)
    if blocking then return blocking.type(...) end
    return otype(...)
  end
  io.close = function(...)
    if blocking then return blocking.close(...) end
    return oclose(...)
  end
end

package.loaded.atom = atom
return atom
