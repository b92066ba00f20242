-- atom.history: recording what concurrent clients saw, and asking whether a
-- single-copy order explains it (SPEC §12). A library on the public `atom`
-- module only: the search itself is atom.linearizable (src/lincheck.c), which
-- runs on a worker thread while the loop keeps serving.
local atom = require "atom"

local json = atom.json
local M = {}

local History, Op, Result = {}, {}, {}
History.__index, Op.__index, Result.__index = History, Op, Result

local function usage(msg) error(atom.error("usage", msg), 0) end

local function checkarg(n, fname, v, want)
  local t = type(v)
  if not want:find(t, 1, true) then
    usage(("bad argument #%d to '%s' (%s expected, got %s)"):format(n, fname, want:gsub("|", " or "),
      v == nil and "no value" or t))
  end
end

local function now_ns() return math.floor(atom.now() * 1e9) end

--- A new, empty history.
function M.new(name)
  checkarg(1, "history", name, "string|nil")
  return setmetatable({ name = name, events = {}, open = {}, gone = {} }, History)
end

local function add(h, ev)
  ev.index = #h.events
  h.events[#h.events + 1] = ev
  return ev
end

--- Record an invocation by `process` of `f` with `value`; returns the open op.
function History:invoke(process, f, value)
  checkarg(1, "invoke", process, "number|string")
  checkarg(2, "invoke", f, "string")
  if math.type(process) == "float" then usage("invoke: process must be an integer or a string") end
  local open = self.open[process]
  if open then
    usage(("invoke: process %s already has an open operation (%s, event %d); one at a time per process")
      :format(atom.repr(process), open.f, open.index))
  end
  if self.gone[process] then
    usage(("invoke: process %s ended with info (its client may still act); use a new process id")
      :format(atom.repr(process)))
  end
  local ev = add(self, { type = "invoke", process = process, f = f, value = value, time = now_ns() })
  local op = setmetatable({ history = self, process = process, f = f, value = value, index = ev.index },
    Op)
  self.open[process] = op
  return op
end

local function complete(op, type_, has_value, value, reason)
  local h = op.history
  if op.type then
    usage(("%s: the operation (process %s %s, event %d) is already %s"):format(type_,
      atom.repr(op.process), op.f, op.index, op.type))
  end
  op.type = type_
  h.open[op.process] = nil
  if type_ == "info" then h.gone[op.process] = true end
  if reason ~= nil and type(reason) ~= "string" then reason = tostring(reason) end
  local ev = add(h, { type = type_, process = op.process, f = op.f, time = now_ns(), error = reason })
  if has_value then ev.value = value else ev.value = op.value end
  op.completion = ev.index
  return op
end

--- It happened; `value` is the result (a read's value). Without an argument
--- the invocation's value is kept.
function Op:ok(...)
  return complete(self, "ok", select("#", ...) > 0, (...))
end

--- It definitely did not happen (or, for a cas, the compare failed).
function Op:fail(reason) return complete(self, "fail", false, nil, reason) end

--- Unknown whether it happened (a timeout): it may take effect any time after
--- its invocation, or never.
function Op:info(reason) return complete(self, "info", false, nil, reason) end

--- Invoke, call fn(op) in this task, record ok with fn's first result unless
--- fn completed op itself; on an error (a cancellation included) record info
--- and re-raise. Returns fn's results.
function History:run(process, f, value, fn)
  checkarg(4, "run", fn, "function|table")
  local op = self:invoke(process, f, value)
  local r = table.pack(pcall(fn, op))
  if not r[1] then
    if not op.type then complete(op, "info", false, nil, r[2]) end
    error(r[2], 0)
  end
  if not op.type then complete(op, "ok", true, r[2]) end
  return table.unpack(r, 2, r.n)
end

--- The events recorded so far (a copy of the list; the events themselves are shared).
function History:ops()
  return table.move(self.events, 1, #self.events, 1, {})
end

-- {==== JSON lines ====

local function line(ev)
  local parts = { '{"index":', tostring(ev.index), ',"type":', json.encode(ev.type),
    ',"process":', json.encode(ev.process), ',"f":', json.encode(ev.f),
    ',"value":', ev.value == nil and "null" or json.encode(ev.value),
    ',"time":', tostring(ev.time or 0) }
  if ev.error ~= nil then
    parts[#parts + 1] = ',"error":'
    parts[#parts + 1] = json.encode(type(ev.error) == "string" and ev.error or tostring(ev.error))
  end
  parts[#parts + 1] = "}\n"
  return table.concat(parts)
end

--- Write the history as JSON lines (elle-cli / Jepsen field names); returns path.
function History:save(path)
  checkarg(1, "save", path, "string")
  local f, err = io.open(path, "w")
  if not f then error(atom.error("io", "save: " .. tostring(err)), 0) end
  local buf = {}
  for i, ev in ipairs(self.events) do
    buf[#buf + 1] = line(ev)
    if #buf == 512 or i == #self.events then
      f:write(table.concat(buf))
      buf = {}
    end
  end
  f:close()
  return path
end

-- JSON null inside a value reads as nil (a hole), as a nil value was saved.
local function denull(v)
  if v == json.null then return nil end
  if type(v) == "table" then
    for k, x in pairs(v) do
      if x == json.null then v[k] = nil else denull(x) end
    end
  end
  return v
end

--- Read a history saved by h:save (or any elle-cli / Jepsen JSON lines file).
function M.load(path)
  checkarg(1, "history.load", path, "string")
  local f, err = io.open(path, "r")
  if not f then error(atom.error("io", "history.load: " .. tostring(err)), 0) end
  local h = M.new(path:match("[^/]*$"))
  local n = 0
  for l in f:lines() do
    n = n + 1
    if l:find("%S") then
      local ok, ev = pcall(json.decode, l)
      if not ok or type(ev) ~= "table" then
        f:close()
        error(atom.error("usage", ("history.load: %s:%d: not a JSON object (%s)"):format(path, n,
          ok and type(ev) or tostring(ev))), 0)
      end
      if type(ev.type) ~= "string" or ev.process == nil or ev.process == json.null then
        f:close()
        usage(("history.load: %s:%d: an event needs type and process"):format(path, n))
      end
      ev.value = denull(ev.value)
      if ev.error == json.null then ev.error = nil end
      if type(ev.f) ~= "string" then ev.f = ev.f ~= nil and ev.f ~= json.null and tostring(ev.f) or nil end
      h.events[#h.events + 1] = ev
      ev.index = math.type(ev.index) == "integer" and ev.index or #h.events - 1
    end
  end
  f:close()
  return h
end

-- }====

-- {==== checking ====

-- Pair every invocation (by position) with its completion's position.
local function pairing(events)
  local done, open = {}, {}
  for i, ev in ipairs(events) do
    if ev.type == "invoke" then
      open[ev.process] = i
    elseif open[ev.process] then
      done[open[ev.process]] = i
      open[ev.process] = nil
    end
  end
  return done
end

-- The operation that began at event position i, as results show it.
local function describe(events, done, i)
  local inv = events[i]
  local c = done[i] and events[done[i]]
  return {
    process = inv.process, f = inv.f, value = inv.value,
    type = c and c.type or "info", output = c and c.type == "ok" and c.value or nil,
    error = c and c.error or nil,
    index = inv.index, time = inv.time, end_time = c and c.time or nil,
    completion = c and c.index or nil,
  }
end

--- Check linearizability: {model = "register"|"cas-register"|"kv"|table,
--- independent = bool, timeout = seconds (60)}.
function History:check(opts)
  checkarg(1, "check", opts, "table")
  local raw = atom.linearizable(self.events, opts)
  local res = setmetatable({ valid = raw.valid, ops = raw.ops, keys = raw.keys, seconds = raw.seconds,
    model = type(opts.model) == "string" and opts.model or "custom", history = self, _raw = raw,
    _opts = opts }, Result)
  if raw.counterexample then
    local events, done = self.events, pairing(self.events)
    local ce = raw.counterexample
    local function ops(list)
      local out = {}
      for k, i in ipairs(list) do out[k] = describe(events, done, i) end
      return out
    end
    res.counterexample = { key = ce.key, prefix = ops(ce.prefix), op = describe(events, done, ce.op),
      concurrent = ops(ce.concurrent) }
  end
  return res
end

local function opstr(op)
  local s = ("process %s %s %s"):format(atom.repr(op.process), op.f, atom.repr(op.value, 60))
  if op.type == "ok" and op.output ~= nil then s = s .. " -> " .. atom.repr(op.output, 60) end
  if op.type ~= "ok" then s = s .. " (" .. op.type .. ")" end
  return s .. (" [event %d]"):format(op.index)
end

function Result:__tostring()
  local head = ("%d operations, %d key%s, %.3fs"):format(self.ops, self.keys, self.keys == 1 and "" or "s",
    self.seconds)
  if self.valid == true then return "linearizable (" .. self.model .. "): " .. head end
  if self.valid == "unknown" then return "unknown (" .. self.model .. ", timed out or cancelled): " .. head end
  local ce = self.counterexample
  return ("not linearizable (%s): %s; %s%d operations linearize, then %s cannot follow (%d concurrent)")
    :format(self.model, head, ce.key ~= nil and ("key " .. atom.repr(ce.key, 40) .. ": ") or "", #ce.prefix,
      opstr(ce.op), #ce.concurrent)
end

--- Write a self-contained page showing the check (see docs/histories.md).
function Result:html(path)
  checkarg(1, "html", path, "string")
  return require("atom.history_html").write(self, path)
end

-- }====

return setmetatable(M, { __call = function(_, name) return M.new(name) end })
