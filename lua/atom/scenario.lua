-- atom.scenario: the entry point of a scenario file's own Lua state. The
-- control state (atom.cli) calls main(cfg) through _atom.run_file; events go
-- back to it through _atom.forward.
local _atom = require "_atom"
local events = require "atom.events"
local state = require "atom.state"
local runner = require "atom.runner"
local errors = require "atom.errors"

local M = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

---@param cfg table {file=, args=, seed=, run_dir=, file_dir=, filter=, grace=, fail_fast=, verbose=}
function M.main(cfg)
  local atom = require "atom"
  _G.atom = atom
  state.file, state.run_dir, state.file_dir = cfg.file, cfg.run_dir, cfg.file_dir
  state.verbose, state.grace, state.suite = cfg.verbose or 0, cfg.grace or 10, cfg.suite
  _atom.set_default_grace(state.grace)
  events.clock = _atom.now
  events.subscribe(_atom.forward)
  runner.filter = cfg.filter
  atom.args = cfg.args or {}
  atom.dir = dirname(cfg.file)
  package.path = atom.dir .. "/?.lua;" .. atom.dir .. "/?/init.lua;" .. package.path
  math.randomseed(cfg.seed)
  local exit_code
  os.exit = function(code)
    exit_code = math.type(code) == "integer" and code or (code == true and 0) or (code == false and 1) or 3
    _atom.cancel_root(("cancelled: os.exit(%s)"):format(tostring(code)))
    _atom.checkpoint("os.exit")
  end
  if cfg.fail_fast then
    runner.on_test_end = function(ev)
      if ev.status == "failed" then
        state.fail_fast_hit = true
        _atom.cancel_root("cancelled: stopped by --fail-fast")
      end
    end
  end
  events.emit("scenario_start", { file = cfg.file, suite = cfg.suite })
  local chunk = assert(loadfile(cfg.file, "t"))
  local bad_reactor
  if cfg.trace_paths then chunk = M.reactor_root(chunk, cfg, function(msg) bad_reactor = msg end) end
  local ok, root, status, err = _atom.run(chunk)
  local ev = { file = cfg.file, suite = cfg.suite, status = "ok" }
  local stopping = _atom.stop_reason and _atom.stop_reason() or nil
  local scenario_error = false
  if not ok and exit_code == nil and not (status == "cancelled" and (stopping or state.fail_fast_hit)) then
    scenario_error = true
    ev.status = "error"
    runner.failure_fields(ev, err, root)
  end
  events.emit("scenario_end", ev)
  runner.close_luv_handles()
  return {
    bad_reactor = bad_reactor,
    passed = runner.counts.passed, failed = runner.counts.failed, skipped = runner.counts.skipped,
    matched = runner.matched or false, scenario_error = scenario_error, exit_code = exit_code,
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
