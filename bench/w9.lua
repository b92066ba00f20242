-- W9: the linearizability checker. Generates a kv history (get/put/append on
-- `keys` keys by `procs` processes, each operation taking effect at a random
-- moment while it is open, a few timeouts recorded as info), or loads the
-- JSON-lines histories given, and checks each; prints one RESULT line.
--   atomlua run bench/w9.lua -- gen 100000 10 10      (ops, keys, processes)
--   atomlua run bench/w9.lua -- files MODEL INDEPENDENT a.jsonl b.jsonl ...
local args = atom.args
local mode = args[1] or "gen"

local function gen(nops, nkeys, nprocs, seed)
  math.randomseed(seed)
  local rnd = math.random
  local h = atom.history("w9")
  local state, open, pid = {}, {}, {}
  for p = 1, nprocs do pid[p] = p end
  local nextpid, started = nprocs + 1, 0
  while started < nops or next(open) do
    local p = rnd(nprocs)
    local o = open[p]
    if not o then
      if started < nops then
        started = started + 1
        local key = "k" .. rnd(nkeys)
        local r = rnd(10)
        local f = r <= 5 and "get" or r <= 7 and "put" or "append"
        local v = f ~= "get" and tostring(rnd(100)) or nil
        open[p] = { op = h:invoke(pid[p], f, { key = key, value = v }), key = key, f = f, v = v }
      end
    elseif not o.applied then
      o.applied = true
      local cur = state[o.key] or ""
      if o.f == "get" then o.out = cur
      elseif o.f == "put" then state[o.key] = o.v
      else state[o.key] = cur .. o.v end
    else
      if rnd(1000) == 1 and o.f ~= "get" then
        o.op:info("timeout")
        pid[p] = nextpid
        nextpid = nextpid + 1
      elseif o.f == "get" then
        o.op:ok({ key = o.key, value = o.out })
      else
        o.op:ok()
      end
      open[p] = nil
    end
  end
  return h
end

local t0 = atom.now()
local total, checks, valid, nops = 0, 0, true, 0
if mode == "gen" then
  local h = gen(tonumber(args[2]) or 100000, tonumber(args[3]) or 10, tonumber(args[4]) or 10, 42)
  local tg = atom.now()
  local res = h:check { model = "kv", timeout = 120 }
  total, checks, nops = atom.now() - tg, 1, res.ops
  valid = res.valid == true
  io.stderr:write(("w9: generated in %.2fs; %s\n"):format(tg - t0, tostring(res)))
else
  local model, independent = args[2], args[3] == "true"
  for i = 4, #args do
    local h = atom.history.load(args[i])
    local tc = atom.now()
    local res = h:check { model = model, independent = independent, timeout = 120 }
    total = total + (atom.now() - tc)
    checks, nops = checks + 1, nops + res.ops
    if res.valid ~= true then valid = false end
    io.stderr:write(("w9: %s: %s\n"):format(args[i], tostring(res)))
  end
end
print(("RESULT check_s=%.4f check_ms=%.2f ops=%d histories=%d valid=%s"):format(total, total * 1000, nops, checks,
  tostring(valid)))
