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
  -- the verdict in the event log (and so in the --html report)
  atom.emit("history_check", { name = self.name, model = res.model, valid = res.valid, ops = res.ops,
    keys = res.keys, seconds = res.seconds, summary = tostring(res) })
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

-- {==== the HTML page ====

local function esc(v)
  return (tostring(v):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
    ["'"] = "&#39;" }))
end

local PAGE_LIMIT = 20000 -- operations drawn; the rest are counted

-- Which key (as a string) an invocation's value belongs to, as the check split it.
local function key_of(opts, value)
  if opts.model == "kv" then return type(value) == "table" and value.key or nil end
  if opts.independent then return type(value) == "table" and value[1] or nil end
  if type(opts.model) == "table" and opts.model.key then
    local ok, k = pcall(opts.model.key, { value = value })
    return ok and k or nil
  end
  return nil
end

local function page_data(res)
  local events, done = res.history.events, pairing(res.history.events)
  local opts, raw = res._opts, res._raw
  local step, bad_key = {}, nil
  for _, lin in ipairs(raw.linearizations or {}) do
    for k, pos in ipairs(lin.order) do step[pos] = k end
  end
  local role = {}
  if raw.counterexample then
    local ce = raw.counterexample
    bad_key = ce.key
    for k, pos in ipairs(ce.prefix) do step[pos] = k end
    role[ce.op] = "bad"
    for _, pos in ipairs(ce.concurrent) do role[pos] = "concurrent" end
  end
  local t0, t1 = math.huge, -math.huge
  for _, ev in ipairs(events) do
    if ev.time then t0 = math.min(t0, ev.time); t1 = math.max(t1, ev.time) end
  end
  if t0 == math.huge then t0, t1 = 0, 1 end
  local keys, byname, drawn, skipped = {}, {}, 0, 0
  for pos, ev in ipairs(events) do
    if ev.type == "invoke" then
      if drawn >= PAGE_LIMIT then
        skipped = skipped + 1
      else
        drawn = drawn + 1
        local op = describe(events, done, pos)
        local k = key_of(opts, op.value)
        local name = k == nil and "" or atom.repr(k, 60)
        local sec = byname[name]
        if not sec then
          sec = { key = name, ops = {}, bad = bad_key ~= nil and atom.repr(bad_key, 60) == name }
          byname[name] = sec
          keys[#keys + 1] = sec
        end
        sec.ops[#sec.ops + 1] = {
          p = atom.repr(op.process, 30), f = op.f, v = op.value ~= nil and atom.repr(op.value, 60) or "",
          o = op.output ~= nil and atom.repr(op.output, 60) or "", t = op.type, e = op.error and
            tostring(op.error) or nil, a = (op.time or t0) - t0, b = op.end_time and (op.end_time - t0) or nil,
          i = op.index, s = step[pos], r = role[pos],
        }
      end
    end
  end
  return { title = res.history.name or "history", verdict = tostring(res), valid = res.valid,
    span = math.max(t1 - t0, 1), keys = json.array(keys), skipped = skipped }
end

local PAGE = [==[<!doctype html>
<html><head><meta charset="utf-8"><title>%TITLE%</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px} .verdict{margin:0 0 12px;font-family:monospace}
.ok{color:#1a7f37}.bad{color:#cf222e}.unk{color:#9a6700}
section{margin:14px 0;border-top:1px solid #ddd;padding-top:8px}
h2{font-size:14px;margin:4px 0} svg{display:block;overflow:visible}
.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:middle}
#tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;padding:4px 6px;
font:12px monospace;white-space:pre;display:none;box-shadow:2px 2px 6px #0003}
ol{font-family:monospace;font-size:12px;max-height:18em;overflow:auto}
li.badop{color:#cf222e;font-weight:bold}
</style></head><body>
<h1>%TITLE%</h1><p class="verdict" id="verdict"></p>
<p class="legend"><span><i class="sw" style="background:#8fd19e"></i>ok</span>
<span><i class="sw" style="background:#f6c177"></i>info (may take effect any time after its start, or never)</span>
<span><i class="sw" style="background:#ccc"></i>fail / not checked</span>
<span><i class="sw" style="border:2px solid #cf222e"></i>cannot follow the linearization</span>
<span><i class="sw" style="border:2px dashed #bc4c00"></i>concurrent with it</span>
<span>numbers: position in the linearization found (the longest one, where it breaks)</span></p>
<div id="main"></div><div id="tip"></div>
<script>
const D = %DATA%;
const W = Math.max(600, window.innerWidth - 80), ROW = 26, LEFT = 90;
const tip = document.getElementById('tip');
const v = document.getElementById('verdict');
v.textContent = D.verdict;
v.className = 'verdict ' + (D.valid === true ? 'ok' : D.valid === false ? 'bad' : 'unk');
const NS = 'http://www.w3.org/2000/svg';
function el(tag, attrs, parent) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function label(o) {
  let s = o.f + (o.v !== '' ? ' ' + o.v : '');
  if (o.o !== '') s += ' → ' + o.o;
  return s;
}
const main = document.getElementById('main');
const order = D.keys.slice().sort((a, b) => (b.bad ? 1 : 0) - (a.bad ? 1 : 0));
for (const sec of order) {
  const s = document.createElement('section');
  const h = document.createElement('h2');
  h.textContent = (sec.key === '' ? 'all operations' : 'key ' + sec.key) + ' — ' + sec.ops.length +
    ' operations' + (sec.bad ? ' — NOT LINEARIZABLE' : '');
  if (sec.bad) h.className = 'bad';
  s.appendChild(h);
  const procs = [];
  for (const o of sec.ops) if (!procs.includes(o.p)) procs.push(o.p);
  const svg = el('svg', {width: W + LEFT, height: procs.length * ROW + 24}, s);
  const x = t => LEFT + (t / D.span) * W;
  procs.forEach((p, r) => {
    const t = el('text', {x: 4, y: r * ROW + 17, 'font-size': 12}, svg);
    t.textContent = 'process ' + p;
    el('line', {x1: LEFT, x2: LEFT + W, y1: r * ROW + ROW - 2, y2: r * ROW + ROW - 2, stroke: '#eee'}, svg);
  });
  for (const o of sec.ops) {
    const r = procs.indexOf(o.p);
    const end = o.b === null || o.b === undefined || o.t === 'info' ? D.span : o.b;
    const x0 = x(o.a), w = Math.max(3, x(end) - x0);
    const fill = o.t === 'ok' ? '#8fd19e' : o.t === 'info' ? '#f6c177' : '#ccc';
    const g = el('g', {}, svg);
    const rect = el('rect', {x: x0, y: r * ROW + 3, width: w, height: ROW - 8, rx: 3, fill: fill,
      stroke: o.r === 'bad' ? '#cf222e' : o.r === 'concurrent' ? '#bc4c00' : '#0003',
      'stroke-width': o.r ? 2.5 : 1, 'stroke-dasharray': o.r === 'concurrent' ? '5 3' : ''}, g);
    if (o.t === 'info') rect.setAttribute('fill-opacity', 0.5);
    if (w > 30) {
      const t = el('text', {x: x0 + 3, y: r * ROW + 16, 'font-size': 11}, g);
      t.textContent = (o.s ? '#' + o.s + ' ' : '') + label(o);
      if (t.getComputedTextLength && t.getComputedTextLength() > w - 4) t.textContent = o.s ? '#' + o.s : '';
    }
    g.addEventListener('mousemove', ev => {
      tip.style.display = 'block';
      tip.style.left = (ev.clientX + 12) + 'px';
      tip.style.top = (ev.clientY + 12) + 'px';
      tip.textContent = 'process ' + o.p + '\n' + label(o) + '\n' + o.t + (o.e ? ' (' + o.e + ')' : '') +
        '\nevent ' + o.i + '\n' + (o.a / 1e6).toFixed(3) + ' ms → ' +
        (o.b === null || o.b === undefined ? 'never' : (o.b / 1e6).toFixed(3) + ' ms') +
        (o.s ? '\nlinearized #' + o.s : '') + (o.r ? '\n' + (o.r === 'bad' ? 'CANNOT FOLLOW THE LINEARIZATION' : 'concurrent with it') : '');
    });
    g.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
  }
  const lin = sec.ops.filter(o => o.s).sort((a, b) => a.s - b.s);
  if (lin.length || sec.bad) {
    const d = document.createElement('details');
    if (sec.bad) d.open = true;
    const sm = document.createElement('summary');
    sm.textContent = (sec.bad ? 'longest linearizable prefix (' : 'linearization (') + lin.length + ' operations)';
    d.appendChild(sm);
    const ol = document.createElement('ol');
    for (const o of lin) {
      const li = document.createElement('li');
      li.textContent = 'process ' + o.p + ': ' + label(o) + ' [event ' + o.i + ']';
      ol.appendChild(li);
    }
    const bad = sec.ops.find(o => o.r === 'bad');
    if (bad) {
      const li = document.createElement('li');
      li.className = 'badop';
      li.textContent = 'cannot follow: process ' + bad.p + ': ' + label(bad) + ' [event ' + bad.i + ']';
      ol.appendChild(li);
    }
    d.appendChild(ol);
    s.appendChild(d);
  }
  main.appendChild(s);
}
if (D.skipped) {
  const p = document.createElement('p');
  p.textContent = D.skipped + ' more operations are not drawn.';
  main.appendChild(p);
}
</script></body></html>
]==]

--- Write a self-contained page showing the check (see docs/histories.md):
--- each key's operations per process on a time axis, the linearization
--- found and, when there is none, where it breaks. Returns path.
function Result:html(path)
  checkarg(1, "html", path, "string")
  local data = json.encode(page_data(self)):gsub("</", "<\\/")
  local title = esc("atomlua history " .. (self.history.name or ""))
  local page = PAGE:gsub("%%TITLE%%", function() return title end)
    :gsub("%%DATA%%", function() return data end)
  local f, err = io.open(path, "w")
  if not f then error(atom.error("io", "html: " .. tostring(err)), 0) end
  local ok, werr = f:write(page)
  local cok, cerr = f:close()
  if not ok or not cok then error(atom.error("io", ("html: cannot write %s: %s"):format(path, tostring(werr or cerr))), 0) end
  atom.emit("history_page", { name = self.history.name, path = path })
  return path
end

-- }====

return setmetatable(M, { __call = function(_, name) return M.new(name) end })
