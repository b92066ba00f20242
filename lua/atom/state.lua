-- atom.state: facts about the current run shared by the Lua modules.
local M = {
  run_dir = nil,    -- the run directory (SPEC §1), created on demand
  file_dir = nil,   -- this scenario file's directory inside it (== run_dir with one file)
  file = nil,       -- the scenario file being run
  verbose = 0,      -- -v: 1, -q: -1
  grace = 10,       -- the cleanup grace (--grace)
  -- Called with a module as it loads, by module name: how the CLI's file
  -- state (atom.scenario) configures atom.runner and atom.sched, which load
  -- on first use.
  on_load = {},
}

--- The directory for logs of this scenario file, created on first use.
function M.logs_dir()
  local base = M.file_dir or M.run_dir
  if M._logs_made and base == M._logs_base then return M._logs_dir end
  local dir = base .. "/logs"
  if not M._logs_made then
    require("_atom").mkdir_p(dir)
    M._logs_made = true
  end
  M._logs_base, M._logs_dir = base, dir
  return dir
end

return M
