-- atom.report.html: the `--html PATH` page and `atomlua report EVENTS --html
-- PATH` (one self-contained page: inline CSS, JS and SVG, no network). It
-- renders from event records only (as --events writes them), so a saved log
-- gives the same page as the live run. Ticks of many calls are decimated so
-- 10,000 events stay well under 2 MB.
local common = require("atom.report.common")

local M = {}
M.__index = M

local format, concat, floor, max, min = string.format, table.concat, math.floor, math.max, math.min

local MAX_TICKS = 1500      -- call ticks drawn; beyond, successes are binned
local TAIL_LINES = 20
local LINE_MAX = 500

local function esc(s)
  s = tostring(s == nil and "" or s)
  s = common.utf8_repair and common.utf8_repair(s) or s
  return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" })
    :gsub("[%z\1-\8\11\12\14-\31]", "?"))
end

local function cut(s)
  s = tostring(s)
  if #s > LINE_MAX then return s:sub(1, LINE_MAX) .. " …[cut]" end
  return s
end

local function secs(t) return format("%.2fs", t or 0) end

local function err_text(e)
  if type(e) ~= "table" then return e and tostring(e) or "" end
  local where = e.file and (e.line and (e.file .. ":" .. e.line) or e.file)
  return (where and (where .. ": ") or "") .. tostring(e.message or e.kind or "")
end

-- A fault's detail on one line: "node=1 signal=KILL", lists as a,b.
local function flat(v)
  if type(v) ~= "table" then return v == nil and "" or tostring(v) end
  local keys, parts = {}, {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(keys) do
    local x = type(v[k]) == "table" and "[" .. flat(v[k]) .. "]" or tostring(v[k])
    parts[#parts + 1] = math.type(k) == "integer" and x or (tostring(k) .. "=" .. x)
  end
  return concat(parts, " ")
end

-- {==== the model: lanes and marks from the records ====

local function build(records)
  local m = { tests = {}, procs = {}, ticks = {}, faults = {}, failures = {}, histories = {},
    scenarios = {}, t_end = 0 }
  local open_tests, open_procs = {}, {}
  for _, ev in ipairs(records) do
    local t = tonumber(ev.t) or 0
    if t > m.t_end then m.t_end = t end
    local ty = ev.type
    if ty == "run_start" then
      m.start = ev
    elseif ty == "run_end" then
      m.finish = ev
    elseif ty == "scenario_end" and ev.status == "error" and not ev.tests_failed_instead then
      m.failures[#m.failures + 1] = { name = "(scenario) " .. tostring(ev.file), ev = ev }
    elseif ty == "test_start" then
      local lane = { name = ev.name, file = ev.file, t0 = t, status = "running" }
      m.tests[#m.tests + 1] = lane
      open_tests[tostring(ev.file) .. "\0" .. tostring(ev.name)] = lane
    elseif ty == "test_end" then
      local key = tostring(ev.file) .. "\0" .. tostring(ev.name)
      local lane = open_tests[key]
      if not lane then -- skipped tests have only their end
        lane = { name = ev.name, file = ev.file, t0 = t }
        m.tests[#m.tests + 1] = lane
      end
      open_tests[key] = nil
      lane.t1, lane.status, lane.error = t, ev.status, ev.error
      if ev.status == "failed" then m.failures[#m.failures + 1] = { name = ev.name, ev = ev } end
    elseif ty == "process_spawn" then
      local lane = { name = ev.name, pid = ev.pid, argv = ev.argv, t0 = t, pauses = {} }
      m.procs[#m.procs + 1] = lane
      open_procs[ev.pid] = lane
    elseif ty == "process_ready" then
      local lane = open_procs[ev.pid]
      if lane and not lane.ready then lane.ready = t end
    elseif ty == "process_pause" then
      local lane = open_procs[ev.pid]
      if lane then lane.pauses[#lane.pauses + 1] = { t0 = t } end
    elseif ty == "process_resume" then
      local lane = open_procs[ev.pid]
      local p = lane and lane.pauses[#lane.pauses]
      if p and not p.t1 then p.t1 = t end
    elseif ty == "process_exit" then
      local lane = open_procs[ev.pid]
      if lane then
        open_procs[ev.pid] = nil
        lane.t1, lane.code, lane.signal, lane.expected = t, ev.code, ev.signal, ev.expected
        lane.ended = true
      end
    elseif ty == "http" or ty == "rpc" or ty == "grpc" or ty == "ws" then
      local label = ty == "http" and format("%s %s → %s", tostring(ev.method), tostring(ev.url), tostring(ev.status))
        or ty == "grpc" and format("grpc %s %s → %s", tostring(ev.target), tostring(ev.method), tostring(ev.status))
        or format("%s %s %s", ty, tostring(ev.url or ev.target or ""), tostring(ev.method or ""))
      m.ticks[#m.ticks + 1] = { t = t, kind = ty, bad = type(ev.error) == "table",
        label = label, err = ev.error, dur = tonumber(ev.duration) }
    elseif ty == "fault" then
      m.faults[#m.faults + 1] = { t = t, label = tostring(ev.action or "fault") .. " " .. flat(ev.detail) ..
        (type(ev.cluster) == "string" and (" (cluster " .. ev.cluster .. ")") or "") }
    elseif ty == "history_check" then
      m.histories[#m.histories + 1] = ev
    elseif ty == "history_page" then
      for i = #m.histories, 1, -1 do
        if m.histories[i].name == ev.name and not m.histories[i].html then m.histories[i].html = ev.path; break end
      end
    end
  end
  for _, lane in pairs(open_tests) do lane.t1 = m.t_end end
  for _, lane in pairs(open_procs) do lane.t1 = m.t_end end
  if m.t_end <= 0 then m.t_end = 1 end
  return m
end

-- Keep every failed call and at most MAX_TICKS in all: the rest are counted
-- into bins, one mark per bin with its count.
local function decimate(ticks, t_end)
  if #ticks <= MAX_TICKS then return ticks, {} end
  local keep, bins = {}, {}
  local nb = 400
  for _, k in ipairs(ticks) do
    if k.bad and #keep < MAX_TICKS then
      keep[#keep + 1] = k
    else
      local b = min(nb - 1, floor(k.t / t_end * nb))
      bins[b] = (bins[b] or 0) + 1
    end
  end
  local out = {}
  for b, n in pairs(bins) do out[#out + 1] = { t = (b + 0.5) * t_end / nb, n = n } end
  table.sort(out, function(a, b) return a.t < b.t end)
  return keep, out
end

-- }====

-- {==== SVG timeline ====

local W, LABEL, ROW = 1000, 180, 18

local function x(t, t_end) return LABEL + (W - LABEL - 10) * (t / t_end) end

local function timeline(m)
  local out = {}
  local rows = #m.tests + #m.procs + 1
  local h = 30 + rows * ROW + 20
  out[#out + 1] = format('<svg id="tl" viewBox="0 0 %d %d" width="100%%" preserveAspectRatio="none" ' ..
    'xmlns="http://www.w3.org/2000/svg" data-t-end="%.6f" data-label="%d" data-w="%d">', W, h, m.t_end, LABEL, W)
  -- axis
  local step = 10 ^ floor(math.log(m.t_end, 10))
  if m.t_end / step < 3 then step = step / 5 elseif m.t_end / step < 6 then step = step / 2 end
  out[#out + 1] = '<g class="axis">'
  local t = 0
  while t <= m.t_end + 1e-9 do
    local px = x(t, m.t_end)
    out[#out + 1] = format('<line x1="%.1f" y1="18" x2="%.1f" y2="%d"/><text x="%.1f" y="12">%s</text>',
      px, px, h - 10, px, esc(format("%gs", floor(t * 1000 + 0.5) / 1000)))
    t = t + step
  end
  out[#out + 1] = "</g>"
  local y = 30
  local function label(text, cls)
    out[#out + 1] = format('<text class="lbl %s" x="4" y="%d">%s</text>', cls, y + 12, esc(cut(text):sub(1, 28)))
  end
  for _, tl in ipairs(m.tests) do
    label(tl.name, "test")
    local x0, x1 = x(tl.t0, m.t_end), x(tl.t1 or tl.t0, m.t_end)
    out[#out + 1] = format('<rect class="test %s" x="%.1f" y="%d" width="%.1f" height="%d"><title>%s</title></rect>',
      esc(tl.status), x0, y + 2, max(2, x1 - x0), ROW - 4,
      esc(format("test %s: %s (%s → %s)%s", tl.name, tl.status, secs(tl.t0), secs(tl.t1),
        tl.error and ("\n" .. cut(err_text(tl.error))) or "")))
    y = y + ROW
  end
  for _, p in ipairs(m.procs) do
    label(p.name, "proc")
    local x0, x1 = x(p.t0, m.t_end), x(p.t1 or p.t0, m.t_end)
    local ending = p.ended and (p.expected == false and "crashed" or (p.signal == "KILL" and "killed" or "stopped"))
      or "running"
    local how = type(p.code) == "number" and ("code " .. p.code)
      or (type(p.signal) == "string" and ("signal " .. p.signal)) or "still running"
    out[#out + 1] = format('<rect class="proc %s" x="%.1f" y="%d" width="%.1f" height="%d"><title>%s</title></rect>',
      ending, x0, y + 2, max(2, x1 - x0), ROW - 4,
      esc(format("process %s (pid %s): %s, %s\n%s → %s%s", p.name, tostring(p.pid), ending, how, secs(p.t0),
        secs(p.t1), p.argv and ("\n" .. cut(concat(p.argv, " "))) or "")))
    if p.ready then
      out[#out + 1] = format('<rect class="ready" x="%.1f" y="%d" width="3" height="%d"><title>ready at %s</title></rect>',
        x(p.ready, m.t_end), y + 2, ROW - 4, secs(p.ready))
    end
    for _, ps in ipairs(p.pauses) do
      local a, b = x(ps.t0, m.t_end), x(ps.t1 or p.t1 or m.t_end, m.t_end)
      out[#out + 1] = format('<rect class="paused" x="%.1f" y="%d" width="%.1f" height="%d"><title>paused %s → %s</title></rect>',
        a, y + 2, max(2, b - a), ROW - 4, secs(ps.t0), secs(ps.t1))
    end
    y = y + ROW
  end
  label("calls", "calls")
  local keep, bins = decimate(m.ticks, m.t_end)
  for _, k in ipairs(keep) do
    out[#out + 1] = format('<line class="tick %s" x1="%.1f" x2="%.1f" y1="%d" y2="%d"><title>%s</title></line>',
      k.bad and "bad" or "ok", x(k.t, m.t_end), x(k.t, m.t_end), y + 2, y + ROW - 2,
      esc(format("%s at %s%s%s", cut(k.label), secs(k.t), k.dur and format(" (%.1f ms)", k.dur * 1000) or "",
        k.bad and ("\n" .. cut(err_text(k.err))) or "")))
  end
  for _, b in ipairs(bins) do
    out[#out + 1] = format('<line class="tick ok" x1="%.1f" x2="%.1f" y1="%d" y2="%d"><title>%d calls</title></line>',
      x(b.t, m.t_end), x(b.t, m.t_end), y + 2, y + ROW - 2, b.n)
  end
  for _, f in ipairs(m.faults) do
    local px = x(f.t, m.t_end)
    out[#out + 1] = format('<line class="fault" x1="%.1f" x2="%.1f" y1="18" y2="%d"><title>%s at %s</title></line>',
      px, px, h - 10, esc(f.label), secs(f.t))
  end
  out[#out + 1] = "</svg>"
  return concat(out, "\n")
end

-- }====

-- {==== failures and histories ====

local function failure_html(f)
  local ev = f.ev
  local d = ev.details or {}
  local out = { format('<section class="failure"><h3>✗ %s</h3>', esc(f.name)) }
  out[#out + 1] = format('<pre class="err">%s</pre>', esc(cut(err_text(ev.error))))
  if type(d.frames) == "table" and #d.frames > 0 then
    out[#out + 1] = "<details><summary>traceback</summary><pre>" .. esc(concat(d.frames, "\n")) .. "</pre></details>"
  end
  for _, key in ipairs { "forensics", "cleanup", "also" } do
    if type(d[key]) == "table" and #d[key] > 0 then
      local items = {}
      for _, v in ipairs(d[key]) do items[#items + 1] = "<li>" .. esc(cut(v)) .. "</li>" end
      out[#out + 1] = format("<h4>%s</h4><ul>%s</ul>", key, concat(items))
    end
  end
  if type(d.rpc) == "table" then
    out[#out + 1] = format("<h4>last RPC</h4><pre>%s\n%s</pre>", esc(cut(d.rpc.request)), esc(cut(d.rpc.response)))
  end
  for _, tail in ipairs(type(d.tails) == "table" and d.tails or {}) do
    local lines = {}
    local from = max(1, #(tail.lines or {}) - TAIL_LINES + 1)
    for i = from, #(tail.lines or {}) do lines[#lines + 1] = esc(cut(tail.lines[i])) end
    out[#out + 1] = format('<h4>%s%s</h4><pre class="tail">%s</pre>', esc(tail.name),
      tail.log and (" — " .. esc(tail.log)) or "", #lines > 0 and concat(lines, "\n") or "(no output)")
  end
  out[#out + 1] = "</section>"
  return concat(out, "\n")
end

local function history_html(h)
  local ok = h.valid == true
  local verdict = ok and "linearizable" or (h.valid == "unknown" and "unknown (timed out or cancelled)")
    or "not linearizable"
  return format('<section class="history %s"><h3>%s history %s: %s</h3><p>%s%s</p></section>',
    ok and "ok" or "bad", ok and "✓" or "✗", esc(type(h.name) == "string" and h.name or ""), verdict,
    esc(cut(h.summary or ("model " .. tostring(h.model) .. ", " .. tostring(h.ops) .. " operations"))),
    type(h.html) == "string" and (' — <a href="file://' .. esc(h.html) .. '">the history page</a>') or "")
end

-- }====

local CSS = [[
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:20px}.sum span{margin-right:1.2em}.pass{color:#1a7f37}.fail{color:#cf222e}
code,pre{font:12px/1.35 ui-monospace,monospace}pre{background:#f6f8fa;padding:.6em;overflow:auto;max-height:24em}
#tlwrap{border:1px solid #ddd;overflow:hidden;cursor:grab}svg text{font:11px sans-serif}
.axis line{stroke:#eee}.axis text{fill:#888}.lbl{fill:#333}
rect.test.passed{fill:#8fd19e}rect.test.failed{fill:#f19a9a}rect.test.skipped{fill:#ccc}rect.test.running{fill:#f5d97a}
rect.proc.stopped{fill:#9cc3f0}rect.proc.killed{fill:#b79cf0}rect.proc.crashed{fill:#f0a35c}rect.proc.running{fill:#9cc3f0}
rect.ready{fill:#1a7f37}rect.paused{fill:#555;opacity:.45}
line.tick.ok{stroke:#4a90d9}line.tick.bad{stroke:#cf222e;stroke-width:2}line.fault{stroke:#cf222e;stroke-dasharray:4 3}
.failure{border-left:4px solid #cf222e;padding-left:1em;margin:1em 0}.history.ok h3{color:#1a7f37}.history.bad h3{color:#cf222e}
.hint{color:#888;font-size:12px}
]]

-- Zoom with the wheel, pan by dragging, double-click resets: only the time
-- axis moves (the viewBox's x range), labels stay readable on hover.
local JS = [[
(function(){var s=document.getElementById('tl');if(!s)return;var vb=s.viewBox.baseVal;
var W=vb.width,x0=0,w=W;function set(){vb.x=x0;vb.width=w;}
s.parentNode.addEventListener('wheel',function(e){e.preventDefault();var r=s.getBoundingClientRect();
var fx=(e.clientX-r.left)/r.width,at=x0+fx*w;w=Math.max(20,Math.min(W,w*(e.deltaY<0?0.8:1.25)));
x0=Math.max(0,Math.min(W-w,at-fx*w));set();},{passive:false});
var drag=null;s.addEventListener('mousedown',function(e){drag=[e.clientX,x0];});
window.addEventListener('mouseup',function(){drag=null;});
window.addEventListener('mousemove',function(e){if(!drag)return;var r=s.getBoundingClientRect();
x0=Math.max(0,Math.min(W-w,drag[1]-(e.clientX-drag[0])/r.width*w));set();});
s.addEventListener('dblclick',function(){x0=0;w=W;set();});})();
]]

--- The whole page for `records` (event records in order).
---@param records table[]
---@return string html
function M.render(records)
  local m = build(records)
  local fin = m.finish or {}
  local passed, failed, skipped = fin.passed or 0, fin.failed or 0, fin.skipped or 0
  if not m.finish then -- a log cut short: count what it has
    for _, tl in ipairs(m.tests) do
      if tl.status == "passed" then passed = passed + 1
      elseif tl.status == "failed" then failed = failed + 1
      elseif tl.status == "skipped" then skipped = skipped + 1 end
    end
  end
  local start = m.start or {}
  local repro = start.command
  local out = { '<!DOCTYPE html><html><head><meta charset="utf-8"><title>atomlua report</title><style>', CSS,
    "</style></head><body>" }
  out[#out + 1] = format('<h1>atomlua run%s</h1>', start.argv and (": " .. esc(cut(concat(start.argv, " ")))) or "")
  out[#out + 1] = format('<p class="sum"><span class="pass">%d passed</span><span class="%s">%d failed</span>' ..
    '<span>%d skipped</span><span>%s</span><span>exit %s%s</span></p>', passed, failed > 0 and "fail" or "",
    failed, skipped, secs(m.t_end), esc(fin.exit or "?"), fin.reason and fin.reason ~= "done" and
    (" (" .. esc(fin.reason) .. ")") or "")
  if repro then out[#out + 1] = "<p>reproduce: <code>" .. esc(repro) .. "</code></p>" end
  out[#out + 1] = '<h2>Timeline</h2><p class="hint">wheel: zoom · drag: pan · double-click: reset · hover: details</p>'
  out[#out + 1] = '<div id="tlwrap">' .. timeline(m) .. "</div>"
  if #m.failures > 0 then
    out[#out + 1] = "<h2>Failures</h2>"
    for _, f in ipairs(m.failures) do out[#out + 1] = failure_html(f) end
  end
  if #m.histories > 0 then
    out[#out + 1] = "<h2>Histories</h2>"
    for _, h in ipairs(m.histories) do out[#out + 1] = history_html(h) end
  end
  out[#out + 1] = "<script>" .. JS .. "</script></body></html>\n"
  return concat(out, "\n")
end

--- Read an NDJSON events log into records; raises a string naming the line
--- that is not JSON.
---@param path string
---@return table[]
function M.read_log(path)
  local json = require("atom.json")
  local f, err = io.open(path, "rb")
  if not f then error(("cannot read %s: %s"):format(path, tostring(err):gsub("^[^:]*: ", "")), 0) end
  local records, n = {}, 0
  for line in f:lines() do
    n = n + 1
    if line:match("%S") then
      local ok, rec = pcall(json.decode, line)
      if not ok or type(rec) ~= "table" then
        f:close()
        error(("%s:%d: not an event (JSON object) line"):format(path, n), 0)
      end
      records[#records + 1] = rec
    end
  end
  f:close()
  return records
end

--- Write the page for `records` to `path`; returns true, or nil and why.
function M.write(path, records)
  local f, err = io.open(path, "w")
  if not f then return nil, err end
  local ok, werr = f:write(M.render(records))
  local cok, cerr = f:close()
  if not ok then return nil, werr end
  if not cok then return nil, cerr end
  return true
end

--- A reporter for --html: keeps every event exactly as --events would write
--- it (encoded and decoded again), and renders the page at the end.
---@param opts table {path = string}
function M.new(opts)
  return setmetatable({ path = opts.path, records = {}, last_t = 0, saw_run_end = false }, M)
end

function M:on_event(ev)
  local json = require("atom.json")
  self.records[#self.records + 1] = json.decode(require("atom.report.events").line(self, ev))
end

function M:finish(summary)
  local evs = require("atom.report.events")
  if not self.saw_run_end and summary then self:on_event(evs.run_end_from(summary, self.last_t)) end
  local ok, err = M.write(self.path, self.records)
  if not ok then error(("cannot write the HTML report %s: %s"):format(self.path, tostring(err)), 0) end
end

return M
