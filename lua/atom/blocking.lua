-- atom.blocking: Lua's own blocking calls, os.execute and io.popen, made
-- loop-friendly (SPEC §15). Inside a task they run `/bin/sh -c cmd` as a
-- process of the task (atom.proc: owned, stopped at the owner's end, known
-- to the reaper, named "sh") and wait as tasks do: other tasks keep running,
-- the call is a cancellation point and deadlines apply. They return exactly
-- what Lua's return. Outside a task (a luv callback, a plain coroutine, code
-- before atom.run in module mode) Lua's originals run.
-- io.popen's "r" handle reads the child's stdout through src/rawpipe.c
-- (bytes as they come, nothing read ahead); "w" writes through the process's
-- stdin pipe (src/procin.c).
local _atom = require "_atom"
local errors = require "atom.errors"
local state = require "atom.state"

local M = {}

local in_task, checkpoint = _atom.in_task_thread, _atom.checkpoint
local type, select, tostring, format, concat = type, select, tostring, string.format, table.concat
local math_type, tointeger = math.type, math.tointeger

-- Lua's originals, kept once per Lua state by atom (init.lua, which loads
-- this module at the first call): the module may be loaded again (busted
-- empties package.loaded between spec files) and must not wrap its own
-- wrappers.
local orig = assert(debug.getregistry()["atom.blocking.orig"], "atom.blocking is loaded by atom")

local CHUNK = 64 * 1024
local EBADF, EPIPE = 9, 32
local BADF_MSG, PIPE_MSG = "Bad file descriptor", "Broken pipe"

local function argerror(n, fname, msg) errors.argerror(n, fname, msg) end

-- luaL_checkstring: numbers are turned into strings.
local function checkstring(n, fname, v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  argerror(n, fname, "string expected, got " .. (v == nil and "no value" or t))
end

local function checkoption(n, fname, v, def, list)
  if v == nil then v = def end
  v = checkstring(n, fname, v)
  for _, o in ipairs(list) do if o == v then return v end end
  argerror(n, fname, format("invalid option '%s'", v))
end

-- luaL_execresult: true|nil, "exit"|"signal", code.
local function execresult(code, sig)
  if code then
    if code == 0 then return true, "exit", 0 end
    return nil, "exit", code
  end
  return nil, "signal", _atom.proc_signum(sig) or 0
end

-- While a child writes to the terminal, the live status line (a console on
-- a terminal, atom.scenario) stays off the screen.
local function hold_live(delta)
  if state.live_hold then state.live_hold(delta) end
end

-- Spawn the shell; on failure return nil and the message, like a failed
-- fork in Lua's os.execute / io.popen (there is no errno to give).
local function start_shell(cmd, stdout_fd, stdin_pipe)
  local ok, p, c = pcall(require("atom.proc").start_shell, cmd, stdout_fd, stdin_pipe)
  if not ok then
    if errors.is(p, "spawn") then return nil, p.message end
    error(p, 0)
  end
  return p, c
end

-- A wait that raised (cancelled, timed out): SIGKILL what is left of the
-- group, also when the shell itself has exited already.
local function kill_group(c)
  if not c:kill(9) then c:signal(9) end
end

-- {==== os.execute ====

--- os.execute([cmd]): run cmd through /bin/sh -c as a process of the task.
function M.execute(...)
  if not in_task() then return orig.execute(...) end
  local cmd = ...
  if cmd == nil then return true end -- a shell is available
  cmd = checkstring(1, "os.execute", cmd)
  checkpoint("os.execute")
  -- Lua's os.execute has the C library flush nothing either, but a line the
  -- script is still building would come after the child's output.
  pcall(io.stdout.flush, io.stdout)
  local p, c = start_shell(cmd, nil, false)
  if not p then return nil, c end
  hold_live(1)
  -- kill_on_cancel: a cancelled wait SIGKILLs the group and reaps the shell.
  local ok, code, sig = pcall(c.wait, c, nil, nil, false, true, "os.execute")
  hold_live(-1)
  if not ok then
    kill_group(c)
    error(code, 0)
  end
  return execresult(code, sig)
end

-- }====

-- {==== io.popen's file handle ====

local File = {}
local file_mt = { __name = "FILE*", __index = File }

local function is_file(f) return getmetatable(f) == file_mt end

local function tofile(f, fname)
  if not is_file(f) then
    argerror(0, fname, "FILE* expected, got " .. (f == nil and "no value" or type(f)))
  end
  if f._closed then error("attempt to use a closed file", 3) end
  return f
end

-- Append one chunk to the buffer; false at EOF. A read error is kept for
-- the caller (Lua's ferror).
local function fill(f)
  if f._eof then return false end
  if f._mode ~= "r" then
    f._err, f._errno = BADF_MSG, EBADF
    return false
  end
  local s, msg, no = f._rp:read(CHUNK, "read")
  if s then
    local buf, pos = f._buf, f._pos
    f._buf = (pos > #buf and "" or (pos == 1 and buf or buf:sub(pos))) .. s
    f._pos = 1
    return true
  end
  if s == nil then
    f._eof = true
  else
    f._err, f._errno = msg, no
  end
  return false
end

local function avail(f) return #f._buf - f._pos + 1 end

local function take(f, n) -- n bytes from the buffer (n <= avail)
  local pos = f._pos
  local s = f._buf:sub(pos, pos + n - 1)
  f._pos = pos + n
  return s
end

local function read_line(f, keep)
  local from = f._pos
  while true do
    local nl = f._buf:find("\n", from, true)
    if nl then
      local s = f._buf:sub(f._pos, keep and nl or nl - 1)
      f._pos = nl + 1
      return s
    end
    local searched = avail(f)
    if not fill(f) then
      local n = avail(f)
      if n == 0 then return nil end
      return take(f, n)
    end
    from = f._pos + searched -- fill keeps the unread bytes first
  end
end

local function read_all(f)
  local parts = { take(f, avail(f)) }
  while fill(f) do parts[#parts + 1] = take(f, avail(f)) end
  return concat(parts)
end

local function read_chars(f, n)
  while avail(f) < n and fill(f) do end
  local k = math.min(n, avail(f))
  if k == 0 then return nil end
  return take(f, k)
end

local function peek(f) -- the next byte, or nil at EOF
  if avail(f) == 0 and not fill(f) then return nil end
  return f._buf:sub(f._pos, f._pos)
end

-- liolib.c's read_number: the longest prefix that looks like a numeral (at
-- most 200 characters), consumed even when it is not one.
local function read_number(f)
  local buff, n = {}, 0
  local c
  repeat
    c = peek(f)
    if c and c:find("^%s") then f._pos = f._pos + 1 end
  until not (c and c:find("^%s"))
  local function nextc()
    if n >= 200 then
      buff = { "" }
      return false
    end
    n = n + 1
    buff[n] = c
    f._pos = f._pos + 1
    c = peek(f)
    return true
  end
  local function test2(set)
    if c and (c == set:sub(1, 1) or c == set:sub(2, 2)) then return nextc() end
    return false
  end
  local function readdigits(hex)
    local count = 0
    while c and c:find(hex and "^%x" or "^%d") and nextc() do count = count + 1 end
    return count
  end
  local count, hex = 0, false
  test2("-+")
  if test2("00") then
    if test2("xX") then hex = true else count = 1 end
  end
  count = count + readdigits(hex)
  if test2("..") then count = count + readdigits(hex) end
  if count > 0 and test2(hex and "pP" or "eE") then
    test2("-+")
    readdigits(false)
  end
  return tonumber(concat(buff))
end

--- f:read(...): Lua's formats "n", "l", "L", "a" (an optional leading "*"),
--- and counts; several formats return several values, nil from the first
--- that fails on.
function File:read(...)
  tofile(self, "read")
  local nargs = select("#", ...)
  self._err = nil
  local out, n = {}, 0
  local ok = true
  if nargs == 0 then
    local v = read_line(self, false)
    out[1], n, ok = v, 1, v ~= nil
  end
  for i = 1, nargs do
    if not ok then break end
    local fmt = select(i, ...)
    local v
    if type(fmt) == "number" then
      local k = tointeger(fmt)
      if not k then argerror(i, "read", "number has no integer representation") end
      if k == 0 then
        v = peek(self) and "" or nil
      else
        v = read_chars(self, k)
      end
    else
      local p = checkstring(i, "read", fmt)
      local ch = p:sub(1, 1) == "*" and p:sub(2, 2) or p:sub(1, 1)
      if ch == "n" then
        v = read_number(self)
      elseif ch == "l" then
        v = read_line(self, false)
      elseif ch == "L" then
        v = read_line(self, true)
      elseif ch == "a" then
        v = read_all(self)
      else
        argerror(i, "read", "invalid format")
      end
    end
    n = n + 1
    out[n] = v
    ok = v ~= nil
  end
  if self._err then return nil, self._err, self._errno end
  return table.unpack(out, 1, n)
end

--- f:lines(...): an iterator over f:read(...) ("l" by default); it ends at
--- the first nil and raises a read error.
function File:lines(...)
  tofile(self, "lines")
  local fmts = table.pack(...)
  if fmts.n > 250 then argerror(252, "lines", "too many arguments") end
  return function()
    if self._closed then error("file is already closed", 2) end
    local r = table.pack(self:read(table.unpack(fmts, 1, fmts.n)))
    if r[1] then return table.unpack(r, 1, r.n) end
    if r.n > 1 and type(r[2]) == "string" then error(r[2], 2) end
  end
end

--- f:write(...): strings and numbers, sent when the pipe has taken them.
function File:write(...)
  tofile(self, "write")
  local parts = {}
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if math_type(v) == "integer" then
      parts[i] = format("%d", v)
    elseif math_type(v) == "float" then
      parts[i] = format("%.14g", v)
    else
      parts[i] = checkstring(i, "write", v)
    end
  end
  if self._mode ~= "w" then return nil, BADF_MSG, EBADF end
  local data = concat(parts)
  if data == "" then return self end
  local ok, e = pcall(self._c.write, self._c, data, nil, "write to io.popen")
  if ok then return self end
  if errors.is(e, "io") then
    if e.cause == "reset" then return nil, PIPE_MSG, EPIPE end
    return nil, BADF_MSG, EBADF
  end
  error(e, 0)
end

function File:flush()
  tofile(self, "flush")
  return true
end

function File:setvbuf(mode, size)
  tofile(self, "setvbuf")
  checkoption(1, "setvbuf", mode, nil, { "no", "full", "line" })
  if size ~= nil and not tointeger(size) then
    argerror(2, "setvbuf", "number has no integer representation")
  end
  return true
end

function File:seek(whence, offset)
  tofile(self, "seek")
  checkoption(1, "seek", whence, "cur", { "set", "cur", "end" })
  if offset ~= nil and not tointeger(offset) then
    argerror(2, "seek", type(offset) == "number" and "number has no integer representation"
      or "number expected, got " .. type(offset))
  end
  return nil, "Illegal seek", 29
end

--- f:close(): close our end, wait for the shell; Lua's three values.
function File:close()
  tofile(self, "close")
  self._closed = true
  local c = self._c
  if self._rp then self._rp:close() end
  if self._mode == "w" then c:close_stdin() end
  local ok, code, sig = pcall(c.wait, c, nil, nil, false, true, "close")
  hold_live(-1)
  if not ok then
    kill_group(c)
    error(code, 0)
  end
  return execresult(code, sig)
end

file_mt.__tostring = function(f)
  if f._closed then return "file (closed)" end
  return format("file (%p)", f)
end

-- <close>: like Lua's, closes an open handle (and waits for the shell).
file_mt.__close = function(f)
  if not f._closed then f:close() end
end

-- Collected open: no waiting in a finalizer, so SIGTERM (then SIGCONT, as
-- p:stop does) the shell's group, also when the shell itself has exited;
-- the owner's end stops whatever ignored it.
file_mt.__gc = function(f)
  if f._closed then return end
  f._closed = true
  if f._rp then f._rp:close() end
  hold_live(-1)
  local c = f._c
  pcall(c.signal, c, 15)
  pcall(c.signal, c, 18)
end

--- io.popen(cmd [, mode]): "r" reads the shell's stdout, "w" writes its stdin.
function M.popen(...)
  if not in_task() then return orig.popen(...) end
  local cmd, mode = ...
  cmd = checkstring(1, "io.popen", cmd)
  mode = mode == nil and "r" or checkstring(2, "io.popen", mode)
  if mode ~= "r" and mode ~= "w" then argerror(2, "io.popen", "invalid mode") end
  checkpoint("io.popen")
  pcall(io.stdout.flush, io.stdout)
  local f = { _mode = mode, _buf = "", _pos = 1, _eof = false, _closed = false }
  local p, c
  if mode == "r" then
    local rp = _atom.rawpipe()
    p, c = start_shell(cmd, rp:child_fd(), false)
    rp:release_child()
    if not p then
      rp:close()
      return nil, c
    end
    f._rp = rp
  else
    p, c = start_shell(cmd, nil, true)
    if not p then return nil, c end
  end
  hold_live(1) -- stderr (and stdout with "w") is the terminal's until close
  f._c, f._p = c, p
  return setmetatable(f, file_mt)
end

-- }====

-- {==== io.type and io.close know these handles ====

function M.type(...)
  local f = ...
  if is_file(f) then return f._closed and "closed file" or "file" end
  return orig.type(...)
end

function M.close(...)
  local f = ...
  if is_file(f) then return f:close() end
  return orig.close(...)
end

-- }====

--- Put the wrappers in place of Lua's functions (the scenario state; in
--- module mode, at require "atom": outside tasks they call Lua's own).
function M.install()
  os.execute, io.popen, io.type, io.close = M.execute, M.popen, M.type, M.close -- luacheck: ignore 122
end

return M
