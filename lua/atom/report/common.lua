-- atom.report.common: what the three reporters share — turning a failed
-- test's raw error and private `_` fields into plain data, and text hygiene
-- (UTF-8 repair, durations). It formats nothing for a particular output.
local M = {}

--- Seconds as the console and JUnit show them ("0.42s" / "0.420").
---@param secs number|nil
function M.secs(secs) return ("%.2fs"):format(tonumber(secs) or 0) end

--- `s` with every byte that is not part of a valid UTF-8 sequence replaced
--- by U+FFFD. Lua's strict decoder also rejects surrogates and overlong forms,
--- which XML and JSON reject too.
---@param s string
function M.utf8_repair(s)
  if utf8.len(s) then return s end
  local out, i = {}, 1
  while true do
    local ok, bad = utf8.len(s, i)
    if ok then out[#out + 1] = s:sub(i); break end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    i = bad + 1
  end
  return table.concat(out)
end

--- Split "file:line" into file and integer line (nil, nil when it is not one).
---@param where string|nil
function M.split_where(where)
  if type(where) ~= "string" then return nil, nil end
  local file, line = where:match("^(.-):(%d+)$")
  return file, tonumber(line) and math.tointeger(tonumber(line))
end

-- Lua's position prefix "short_src:line: " of a string error.
local function split_prefix(s)
  local file, line, rest = s:match("^([^\n]-):(%d+): (.*)$")
  if file and file ~= "" then return file .. ":" .. line, rest end
  return nil, s
end

--- The public SPEC §8 error {kind, message, file, line, task} of a raw error
--- value (an atom error table, a plain table, a string or anything else),
--- with `where` ("file:line") and `task` from the runner taking precedence.
---@param raw any the error value as raised
---@param where string|nil "file:line" the runner attributed it to
---@param task string|nil the task it ended
function M.public_error(raw, where, task)
  local kind, message, rwhere, rtask = "error", nil, nil, nil -- luacheck: ignore 311
  if type(raw) == "table" then
    kind = raw.kind ~= nil and tostring(raw.kind) or "error"
    rwhere, rtask = raw.where, raw.task
    if raw.message ~= nil then message = tostring(raw.message) else
      local ok, s = pcall(tostring, raw)
      message = ok and s or "(error object)"
    end
  else
    message = tostring(raw)
    -- A user error("x") carries its own position; drop it when it repeats
    -- `where`, or adopt it when the runner gave none.
    local pos, rest = split_prefix(message)
    if pos and (where == nil or pos == where) then rwhere, message = pos, rest end
  end
  where = where or rwhere
  local file, line = M.split_where(where)
  return { kind = kind, message = message, file = file or where, line = line,
           task = task or (rtask ~= nil and tostring(rtask) or nil) }
end

--- The public error of a test_end / scenario_end event, or nil: the runner's
--- own `error` field when it is already plain data, else built from `_error`.
---@param ev table
function M.error_of(ev)
  local e = ev.error
  if type(e) == "table" and getmetatable(e) == nil and e.message ~= nil then
    return { kind = e.kind or "error", message = tostring(e.message), file = e.file,
             line = e.line, task = e.task or ev._task }
  end
  local raw = ev._error
  if raw == nil then raw = e end
  if raw == nil then return nil end
  return M.public_error(raw, ev._where, ev._task)
end

-- Traceback frames of atom itself or of C, which users cannot act on.
local INTERNAL = { "^%[C%]", "^lua/atom/", "/lua/atom/", "^%(%.%.%.tail calls%.%.%.%)" }
local function internal_frame(line)
  for _, p in ipairs(INTERNAL) do
    if line:find(p) then return true end
  end
  return false
end

--- The frames of a traceback that point into scripts (no "stack traceback:"
--- header, no atom or C frames), trimmed.
---@param tb string|nil
---@return string[]
function M.script_frames(tb)
  local frames = {}
  if type(tb) ~= "string" then return frames end
  -- debug.traceback(msg) starts with the message, which the report shows
  -- already; a cancellation's cheap traceback is only its "file:line",
  -- which is the error's position: neither is a frame worth repeating.
  local body = tb:match("\nstack traceback:\n(.*)$") or tb:match("^stack traceback:\n(.*)$")
  if not body then return frames end
  for line in body:gmatch("[^\n]+") do
    line = line:match("^%s*(.-)%s*$")
    if line ~= "" and not internal_frame(line) then
      frames[#frames + 1] = line
    end
  end
  return frames
end

--- Lines longer than this many bytes are cut in failure reports (a process
--- printing a 1 MB JSON line must not flood the console or JUnit).
M.LINE_MAX = 500

--- `s` with each line longer than LINE_MAX bytes cut (at a UTF-8 character
--- boundary) and marked "… (N more bytes)".
---@param s any
function M.cut_lines(s)
  s = tostring(s)
  if #s <= M.LINE_MAX then return s end
  return (s:gsub("[^\n]+", function(l)
    if #l <= M.LINE_MAX then return nil end
    local n = M.LINE_MAX
    while n > 0 and (l:byte(n + 1) or 0) & 0xC0 == 0x80 do n = n - 1 end
    return l:sub(1, n) .. ("… (%d more bytes)"):format(#l - n)
  end))
end

-- A process's log tail with its long lines cut.
local function cut_tail(t)
  if type(t) ~= "table" or type(t.lines) ~= "table" then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  out.lines = {}
  for i, l in ipairs(t.lines) do out.lines[i] = M.cut_lines(l) end
  return out
end

local function strings(list)
  local out = {}
  if type(list) == "table" then
    -- errors copied from a scenario's Lua state carry their text in _str
    for _, v in ipairs(list) do out[#out + 1] = type(v) == "table" and v._str or tostring(v) end
  end
  return out
end

--- Everything a failure report shows, as plain data:
--- {error=, where=, task=, frames={...}, cleanup={...}, also={...},
---  forensics={...}, rpc={request=, response=}|nil, tails={{name=, lines=, log=}}}.
---@param ev table a failed test_end or an error scenario_end
function M.failure(ev)
  local err = M.error_of(ev) or { kind = "error", message = "(no error recorded)" }
  local raw = ev._error
  local where = ev._where
  if not where and err.file then
    where = err.line and (err.file .. ":" .. err.line) or err.file
  end
  local tb = ev._traceback
  if tb == nil and type(raw) == "table" then
    local ok, v = pcall(function() return raw.traceback end)
    tb = ok and v or nil
  end
  local cleanup = strings(ev._cleanup_errors)
  if #cleanup == 0 and type(raw) == "table" then cleanup = strings(raw.cleanup_errors) end
  local rpc = type(ev._last_rpc) == "table" and ev._last_rpc or nil
  local tails = {}
  for _, t in ipairs(type(ev._tails) == "table" and ev._tails or {}) do tails[#tails + 1] = cut_tail(t) end
  -- A process error quotes its process's tail; when the block lists that
  -- tail anyway, the error's first line is enough (the tail shows once).
  if err.kind == "process" and type(raw) == "table" and raw.process ~= nil then
    for _, t in ipairs(tails) do
      if t.name == raw.process then
        err = { kind = err.kind, message = err.message:match("^[^\n]*"), file = err.file,
          line = err.line, task = err.task }
        break
      end
    end
  end
  err.message = M.cut_lines(err.message)
  return {
    error = err, where = where, task = err.task, frames = M.script_frames(tb),
    cleanup = cleanup, also = type(raw) == "table" and strings(raw.also) or {},
    forensics = strings(ev._forensics), rpc = rpc, tails = tails,
  }
end

--- "file:line: message", or the message alone without a position.
---@param f table as returned by M.failure
function M.error_line(f)
  if f.where then return f.where .. ": " .. f.error.message end
  return f.error.message
end

-- Shell-quote one argument so the seed line can be pasted back.
local function shquote(a)
  a = tostring(a)
  if a:match("^[%w%._/:=@%%+,-]+$") then return a end
  return "'" .. a:gsub("'", "'\\''") .. "'"
end

-- Options whose value is the next argument (so a value "--seed" is kept).
local VALUED = { ["--timeout"] = true, ["--grace"] = true, ["--filter"] = true,
  ["--junit"] = true, ["--events"] = true, ["--workdir"] = true, ["--reactor"] = true,
  ["--html"] = true, ["--shard"] = true }

--- The command that re-runs with `seed`: argv with any --seed replaced by
--- `--seed N` right after the command word.
---@param argv string[] the original arguments after the program name
---@param seed integer|string
function M.rerun_command(argv, seed)
  argv = argv or {}
  local cmd, i = "run", 1
  if argv[1] == "run" or argv[1] == "trace" then cmd, i = argv[1], 2 end
  local out = { "atomlua", cmd, "--seed", tostring(seed) }
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i, #argv do out[#out + 1] = shquote(argv[j]) end
      break
    elseif a == "--seed" then
      i = i + 1 -- drop the option and its value
    elseif not a:find("^%-%-seed=") then
      out[#out + 1] = shquote(a)
      if VALUED[a] and argv[i + 1] then i = i + 1; out[#out + 1] = shquote(argv[i]) end
    end
    i = i + 1
  end
  return table.concat(out, " ")
end

return M
