-- atom.proc: the public process API of SPEC §4 — atom.spawn, atom.exec,
-- atom.sh and the process object — as policy over the C mechanisms of
-- src/proc.c and src/proclua.c (start, read lines, wait, stop, reap). Spec
-- checking, names, log files, expect's matching and error messages live here.
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local state = require "atom.state"

local M = {}

local find, format, concat = string.find, string.format, table.concat
local now, checkpoint = _atom.now, _atom.checkpoint
local null = _atom.json_null -- atom.json.null, without loading atom.json at the first spawn

local EXPECT_TIMEOUT = 30
local TAIL_LINES = 20
local EXEC_KEEP = 16 * 1024 * 1024
local DEFAULT_GRACE = 5 -- seconds between SIGTERM and SIGKILL in p:stop() (SPEC §4)

local Process = {}
local mt = { __name = "atom.process" }
debug.getregistry()["atom.process"] = mt

-- {==== naming and logs ====

local counters = {} -- per program basename, for default names
local logged = {}   -- log file names already used in this Lua state

local function basename(path) return (path:match("([^/]+)/*$") or path) end

local bases, nbases = {}, 0 -- basename by program, for the default names
local function default_name(prog)
  local base = bases[prog]
  if not base then
    base = basename(prog)
    if nbases >= 256 then bases, nbases = {}, 0 end
    bases[prog], nbases = base, nbases + 1
  end
  counters[base] = (counters[base] or 0) + 1
  return base .. "-" .. counters[base]
end

local function logs_dir()
  if not (state.file_dir or state.run_dir) then return nil end
  return state.logs_dir()
end

local function quote_argv(argv)
  local parts = {}
  for i, a in ipairs(argv) do
    parts[i] = a:find("^[%w%./_=:,@%%+-]+$") and a or ("'" .. a:gsub("'", "'\\''") .. "'")
  end
  return concat(parts, " ")
end

-- The log file of process `name` (nil when there is no run directory), and
-- whether an earlier process already wrote to it.
local function log_path(name)
  local dir = logs_dir()
  if not dir then return nil end
  local file = name:gsub("[^A-Za-z0-9._-]", "_") .. ".log"
  local again = logged[file]
  logged[file] = true
  return dir .. "/" .. file, again
end

-- }====

-- {==== spec checking ====

local spawn_fields = {
  name = "string", cwd = "string", env = "table", env_clear = "boolean",
  stdin = "string", output = "string", critical = "boolean", grace = "number",
  owner = "task", net = "host",
}
local exec_fields = {
  name = "string", cwd = "string", env = "table", env_clear = "boolean",
  stdin = "string", grace = "number", timeout = "number", check = "boolean", net = "host",
}

local function bad(n, fname, msg) errors.argerror(n, fname, msg) end

-- Check spec (argument n of fname) against `fields`; return argv and the
-- C-level options.
local function parse_spec(spec, fields, fname, n)
  if type(spec) ~= "table" then
    bad(n, fname, "table expected, got " .. (spec == nil and "no value" or type(spec)))
  end
  local argv, nargv = {}, #spec
  for i = 1, nargv do
    local a = spec[i]
    local t = type(a)
    if t == "number" then
      a = tostring(a)
    elseif t ~= "string" then
      bad(n, fname, format("argv[%d] must be a string or number, got %s", i, t))
    end
    argv[i] = a
  end
  if nargv == 0 or argv[1] == "" then bad(n, fname, "argv is empty: spec[1] must name the program") end
  for k, v in pairs(spec) do
    if type(k) ~= "number" or k < 1 or k > nargv or math.type(k) ~= "integer" then
      local want = type(k) == "string" and fields[k]
      if not want then
        bad(n, fname, format("unknown field '%s'", tostring(k)))
      elseif type(v) ~= want and want ~= "task" and want ~= "host" then
        bad(n, fname, format("field '%s' must be a %s, got %s", k, want, type(v)))
      end
    end
  end
  if spec.env then
    for k, v in pairs(spec.env) do
      if type(k) ~= "string" or not (type(v) == "string" or type(v) == "number" or v == false) then
        bad(n, fname, format("env.%s must be a string, a number or false", tostring(k)))
      end
    end
  end
  if spec.output and spec.output ~= "capture" and spec.output ~= "inherit" and spec.output ~= "null" then
    bad(n, fname, "field 'output' must be \"capture\", \"inherit\" or \"null\"")
  end
  if spec.grace and spec.grace < 0 then bad(n, fname, "field 'grace' must not be negative") end
  if spec.owner ~= nil and getmetatable(spec.owner) ~= debug.getregistry()["atom.task"] then
    bad(n, fname, "field 'owner' must be a task (from atom.owner())")
  end
  local t = spec.timeout
  if t and (t ~= t or t < 0) then bad(n, fname, "field 'timeout' must not be negative") end
  local env
  if spec.env then
    env = {}
    for k, v in pairs(spec.env) do
      if v == false then env[k] = false else env[k] = tostring(v) end
    end
  end
  return argv, {
    argv = argv, env = env, env_clear = spec.env_clear, cwd = spec.cwd,
    stdin = spec.stdin == "pipe" and "pipe" or nil,
    stdin_data = spec.stdin ~= "pipe" and spec.stdin or nil,
    output = spec.output or "capture", critical = spec.critical,
    grace = spec.grace or DEFAULT_GRACE, owner = spec.owner,
    -- a host's processes join its network namespace (atom.net.host, SPEC §11)
    net = spec.net,
    netns = spec.net ~= nil and require("atom.net").netns_fd(spec.net, n, fname) or nil,
  }
end

-- }====

-- {==== messages ====

local function status_text(code, sig)
  if code then return "code " .. code end
  if sig then return "signal " .. sig end
  return "still running"
end

-- "last 20 lines of n1:\n  | ..." and the log's path: the tail every
-- process error quotes.
local function tail_block(p, n)
  local lines = p._c:tail(n or TAIL_LINES)
  local out = {}
  if #lines == 0 then
    out[1] = "(no output from " .. p.name .. ")"
  else
    out[1] = format("last %d lines of %s:", #lines, p.name)
    for i, l in ipairs(lines) do out[i + 1] = "  | " .. l end
  end
  if p._log then out[#out + 1] = "full log: " .. p._log end
  return concat(out, "\n")
end

local function skipped_note(skipped)
  if skipped == 0 then return "" end
  return format(" (%d lines were skipped: more than 1 MiB of output was waiting)", skipped)
end

local function format_secs(s) return format("%.14gs", s) end

-- }====

-- {==== the process object ====

mt.__index = function(self, k)
  if k == "critical" then return rawget(self, "_c"):critical() end
  return Process[k]
end
mt.__newindex = function(self, k, v)
  if k == "critical" then
    rawget(self, "_c"):critical(v and true or false)
  else
    rawset(self, k, v)
  end
end
local function who(p)
  local h = rawget(p, "_host")
  if h then return format("process %s (pid %d on host %s)", p.name, p.pid, h.name) end
  return format("process %s (pid %d)", p.name, p.pid)
end
mt.__tostring = who
-- <close> is p:stop(), waiting even while the task is being cancelled (it
-- is a cleanup, SPEC §3 rule 4) until the cleanup grace has passed.
mt.__close = function(self) self._c:stop(nil, true) end

local function check_self(self, fname)
  if getmetatable(self) ~= mt then
    errors.raise("usage", format("bad argument #0 to '%s' (process expected; use p:%s)", fname, fname))
  end
end

local function opt_timeout(opts, n, fname, default)
  if opts == nil then return default end
  if type(opts) == "number" then return opts end
  if type(opts) == "table" then
    local t = opts.timeout
    if t ~= nil and type(t) ~= "number" then bad(n, fname, "field 'timeout' must be a number") end
    if t == nil then return default end
    return t
  end
  bad(n, fname, "number or table expected, got " .. type(opts))
end

local function need_capture(self, fname)
  if self._output ~= "capture" then
    errors.raise("usage", format("p:%s needs output = \"capture\" (process %s has output = %q)",
      fname, self.name, self._output))
  end
end

--- Wait for an output line at or after the match cursor that matches `pattern`
--- (a Lua pattern, or plain text with `plain = true`); move the cursor past it.
---@param pattern string
---@param opts number|{timeout: number?, plain: boolean?}|nil timeout (default 30)
---@return string line, any ... the captures
function Process:expect(pattern, opts)
  check_self(self, "expect")
  errors.checktype(1, "expect", pattern, "string")
  local timeout = opt_timeout(opts, 2, "expect", EXPECT_TIMEOUT)
  local plain = type(opts) == "table" and opts.plain or false
  need_capture(self, "expect")
  if not plain then
    local ok, msg = pcall(find, "", pattern)
    if not ok then bad(1, "expect", tostring(msg):gsub("^.-:%d+: ", "")) end
  end
  checkpoint("p:expect")
  local c = self._c
  local pos, skipped, start = self._cursor, 0, now()
  local desc = format("expect %s %q", self.name, pattern)
  while true do
    local line, idx = c:line(pos)
    if line then
      skipped = skipped + (idx - pos)
      local r = table.pack(find(line, pattern, 1, plain))
      if r[1] then
        if idx + 1 > self._cursor then self._cursor = idx + 1 end
        if plain or r.n <= 2 then return line end
        return line, table.unpack(r, 3, r.n)
      end
      pos = idx + 1
    elseif line == false then
      local left = timeout - (now() - start)
      local ok, e = true, nil
      if left > 0 then ok, e = pcall(c.wait_line, c, pos, left, desc, "p:expect") end
      if left <= 0 or (not ok and errors.is(e, "timeout")) then
        errors.raise("timeout", format("%s timed out after %s%s\n%s", desc, format_secs(timeout),
          skipped_note(skipped), tail_block(self)), { process = self.name, pattern = pattern })
      elseif not ok then
        error(e, 0)
      end
    else
      local _, code, sig = c:status()
      errors.raise("process", format("%s: output ended without a match (%s %s)%s\n%s", desc, self.name,
        code == nil and sig == nil and "closed its output" or "exited with " .. status_text(code, sig),
        skipped_note(skipped), tail_block(self)), { process = self.name, pattern = pattern })
    end
  end
end

--- Iterate over output lines from the match cursor on, as they come; the
--- iterator keeps its own position and ends at the end of output.
---@return fun(): string|nil
function Process:lines()
  check_self(self, "lines")
  need_capture(self, "lines")
  local c, pos = self._c, self._cursor
  return function()
    checkpoint("p:lines")
    while true do
      local line, idx = c:line(pos)
      if line then
        pos = idx + 1
        return line
      elseif line == false then
        c:wait_line(pos, nil, nil, "p:lines")
      else
        return nil
      end
    end
  end
end

--- Wait for the process to exit.
---@param opts number|{timeout: number?}|nil no timeout by default
---@return integer|nil code, string|nil signal
function Process:wait(opts)
  check_self(self, "wait")
  local timeout = opt_timeout(opts, 1, "wait", nil)
  return self._c:wait(timeout, "wait " .. self.name, false, false, "p:wait")
end

local function signum(sig, n, fname)
  local num = _atom.proc_signum(sig)
  if not num then bad(n, fname, format("unknown signal '%s'", tostring(sig))) end
  return num
end

--- Send a signal to the process group; false once the process was reaped.
---@param sig string|integer|nil "TERM" (default), "SIGTERM" or 15
---@return boolean
function Process:kill(sig)
  check_self(self, "kill")
  if sig ~= nil then errors.checktype(1, "kill", sig, "string|number") end
  return self._c:kill(signum(sig or "TERM", 1, "kill"))
end

--- SIGTERM then SIGCONT to the group, wait up to `grace`, SIGKILL, reap.
---@param grace number|nil seconds (default: the spawn's grace, 5)
---@return integer|nil code, string|nil signal
function Process:stop(grace)
  check_self(self, "stop")
  errors.checktype(1, "stop", grace, "number", true)
  if grace and grace < 0 then bad(1, "stop", "grace must not be negative") end
  return self._c:stop(grace)
end

function Process:pause()
  check_self(self, "pause")
  self._c:signal(_atom.proc_signum("STOP"))
  events.emit("process_pause", { name = self.name, pid = self.pid })
end

function Process:resume()
  check_self(self, "resume")
  self._c:signal(_atom.proc_signum("CONT"))
  events.emit("process_resume", { name = self.name, pid = self.pid })
end

--- Write to stdin (spawned with stdin = "pipe"); returns when the pipe took it.
---@param s string
---@param opts number|{timeout: number?}|nil
function Process:write(s, opts)
  check_self(self, "write")
  errors.checktype(1, "write", s, "string")
  local timeout = opt_timeout(opts, 2, "write", nil)
  if self._stdin ~= "pipe" then
    errors.raise("usage", format("p:write needs stdin = \"pipe\" (process %s)", self.name))
  end
  return self._c:write(s, timeout, "write to " .. self.name)
end

function Process:close_stdin()
  check_self(self, "close_stdin")
  self._c:close_stdin()
end

--- The last 1 MiB of stdout and of stderr (the log file has everything).
---@return string stdout, string stderr
function Process:output()
  check_self(self, "output")
  return self._c:output()
end

--- The last n output lines (at most the lines still buffered).
---@param n integer|nil (default 20)
---@return string[]
function Process:tail(n)
  check_self(self, "tail")
  errors.checktype(1, "tail", n, "number", true)
  return self._c:tail(math.max(0, math.floor(n or TAIL_LINES)))
end

--- "running" or "exited", then the exit code and signal name once exited.
---@return string state, integer|nil code, string|nil signal
function Process:status()
  check_self(self, "status")
  local reaped, code, sig = self._c:status()
  if not reaped then return "running" end
  return "exited", code, sig
end

--- The last n lines as process errors quote them: a header, "  | " lines
--- and the log's path (what a library's own errors can quote too).
---@param n integer|nil (20)
---@return string
function Process:tail_text(n)
  check_self(self, "tail_text")
  errors.checktype(1, "tail_text", n, "number", true)
  return tail_block(self, n and math.max(0, math.floor(n)) or nil)
end

---@return boolean
function Process:is_running()
  check_self(self, "is_running")
  return self._c:running()
end
Process.running = Process.is_running

-- }====

-- {==== spawn, exec, sh ====

-- Processes by owner task (tests only), for failure reports.
local by_owner = setmetatable({}, { __mode = "k" })

-- `host` (lua/atom/host.lua) starts it through the host's agent instead:
-- the same C handle, fed by the link (src/remote.c), behind the same object.
local function start(argv, o, name, log, again, header_always, host)
  o.name = name
  o.log = log
  o.header = again or header_always -- written by proc_spawn, before any output
  local p = { pid = 0, name = name, log = log, _cursor = 1, _output = o.output, _stdin = o.stdin,
              _argv = argv, _log = log, _host = host }
  o.wrapper = setmetatable(p, mt)
  local ok, c, owner
  if host then
    ok, c, owner = pcall(host._start, host, o)
  else
    ok, c, owner = pcall(_atom.proc_spawn, o)
  end
  if not ok then error(c, 0) end
  p._c = c
  rawset(p, "pid", c:pid())
  if owner and _atom.owner_scope() then
    local list = by_owner[owner]
    if not list then
      list = {}
      by_owner[owner] = list
    end
    list[#list + 1] = p
  end
  if o.netns then require("atom.net").track(o.net, p) end
  if events.active("process_spawn") then
    events.emit("process_spawn", { name = name, pid = p.pid, argv = argv, host = host and host.name })
  end
  return p, c
end

--- Start a process; never waits. See SPEC §4 for the fields of `spec`;
--- `owner` (a task from atom.owner()) makes it that owner's instead of the
--- caller's: atom.cluster's restarts belong to the owner at c:start().
---@param spec table argv in the array part, plus name, cwd, env, env_clear, stdin, output, critical, grace, owner
---@return table process
function M.spawn(spec, host)
  local argv, o = parse_spec(spec, spawn_fields, "spawn", 1)
  local name = spec.name or default_name(argv[1])
  local log, again
  if o.output == "capture" then log, again = log_path(name) end
  return (start(argv, o, name, log, again, false, host))
end

local exec_log_dir, exec_log_path
local function exec_log(dir)
  if dir ~= exec_log_dir then exec_log_dir, exec_log_path = dir, dir .. "/exec.log" end
  return exec_log_path
end

local function exec(spec, fname, n, host)
  local argv, o = parse_spec(spec, exec_fields, fname, n)
  checkpoint(fname)
  local t0 = now()
  local name = spec.name or default_name(argv[1])
  local dir = logs_dir()
  o.tail = EXEC_KEEP
  o.lines = false
  o.log_shared = true
  local p, c = start(argv, o, name, dir and exec_log(dir), false, true, host)
  local desc = spec.timeout and format("%s %s", fname, quote_argv(argv))
  local code, sig = c:wait(spec.timeout, desc, true, true, fname)
  local stdout, stderr = c:output()
  local res = { code = code, signal = sig, stdout = stdout, stderr = stderr, duration = now() - t0 }
  if spec.check ~= false and code ~= 0 then
    desc = desc or format("%s %s", fname, quote_argv(argv))
    local quoted = stderr:gsub("\n$", "")
    local lines = {}
    for l in (quoted .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
    local from = math.max(1, #lines - TAIL_LINES + 1)
    local q = {}
    for i = from, #lines do q[#q + 1] = "  | " .. lines[i] end
    errors.raise("process", format("%s exited with %s%s", desc, status_text(code, sig),
      #quoted > 0 and ("\nstderr:\n" .. concat(q, "\n")) or " (no stderr)"),
      { result = res, code = code, signal = sig, process = p.name, stderr = stderr })
  end
  return res
end

--- Run a command to completion without blocking other tasks.
---@param spec table spawn's fields except critical and output, plus timeout and check
---@return {code: integer|nil, signal: string|nil, stdout: string, stderr: string, duration: number}
function M.exec(spec, host) return exec(spec, "exec", 1, host) end

--- Run `/bin/sh -c cmdline`; return its stdout without the trailing newline.
---@param cmdline string
---@param opts number|table|nil timeout, or exec's fields
---@return string stdout, table|nil result (with check = false)
function M.sh(cmdline, opts, host)
  errors.checktype(1, "sh", cmdline, "string")
  local spec = {}
  if type(opts) == "number" then
    spec.timeout = opts
  elseif type(opts) == "table" then
    for k, v in pairs(opts) do spec[k] = v end
  elseif opts ~= nil then
    bad(2, "sh", "number or table expected, got " .. type(opts))
  end
  if spec.name == nil then spec.name = "sh" end
  spec[1], spec[2], spec[3] = "/bin/sh", "-c", cmdline
  local res = exec(spec, "sh", 2, host)
  local out = res.stdout:gsub("\n$", "")
  if spec.check == false then return out, res end
  return out
end

--- `/bin/sh -c cmd` for Lua's own os.execute and io.popen (atom.blocking):
--- named "sh" and owned like a spawn; stdin from /dev/null (or a pipe with
--- `stdin_pipe`), stdout and stderr inherited, stdout on `stdout_fd` if given.
---@return table process, userdata c (the C handle)
function M.start_shell(cmd, stdout_fd, stdin_pipe)
  local argv = { "sh", "-c", cmd } -- what system(3) and popen(3) run
  local o = { argv = argv, exe = "/bin/sh", output = stdout_fd and "fd" or "inherit", stdout_fd = stdout_fd,
    stdin = stdin_pipe and "pipe" or nil, grace = DEFAULT_GRACE }
  return start(argv, o, "sh", nil, false, false)
end

-- }====

--- A host's transport (lua/atom/host.lua): argv with the agent's bootstrap;
--- its stdout (frames) and stderr go to the link's pipes; stdin is a pipe.
---@return table process, userdata c
function M.start_transport(argv, name, out_fd, err_fd, host)
  local o = { argv = argv, output = "fd", stdout_fd = out_fd, stderr_fd = err_fd, stdin = "pipe",
    grace = 2 }
  local p, c = start(argv, o, name, nil, false, false)
  p._transport_of = host
  return p, c
end

-- {==== hooks: exits and the owner's end ====

-- Called by src/proc.c at every exit; returns the owner's error when a
-- critical process died on its own.
_atom.proc_on_exit(function(p, code, sig, expected, fail)
  if events.active("process_exit") then
    events.emit("process_exit", { name = p.name, pid = p.pid, code = code == nil and null or code,
      signal = sig == nil and null or sig, expected = expected })
  end
  if not fail then return nil end
  p._unexpected = true
  local h = p._transport_of or p._host
  -- the transport to a host ended (its own exit may be seen before its
  -- stdout's end): name the host
  if h and (p._transport_of or h:_lost()) then
    local msg = p._transport_of
      and format("host %s: the transport to its agent ended unexpectedly (%s: %s)%s", h.name,
        quote_argv(h.via), status_text(code, sig), h:_stderr_block())
      or format("%s was lost with host %s: the transport to its agent ended%s\n%s", who(p), h.name,
        h:_stderr_block(), tail_block(p))
    return errors.new("process", msg, { process = p.name, pid = p.pid, host = h.name, where = false })
  end
  return errors.new("process", format("%s exited unexpectedly: %s\n%s", who(p),
    status_text(code, sig), tail_block(p)), { process = p.name, pid = p.pid, code = code, signal = sig,
    host = h and h.name, where = false })
end)

--- Stop the processes the current task owns (trampoline step 4).
function M.stop_owned() _atom.proc_stop_owned() end
table.insert(require("atom.task").owner_end, M.stop_owned)

--- Log tails for a failure report: every process the test task owned.
---@param task userdata a task handle
---@return {name: string, pid: integer, lines: string[], log: string|nil, code: integer|nil, signal: string|nil}[]
function M.collect_tails(task)
  local out = {}
  for _, p in ipairs(by_owner[task] or {}) do
    local _, code, sig = p._c:status()
    out[#out + 1] = { name = p.name, pid = p.pid, lines = p._c:tail(TAIL_LINES), log = p._log,
      code = code, signal = sig, unexpected = p._unexpected or false }
  end
  return out
end

-- }====

-- The reaper starts as the module loads (an import), not in the first spawn.
_atom.proc_prepare()

return M
