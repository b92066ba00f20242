-- Runs the built atomlua binary (ATOMLUA_BIN, default build/atomlua) for
-- end-to-end specs and returns its exit status and output.
local M = {}

M.bin = os.getenv("ATOMLUA_BIN") or "./build/atomlua"

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.q = shell_quote

-- A private directory for the scenario files and run directories of this
-- busted run: $TMPDIR is one of its own (spec/support/helper.lua removes it).
local tmp_n = 0
local function tmp_path(suffix)
  tmp_n = tmp_n + 1
  local base = (os.getenv("TMPDIR") or "/tmp"):gsub("/+$", "")
  -- short: Lua shortens a source path past about 60 characters in messages
  return ("%s/c%d-%04x%s"):format(base, tmp_n, math.random(0, 0xffff), suffix or "")
end

-- `run`/`trace` without --workdir get a fresh one, removed after the run
-- (a failed run keeps its directory; specs that look into one pass their own).
local function with_workdir(args)
  if args[1] ~= "run" and args[1] ~= "trace" then return args, nil end
  for _, a in ipairs(args) do
    if a == "--workdir" or a:find("^%-%-workdir=") then return args, nil end
    if a == "--" then break end
  end
  local dir = tmp_path("-runs")
  local out = { args[1], "--workdir", dir }
  for i = 2, #args do out[#out + 1] = args[i] end
  return out, dir
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  os.remove(path)
  return s
end

--- Run `atomlua <args...>`; opts.env is a string of VAR=value prefixes,
--- opts.stdin a shell redirection. Returns {code=, out=, err=}.
function M.run(args, opts)
  opts = opts or {}
  local workdir
  args, workdir = with_workdir(args)
  local parts = {}
  for i, a in ipairs(args) do parts[i] = shell_quote(a) end
  local out, err = tmp_path(".out"), tmp_path(".err")
  local cmd = ("%s %s %s >%s 2>%s %s"):format(opts.env or "", shell_quote(M.bin), table.concat(parts, " "),
    out, err, opts.stdin or "</dev/null")
  local _, _, code = os.execute(cmd)
  if workdir then os.execute("rm -rf " .. shell_quote(workdir)) end
  return { code = code, out = slurp(out), err = slurp(err) }
end

--- Start atomlua in the background, wait until its stdout has `ready_line`,
--- send `sig` (e.g. "INT"), and return {code=, out=, err=}.
function M.run_signal(args, ready_line, sig, opts)
  opts = opts or {}
  local workdir
  args, workdir = with_workdir(args)
  local parts = {}
  for i, a in ipairs(args) do parts[i] = shell_quote(a) end
  local out, err = tmp_path(".out"), tmp_path(".err")
  local script = ([[
%s %s >%s 2>%s </dev/null &
pid=$!
i=0
while ! grep -q %s %s 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done
kill -%s $pid
%s
wait $pid
]]):format(shell_quote(M.bin), table.concat(parts, " "), out, err, shell_quote(ready_line), out, sig,
    opts.second and ("sleep 0.2; kill -" .. sig .. " $pid") or "")
  local _, _, code = os.execute(script)
  if workdir then os.execute("rm -rf " .. shell_quote(workdir)) end
  return { code = code, out = slurp(out), err = slurp(err) }
end

--- The lines of s, without a final empty one.
function M.lines(s)
  local out = {}
  for l in (s .. "\n"):gmatch("(.-)\n") do out[#out + 1] = l end
  if out[#out] == "" then out[#out] = nil end
  return out
end

function M.last_line(s) local l = M.lines(s); return l[#l] end

--- A file's content, or nil when it cannot be read.
function M.slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- s quoted for use as a Lua pattern matching it literally.
function M.plain(s) return (s:gsub("%p", "%%%0")) end

--- Write a scenario file and return its path.
function M.scenario(src)
  local path = tmp_path(".lua")
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

return M
