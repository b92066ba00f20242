-- atom.cli: the command line of SPEC §1, run in the control Lua state by
-- src/main.c. It parses arguments, checks every input before anything runs
-- (exit 2), runs each scenario file in a fresh state (_cli.run_file), feeds
-- the reporters and computes the exit status.
local _atom = require "_atom"
local _cli = require "_cli" -- the CLI's own C functions (src/main.c)
local events = require "atom.events"

local M = {}

local USAGE = [[
usage: atomlua run [options] SCENARIO.lua... [-- script args]
       atomlua trace --reactor REACTOR.lua [options] TRACE.itf.json|DIR...
       atomlua report EVENTS.ndjson --html PATH
       atomlua version | atomlua help [command] | atomlua --types-path
]]

local HELP_RUN = [[
Options of run and trace:
  --timeout SECS    deadline for the whole run (exit 124)
  --grace SECS      cleanup grace (default 10)
  --filter PATTERN  run only tests whose name contains PATTERN
  --fail-fast       stop after the first failed test (exit 1)
  --junit PATH      write a JUnit XML report
  --events PATH     write an NDJSON event log
  --html PATH       write a self-contained HTML report (timeline, failures)
  --workdir DIR     where run directories go (default .atomlua/runs)
  --keep            keep the run directory even when the run exits 0
  --isolate         run in a network namespace of its own (hosts, drop rules)
  -v, -q            more / less console output
  --seed N          seed math.random in each scenario (0 .. 2^63-1)
  --shard K/N       run only every N-th file, starting with the K-th (CI)
]]

local function usage_error(msg)
  io.stderr:write("atomlua: ", msg, "\n", USAGE)
  return 2
end

local function bad_input(msg)
  io.stderr:write("atomlua: ", msg, "\n")
  return 2
end

-- Options taking a value, and flags.
local VALUED = { timeout = true, grace = true, filter = true, junit = true, events = true,
  workdir = true, seed = true, reactor = true, html = true, shard = true }
-- --isolate is acted on by src/isolate.c before any thread exists; here it is only accepted.
local FLAGS = { ["fail-fast"] = true, keep = true, isolate = true }

local function parse(args, command)
  local o = { files = {}, script_args = {}, verbose = 0 }
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      for j = i + 1, #args do o.script_args[#o.script_args + 1] = args[j] end
      break
    elseif a == "--help" or a == "-h" then o.help = true
    elseif a == "-v" then o.verbose = o.verbose + 1
    elseif a == "-q" then o.verbose = o.verbose - 1
    elseif a:sub(1, 2) == "--" then
      local name, value = a:match("^%-%-([^=]+)=(.*)$")
      name = name or a:sub(3)
      if name == "reactor" and command ~= "trace" then return nil, "unknown option --reactor for run" end
      if VALUED[name] then
        if value == nil then
          i = i + 1
          value = args[i]
          if value == nil then return nil, "option --" .. name .. " needs a value" end
        end
        o[name] = value
      elseif FLAGS[name] and value == nil then
        o[name] = true
      else
        return nil, "unknown option " .. a
      end
    elseif a:sub(1, 1) == "-" and #a > 1 then
      return nil, "unknown option " .. a
    else
      o.files[#o.files + 1] = a
    end
    i = i + 1
  end
  local function positive(name)
    if o[name] == nil then return true end
    local n = tonumber(o[name])
    if not n or n <= 0 or n ~= n or n == math.huge then
      return nil, ("option --%s needs a positive number, got %q"):format(name, o[name])
    end
    o[name] = n
    return true
  end
  for _, name in ipairs({ "junit", "events", "workdir", "reactor" }) do
    if o[name] == "" then return nil, ("option --%s needs a non-empty value"):format(name) end
  end
  local ok, err = positive("timeout")
  if not ok then return nil, err end
  ok, err = positive("grace")
  if not ok then return nil, err end
  if o.seed ~= nil then
    local n = math.tointeger(tonumber(o.seed))
    if not n or n < 0 or not o.seed:match("^%d+$") then
      return nil, ("option --seed needs an integer from 0 to 2^63-1, got %q"):format(o.seed)
    end
    o.seed = n
  end
  if o.shard ~= nil then
    local k, n = o.shard:match("^(%d+)/(%d+)$")
    k, n = math.tointeger(tonumber(k)), math.tointeger(tonumber(n))
    if not k or not n or k < 1 or k > n then
      return nil, ("option --shard needs K/N with 1 <= K <= N, got %q"):format(o.shard)
    end
    o.shard = { k, n }
  end
  return o
end

-- SPEC §13: of the sorted paths, those at 1-based position p with
-- (p - 1) % N == K - 1, so N machines given the same arguments run each once.
local function shard_of(paths, shard)
  local sorted = { table.unpack(paths) }
  table.sort(sorted)
  local out = {}
  for p, path in ipairs(sorted) do
    if (p - 1) % shard[2] == shard[1] - 1 then out[#out + 1] = path end
  end
  return out
end

local function basename(path) return (path:gsub("/+$", ""):match("([^/]+)$") or path) end
local function stem(path) return (basename(path):gsub("%.lua$", "")) end

-- n random bytes: getrandom, else /dev/urandom, else nil
local function random_bytes(n)
  local bytes = _atom.random_bytes(n)
  if bytes then return bytes end
  local f = io.open("/dev/urandom", "rb")
  bytes = f and f:read(n)
  if f then f:close() end
  return bytes
end

local function random_chars(n)
  local bytes = random_bytes(n) or tostring(_atom.now())
  local alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
  local out = {}
  for i = 1, n do
    local b = bytes:byte(i) or i
    out[i] = alphabet:sub(b % #alphabet + 1, b % #alphabet + 1)
  end
  return table.concat(out)
end

local function fresh_seed()
  local s = random_bytes(8)
  local n = s and string.unpack("<i8", s) or math.floor(_atom.now() * 1e9)
  return n & math.maxinteger
end

local remove_tree = _atom.rm_rf

-- The reporters subscribe to the events forwarded from the file states.
-- Private `_tick` and `_output` events (the live status line and scenario
-- output while it is shown) go to the console alone. `track` sees every
-- other event first. Raises a string error when a report file cannot be
-- opened.
local function make_reporters(o, track)
  local list = {}
  local console = require("atom.report.console")
  local color = console.want_color()
  local con = console.new({ color = color, live = color, verbose = o.verbose, headers = #o.files > 1
    and o.reactor == nil })
  list[#list + 1] = con
  if o.junit then list[#list + 1] = require("atom.report.junit").new({ path = o.junit }) end
  if o.events then list[#list + 1] = require("atom.report.events").new({ path = o.events }) end
  if o.html then list[#list + 1] = require("atom.report.html").new({ path = o.html }) end
  local function emit(ev)
    local ty = ev.type
    if ty == "_tick" then return con:tick(ev) end
    if ty == "_output" then return con:write_user(ev.text) end
    track(ev)
    for _, r in ipairs(list) do r:on_event(ev) end
  end
  _cli.set_forward(emit, o.events ~= nil or o.html ~= nil) -- every event type only for --events/--html
  events.clock = _atom.now
  events.subscribe(emit)
  return list, color
end

-- What the control state knows of the tests from their events, so the
-- results do not depend on a file state ending normally: the counts, and
-- the tests that started and have not ended (a test abandoned with its
-- scenario's root, or cut off by the watchdog, still counts as failed).
local function new_tracker()
  local tr = { counts = { passed = 0, failed = 0, skipped = 0 }, open = {}, file = nil }
  function tr.track(ev)
    local ty = ev.type
    if ty == "scenario_start" then
      tr.file = ev.file
    elseif ty == "scenario_end" then
      tr.file = nil
    elseif ty == "test_start" then
      tr.open[#tr.open + 1] = { name = ev.name, file = ev.file, suite = ev.suite, t = ev.t }
    elseif ty == "test_end" then
      local c = tr.counts
      if c[ev.status] then c[ev.status] = c[ev.status] + 1 end
      for i, t in ipairs(tr.open) do
        if t.name == ev.name and t.file == ev.file then table.remove(tr.open, i); break end
      end
    end
  end
  -- Fail every test still open with a `cancelled` error saying why.
  function tr.close_open(message)
    while #tr.open > 0 do
      local t = tr.open[1]
      events.emit("test_end", { name = t.name, file = t.file, suite = t.suite, status = "failed",
        duration = math.max(_atom.now() - (tonumber(t.t) or 0), 0),
        error = { kind = "cancelled", message = message, task = t.name } })
    end
  end
  return tr
end

-- Each scenario file's directory inside the run directory when several
-- run: its basename, with "-2", "-3"... when two files share one.
local function file_dirs(run_dir, files)
  local dirs, used = {}, {}
  for i, f in ipairs(files) do
    local base, n = basename(f), 1
    local name = base
    while used[name] do n = n + 1; name = base .. "-" .. n end
    used[name] = true
    dirs[i] = #files > 1 and (run_dir .. "/" .. name) or run_dir
  end
  return dirs
end

-- A directory given as a scenario stands for its *.lua files (not those
-- of subdirectories), in sorted order. Returns the list, or nil and why.
local function expand_dirs(files)
  local out = {}
  for _, f in ipairs(files) do
    -- luv only when a directory is given: opening it is a fifth of a run's start-up
    if _atom.file_type(f) == "directory" then
      local uv = require("luv")
      local found, req = {}, uv.fs_scandir(f)
      while req do
        local name = uv.fs_scandir_next(req)
        if not name then break end
        local path = f:gsub("/+$", "") .. "/" .. name
        if name:match("%.lua$") and _atom.file_type(path) == "file" then found[#found + 1] = path end
      end
      if #found == 0 then return nil, ("no *.lua file in directory %s"):format(f) end
      table.sort(found)
      for _, p in ipairs(found) do out[#out + 1] = p end
    else
      out[#out + 1] = f
    end
  end
  return out
end

local function check_files(files)
  for _, f in ipairs(files) do
    local fh, err = io.open(f, "rb")
    if not fh then return nil, ("cannot read %s: %s"):format(f, err:gsub("^[^:]*: ", "")) end
    local ok = fh:read(0)
    fh:close()
    if ok == nil and not io.open(f, "r") then return nil, "cannot read " .. f end
    local fn, serr = loadfile(f, "t")
    if not fn then return nil, "syntax error: " .. serr end
  end
  return true
end

local function run_command(o, argv, command)
  if command == "run" and #o.files == 0 then return usage_error("run needs at least one scenario file") end
  if command == "trace" and not o.reactor then return usage_error("trace needs --reactor REACTOR.lua") end
  if command == "run" then
    local files, derr = expand_dirs(o.files)
    if not files then return bad_input(derr) end
    o.files = files
  end
  local ok, err = check_files(command == "trace" and { o.reactor } or o.files)
  if not ok then return bad_input(err) end
  local prepared
  if command == "trace" then
    local trace = require "atom.trace"
    if #o.files == 0 then return usage_error("trace needs at least one TRACE file or directory") end
    local okp, res = pcall(function()
      local paths, from = trace.collect(o.files)
      trace.decode_all(paths)
      return { paths = paths, from = from }
    end)
    if not okp then return bad_input(tostring(type(res) == "table" and res.message or res)) end
    prepared = res
    if o.shard then -- the traces are the files to share out
      local keep, picked = {}, { paths = {}, from = {} }
      for _, path in ipairs(shard_of(res.paths, o.shard)) do keep[path] = true end
      for i, path in ipairs(res.paths) do
        if keep[path] then
          picked.paths[#picked.paths + 1], picked.from[#picked.from + 1] = path, res.from[i]
        end
      end
      prepared = picked
    end
  elseif o.shard then
    o.files = shard_of(o.files, o.shard)
  end
  local shard_empty = o.shard and #(prepared and prepared.paths or o.files) == 0
  local seed = o.seed or fresh_seed()
  local tracker = new_tracker()
  local okr, reporters, live = pcall(make_reporters, o, tracker.track)
  if not okr then return bad_input(tostring(reporters)) end
  _cli.loaded() -- the modules are loaded (see M.main)
  _cli.set_limits(o.timeout, o.grace or 10)
  local workdir = o.workdir or ".atomlua/runs"
  local name = stem(command == "trace" and o.reactor or o.files[1] or "shard")
  local run_dir = ("%s/%s-%s-%s"):format(workdir, os.date("%Y%m%d-%H%M%S"), name, random_chars(6))
  local okd, derr = pcall(_atom.mkdir_p, run_dir)
  if not okd then return bad_input(tostring(type(derr) == "table" and derr.message or derr)) end
  -- `command` re-runs with the same seed; it keeps the seed exact where a
  -- JSON reader would turn a number above 2^53 into a float.
  if shard_empty then
    print(("shard %d/%d selects none of the given files: nothing to run"):format(o.shard[1], o.shard[2]))
  end
  events.emit("run_start", { version = _atom.version, argv = argv, seed = seed, shard = o.shard,
    command = require("atom.report.common").rerun_command(argv, seed) })
  local total = tracker.counts
  local scenario_error, matched, exit_override, fail_fast_hit, scenario_error_file = false, false, nil, false, nil

  -- The end of the run: exit status, closing lines, run_end, reports. Also
  -- called by the watchdog thread (src/main.c) when the loop is stuck, with
  -- the status it exits with.
  local finished = false
  local function finish(hard_exit)
    if finished then return hard_exit end
    finished = true
    local stop, stop_message = _cli.stop_reason()
    if hard_exit then
      local why = (stop_message or "cancelled") .. " (the watchdog ended the run: it did not stop"
        .. " within the cleanup grace)"
      local had_open = #tracker.open > 0
      tracker.close_open(why)
      if tracker.file then
        events.emit("scenario_end", { file = tracker.file, status = "error", _quiet = had_open,
          error = { kind = "cancelled", message = why } })
      end
    end
    local exit, reason, reason_text = 0, "done", nil
    if stop and stop:match("^SIG") then
      exit = ({ SIGINT = 130, SIGTERM = 143, SIGHUP = 129 })[stop]
      reason, reason_text = stop, "interrupted by " .. stop
    elseif stop == "timeout" then
      exit, reason, reason_text = 124, "timeout", ("timed out after %.14gs"):format(o.timeout)
    elseif exit_override then
      exit = exit_override
    elseif o.filter and not matched then
      exit = 2
      reason_text = ("no test matched --filter %q"):format(o.filter)
    elseif scenario_error then
      -- Not a reason in run_end's sense: a scenario error stops no other file.
      exit, reason_text = 3, "scenario error in " .. tostring(scenario_error_file)
    elseif total.failed > 0 then
      exit = 1
    end
    if hard_exit then exit = hard_exit end
    if fail_fast_hit and exit <= 1 then reason, reason_text = "fail-fast", "stopped by --fail-fast" end
    if exit == 2 then io.stderr:write("atomlua: ", reason_text, "\n") end
    -- A report or process log not written completely: exit at least 3
    -- (SPEC §1's precedence). The JUnit report is written first, so that
    -- run_end and the run directory's fate know how it went.
    local lost = _cli.log_errors() > 0
    local function finish_one(r, summary)
      local okf, ferr = pcall(r.finish, r, summary)
      if not okf then
        io.stderr:write("atomlua: ", tostring(ferr), "\n")
        lost = true
      end
    end
    local summary = { seed = seed, argv = argv }
    for _, r in ipairs(reporters) do
      if r.before_run_end then finish_one(r, summary) end -- the JUnit report
    end
    for _, r in ipairs(reporters) do
      if r.write_error then lost = true end -- the event log, so far
    end
    if lost and exit <= 1 then exit = 3 end
    local kept = exit ~= 0 or o.keep
    if not kept then remove_tree(run_dir) end
    summary = { passed = total.passed, failed = total.failed, skipped = total.skipped, exit = exit,
      reason = reason, reason_text = exit ~= 2 and reason_text or nil, seed = seed, argv = argv,
      run_dir = kept and run_dir or nil, shard = o.shard }
    events.emit("run_end", { passed = total.passed, failed = total.failed, skipped = total.skipped,
      exit = exit, reason = reason })
    for _, r in ipairs(reporters) do
      if not r.before_run_end then finish_one(r, summary) end
    end
    if lost and exit <= 1 then exit = 3 end
    if _cli.leaks_found() then return exit == 0 and 1 or exit end
    return exit
  end
  _cli.set_emergency(finish)

  local units = command == "trace" and { { file = o.reactor, entry = "atom.scenario" } } or {}
  if command == "run" then
    for _, f in ipairs(o.files) do units[#units + 1] = { file = f, entry = "atom.scenario" } end
  end
  if shard_empty then units = {} end
  local dirs = file_dirs(run_dir, command == "run" and o.files or { o.reactor })
  for i, u in ipairs(units) do
    if _cli.stop_reason() or fail_fast_hit then break end
    local file_dir = dirs[i]
    local res = _cli.run_file(u.entry, {
      file = u.file, args = o.script_args, seed = seed, run_dir = run_dir, file_dir = file_dir,
      filter = o.filter, grace = o.grace or 10, fail_fast = o["fail-fast"], verbose = o.verbose, keep = o.keep,
      trace_paths = prepared and prepared.paths, trace_from = prepared and prepared.from,
      live = live,
    })
    if res.bad_reactor then
      bad_input(res.bad_reactor)
      if not o.keep then remove_tree(run_dir) end
      return 2
    end
    if res.internal_error then
      io.stderr:write("atomlua: internal error in ", u.file, ": ", res.internal_error, "\n")
      scenario_error = true
      scenario_error_file = scenario_error_file or u.file
    end
    -- Tests that never ended (abandoned with their root) failed.
    local stop, stop_message = _cli.stop_reason()
    tracker.close_open((stop and stop_message or "cancelled: the scenario ended")
      .. " (abandoned: the test kept running past its cleanup grace)")
    matched = matched or res.matched
    if res.scenario_error then
      scenario_error = true
      scenario_error_file = scenario_error_file or u.file
    end
    if res.exit_code then exit_override = res.exit_code; break end
    if res.fail_fast_hit then fail_fast_hit = true end
  end
  return finish()
end

-- The directory of the LuaLS annotations (types/atom.lua): installed beside
-- the binary (PREFIX/share/atomlua/types), or in the source tree of a build.
local function types_path()
  local uv = require("luv")
  local exe = uv.exepath() or ""
  local bin = exe:match("^(.*)/[^/]*$") or "."
  -- installed; build/atomlua; build/check/atomlua (make check)
  for _, dir in ipairs { bin .. "/../share/atomlua/types", bin .. "/../types", bin .. "/../../types" } do
    local real = uv.fs_realpath(dir .. "/atom.lua")
    if real then
      print((real:gsub("/atom%.lua$", "")))
      return 0
    end
  end
  return bad_input("no types/atom.lua beside " .. exe .. " (install with make install)")
end

-- atomlua report EVENTS.ndjson --html PATH: the page --html would have
-- written, from a saved events log.
local function report_command(args)
  local log, html
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--html" then
      i = i + 1
      html = args[i]
      if html == nil then return usage_error("option --html needs a value") end
    elseif a:match("^%-%-html=") then
      html = a:sub(8)
    elseif a:sub(1, 1) == "-" then
      return usage_error("unknown option " .. a .. " for report")
    elseif log then
      return usage_error("report takes one events file")
    else
      log = a
    end
    i = i + 1
  end
  if not log then return usage_error("report needs an events file (from --events)") end
  if not html or html == "" then return usage_error("report needs --html PATH") end
  local page = require("atom.report.html")
  local ok, records = pcall(page.read_log, log)
  if not ok then return bad_input(tostring(records)) end
  local wok, werr = page.write(html, records)
  if not wok then
    io.stderr:write("atomlua: cannot write the HTML report ", html, ": ", tostring(werr), "\n")
    return 3
  end
  return 0
end

---@param args string[] the command line without the program name
---@return integer exit status
function M.main(args)
  local command = args[1]
  -- The control state starts with the collector stopped and a start-up
  -- arena (src/main.c, l_loaded): `run` ends them once its reporters are
  -- loaded, other commands here.
  if command ~= "run" then _cli.loaded() end
  if command == nil then return usage_error("no command given") end
  if command == "version" or command == "--version" then
    print("atomlua " .. _atom.version .. " (" .. _VERSION .. ", libuv " .. require("luv").version_string() .. ")")
    return 0
  elseif command == "help" or command == "--help" or command == "-h" then
    io.stdout:write(USAGE)
    if args[2] == "run" or args[2] == "trace" then io.stdout:write("\n", HELP_RUN) end
    return 0
  elseif command == "--types-path" then
    return types_path()
  elseif command == "report" then
    return report_command({ table.unpack(args, 2) })
  elseif command ~= "run" and command ~= "trace" then
    return usage_error("unknown command " .. command)
  end
  local rest = { table.unpack(args, 2) }
  local o, err = parse(rest, command)
  if not o then return usage_error(err) end
  if o.help then -- `atomlua run --help` is `atomlua help run`
    io.stdout:write(USAGE, "\n", HELP_RUN)
    return 0
  end
  return run_command(o, args, command)
end

return M
