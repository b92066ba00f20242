-- atom.scenario: the entry point of a scenario file's own Lua state. The
-- control state (atom.cli) calls main(cfg) through _cli.run_file; events go
-- back to it through _cli.forward (src/main.c's functions for the Face).
local _atom = require "_atom"
local _cli = require "_cli"
local events = require "atom.events"
local state = require "atom.state"
local errors = require "atom.errors"

local M = {}

-- The runner and the failure evidence load on first use: the runner with
-- the first test, the evidence with it or when a gather's first error
-- cancels the others (an empty scenario needs neither: start-up time is a
-- benchmark). Until then no test runs, none was abandoned, and no evidence
-- exists. The first runner loaded is the one atom.test uses.
local runner, evidence
local configure_runner = function() end
local function load_evidence()
  evidence = evidence or require "atom.report.evidence"
  return evidence
end
state.on_load["atom.runner"] = function(m)
  if runner then return end
  runner = m
  load_evidence()
  configure_runner(m)
end
state.on_load["atom.sched"] = function(m)
  m.on_unwind = function(prefix) return load_evidence().note_cancelling(prefix) end
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

-- Directories handed to scripts are absolute: nodes run with cwd = node.dir,
-- where a relative `node.dir .. "/data"` would point one level deeper.
local function absolute(path)
  if path == nil or path:sub(1, 1) == "/" then return path end
  local cwd = assert(_atom.proc_cwd())
  path = path:gsub("^%./", ""):gsub("/%.$", "")
  if path == "." or path == "" then return cwd end
  return cwd .. "/" .. path
end

-- The live status line (SPEC §1): src/main.c calls M.tick about once a
-- second while this file runs on a terminal; the console in the control
-- state draws it. Scenario output must then pass through the console too,
-- so it can clear the line first: print and io.write are routed there.
local function start_live()
  local forward, concat, select, tostring = _cli.forward, table.concat, select, tostring
  _G.print = function(...)
    local n, parts = select("#", ...), {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    forward({ type = "_output", text = concat(parts, "\t") .. "\n" })
  end
  local write = io.write
  io.write = function(...) -- luacheck: ignore 122
    if io.output() ~= io.stdout then return write(...) end
    local parts = { ... }
    for i = 1, select("#", ...) do parts[i] = tostring(parts[i]) end
    forward({ type = "_output", text = concat(parts) })
    return io.stdout
  end
  -- A child of os.execute or io.popen writes to the terminal directly:
  -- the status line is cleared and stays off until no such child runs.
  local held = 0
  state.live_hold = function(delta)
    held = held + delta
    if delta > 0 and held == 1 then forward({ type = "_tick", hide = true }) end
  end
  M.tick = function()
    if held > 0 then return end
    local tests = {}
    for name in pairs(evidence and evidence.running or {}) do tests[#tests + 1] = name end
    table.sort(tests)
    forward({ type = "_tick", elapsed = _atom.now(), tests = tests, procs = _atom.proc_children() })
  end
end

--- Called by src/main.c right before --timeout or a signal cancels the
--- root: note what each running test was waiting for.
function M.before_stop()
  if not evidence then return end -- no test ran
  state.tests_at_stop = next(evidence.running) ~= nil
  evidence.note_waiting(nil)
end

---@param cfg table {file=, args=, seed=, run_dir=, file_dir=, filter=, grace=, fail_fast=, verbose=, live=, keep=}
function M.main(cfg)
  local atom = require "atom"
  _G.atom = atom
  state.file, state.run_dir, state.file_dir = cfg.file, absolute(cfg.run_dir), absolute(cfg.file_dir)
  state.verbose, state.grace, state.suite = cfg.verbose or 0, cfg.grace or 10, cfg.suite
  state.keep = cfg.keep -- --keep: hosts keep their h.dir too
  _atom.set_default_grace(state.grace)
  events.clock = _atom.now
  if not _cli.events_all then
    -- Without --events/--html the CLI's reporters need only the runner's
    -- events: http/rpc events, one per request, are then not even built.
    events.wanted = { run_start = true, run_end = true, scenario_start = true, scenario_end = true,
      test_start = true, test_end = true, _tick = true }
    -- Process events only show on the console with -v: one forward to the
    -- control state per spawn and exit costs a third of an atom.exec.
    if state.verbose >= 1 then
      events.wanted.process_spawn, events.wanted.process_exit = true, true
    end
  end
  if events.wanted then
    -- Without --events the control state wants only the runner's events;
    -- rpc events are still needed here, for a failed test's last RPC.
    events.wanted.rpc = true
    local forward = _cli.forward
    events.subscribe(function(ev) if ev.type ~= "rpc" then forward(ev) end end)
  else
    events.subscribe(_cli.forward)
  end
  events.subscribe(function(ev) if ev.type == "rpc" and evidence then evidence.on_rpc(ev) end end)
  if cfg.live then start_live() end
  atom.args = cfg.args or {}
  atom.dir = absolute(dirname(cfg.file))
  package.path = atom.dir .. "/?.lua;" .. atom.dir .. "/?/init.lua;" .. package.path
  math.randomseed(cfg.seed)
  local exit_code
  os.exit = function(code) -- luacheck: ignore 122
    exit_code = math.type(code) == "integer" and code or (code == true and 0) or (code == false and 1) or 3
    _atom.cancel_root(("cancelled: os.exit(%s)"):format(tostring(code)))
    _atom.checkpoint("os.exit")
  end
  configure_runner = function(r)
    r.stop_reason = _cli.stop_reason
    r.filter = cfg.filter
    if cfg.fail_fast then
      r.on_test_end = function(ev)
        if ev.status == "failed" and not state.fail_fast_hit then
          state.fail_fast_hit = true
          evidence.note_waiting(nil) -- what the concurrent tests were doing
          _atom.cancel_root("cancelled: stopped by --fail-fast")
        end
      end
    end
  end
  if runner then configure_runner(runner) end
  events.emit("scenario_start", { file = cfg.file, suite = cfg.suite })
  local chunk = assert(loadfile(cfg.file, "t"))
  local bad_reactor
  if cfg.trace_paths then chunk = M.reactor_root(chunk, cfg, function(msg) bad_reactor = msg end) end
  _cli.loaded() -- the collector on, the start-up arena left (src/main.c)
  local ok, root, status, err = _atom.run(chunk)
  if _cli.out_of_memory() then
    -- Wherever Lua raised it (a test, a callback, the reporting), the file
    -- ends with one clear scenario error (src/mem.c stopped it).
    ok, status = false, "failed"
    err = ("out of memory in %s (a Lua allocation failed: ulimit -v, ATOMLUA_MEM_LIMIT or the "
      .. "machine's memory)"):format(cfg.file)
  end
  local ev = { file = cfg.file, suite = cfg.suite, status = "ok" }
  local stopping, stop_message
  stopping, stop_message = _cli.stop_reason()
  local abandoned = runner and runner.fail_abandoned(stop_message or "cancelled: the scenario ended") or 0
  local scenario_error = false
  -- A scenario-owned critical process that died while tests ran failed
  -- those tests; the scenario stopped, but that is no scenario error.
  local tests_took_it = errors.is(err, "process") and runner and runner.failed_causes[err]
  if not ok and exit_code == nil and not tests_took_it
    and not (status == "cancelled" and (stopping or state.fail_fast_hit)) then
    scenario_error = true
    ev.status = "error"
    (runner or require "atom.runner").failure_fields(ev, err, root)
    ev._forensics = evidence and evidence.take_scenario_notes()
  elseif not ok and stopping then
    -- Stopped by --timeout or a signal: not "ok". When it stopped running
    -- tests, their failures say it already; the reports show no more.
    ev.status = "error"
    (runner or require "atom.runner").failure_fields(ev, err, root)
    ev._quiet = state.tests_at_stop or abandoned > 0
  end
  events.emit("scenario_end", ev)
  if #_atom.luv_handles() > 0 then (runner or require "atom.runner").close_luv_handles() end
  local counts = runner and runner.counts or { passed = 0, failed = 0, skipped = 0 }
  return {
    bad_reactor = bad_reactor,
    passed = counts.passed, failed = counts.failed, skipped = counts.skipped,
    matched = runner and runner.matched or false, scenario_error = scenario_error, exit_code = exit_code,
    fail_fast_hit = state.fail_fast_hit or false,
  }
end

-- `atomlua trace`: the reactor file's top-level code runs in the root task
-- and returns the reactor; each trace then replays as one test (SPEC §6).
-- The traces were decoded by the control state already (exit 2 there); they
-- are decoded again here because ITF values do not cross Lua states.
function M.reactor_root(chunk, cfg, on_bad)
  local trace = require "atom.trace"
  return function()
    local reactor = chunk()
    local ok, err = pcall(trace.check_reactor, reactor, cfg.file)
    if not ok then
      on_bad(errors.is(err) and err.message or tostring(err))
      return
    end
    local traces = trace.decode_all(cfg.trace_paths)
    for i, t in ipairs(traces) do
      state.suite = cfg.trace_from[i]
      trace.run(reactor, { t }, i)
    end
    state.suite = nil
  end
end

return M
