-- Is etcd linearizable while members crash and stall? Jepsen's question, on
-- one machine: five etcd members (Debian's etcd-server), five clients doing
-- random reads, writes and compare-and-swaps on a few keys through etcd's v3
-- JSON gateway (/v3/kv/range, /v3/kv/put, /v3/kv/txn), and a nemesis that
-- kills, pauses and restarts members every few seconds, and in an isolated
-- run (--isolate) also partitions the network. Every operation goes
-- into a history (a timeout is `info`: it may or may not have happened); the
-- history is saved in the run directory and checked with the cas-register
-- model, key by key (independent = true), and the verdict's HTML page is
-- written next to it.
--
--   atomlua run scenarios/etcd_linearizable.lua            (20 s of load)
--   atomlua run scenarios/etcd_linearizable.lua -- 5       (5 s)
--   atomlua run --isolate scenarios/etcd_linearizable.lua  (with partitions)

local DURATION = tonumber(atom.args[1]) or 20
local KEYS = { "k1", "k2", "k3" }
local CLIENTS = 5
local OP_TIMEOUT = 1 -- seconds; an answer later than this is `info`

local b64 = atom.base64

local c <close> = atom.cluster{
  size = 5, name = "etcd", ports = { "client", "peer" },
  cmd = function(node, cluster)
    local members = {}
    for _, n in ipairs(cluster.nodes) do
      members[#members + 1] = ("%s=http://%s:%d"):format(n.name, n.host, n.ports.peer)
    end
    local client = ("http://%s:%d"):format(node.host, node.ports.client)
    local peer = ("http://%s:%d"):format(node.host, node.ports.peer)
    return { "etcd", "--name", node.name, "--data-dir", node.dir .. "/data",
      "--listen-client-urls", client, "--advertise-client-urls", client,
      "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
      "--initial-cluster", table.concat(members, ","),
      "--initial-cluster-token", "atomlua-lin", "--initial-cluster-state", "new",
      "--heartbeat-interval", "50", "--election-timeout", "500",
      "--logger", "zap", "--log-outputs", "stderr", grace = 1 }
  end,
  ready = "serving client traffic",
  ready_timeout = 30,
}

-- {==== one client operation through the gateway ====

-- An error that proves the request never reached etcd: the operation failed.
local function definitely_not_sent(e)
  return atom.is_error(e, "http") and e.cause == "refused"
end

-- Client i prefers member i; a refused connection (the member is down) had
-- no effect, so the request goes to the next member, as etcd's own clients
-- fail over between endpoints.
local function call(i, path, body)
  local e
  for k = 0, #c.nodes - 1 do
    local node = c.nodes[(i - 1 + k) % #c.nodes + 1]
    local ok, resp = pcall(atom.http.post, ("http://%s:%d/v3/%s"):format(node.host, node.ports.client,
      path), body, OP_TIMEOUT)
    if ok then
      if resp.status ~= 200 then
        error(atom.error("http", ("%s %s: HTTP %d %s"):format(node.name, path, resp.status, resp.body)), 0)
      end
      return resp:json()
    end
    e = resp
    if not definitely_not_sent(e) then error(e, 0) end
  end
  error(e, 0)
end

local function read(i, key)
  local r = call(i, "kv/range", { key = b64.encode(key) })
  local kv = r.kvs and r.kvs[1]
  return kv and tonumber(b64.decode(kv.value)) or nil
end

local function write(i, key, v)
  call(i, "kv/put", { key = b64.encode(key), value = b64.encode(tostring(v)) })
end

-- compare-and-swap as a transaction: put `to` if the value is `from`.
local function cas(i, key, from, to)
  local k = b64.encode(key)
  local r = call(i, "kv/txn", {
    compare = { { key = k, target = "VALUE", result = "EQUAL", value = b64.encode(tostring(from)) } },
    success = { { requestPut = { key = k, value = b64.encode(tostring(to)) } } },
  })
  return r.succeeded == true
end

-- }====

local h = atom.history("etcd")
local stop = atom.event()

-- Client i talks to member i first. After an `info` its process id changes: the
-- old client may still have a request in flight (Jepsen's rule).
local function client(i)
  local process = i
  local rng = math.random
  while not stop:is_set() do
    local key = KEYS[rng(#KEYS)]
    local f = ({ "read", "write", "cas" })[rng(3)]
    local value = f == "write" and rng(5) or f == "cas" and { rng(5), rng(5) } or nil
    local op = h:invoke(process, f, { key, value })
    local ok, e = pcall(function()
      if f == "read" then
        op:ok({ key, read(i, key) })
      elseif f == "write" then
        write(i, key, value)
        op:ok()
      elseif cas(i, key, value[1], value[2]) then
        op:ok()
      else
        op:fail("compare failed")
      end
    end)
    if not ok then
      if definitely_not_sent(e) and f ~= "cas" then
        -- every member refused: it never happened. (A failed cas means "the
        -- compare failed" in the cas-register model, so a cas goes to info.)
        op:fail(e.cause)
        atom.sleep(0.05)
      else
        op:info(tostring(e))
        process = process + CLIENTS
      end
    end
  end
end

-- Every few seconds: kill a member (a crash, then a restart on the same
-- data), pause one or two (SIGSTOP: alive but silent), or (isolated runs)
-- split the members into a minority and a majority; then heal.
local function nemesis()
  local rng = math.random
  while not stop:is_set() do
    atom.sleep(1 + rng() * 2)
    if stop:is_set() then break end
    local i = rng(#c.nodes)
    local action = rng(atom.isolated and 3 or 2)
    if action == 3 then
      local order = { 1, 2, 3, 4, 5 }
      for k = #order, 2, -1 do
        local j = rng(k)
        order[k], order[j] = order[j], order[k]
      end
      local minority, majority = { order[1], order[2] }, { order[3], order[4], order[5] }
      print(("nemesis: partition {%s} | {%s}"):format(table.concat(minority, ","), table.concat(majority, ",")))
      c:partition(minority, majority)
      atom.sleep(1 + rng() * 2)
      c:heal()
    elseif action == 1 then
      print(("nemesis: kill %s"):format(c.nodes[i].name))
      c:kill(i, "KILL")
      atom.sleep(0.5 + rng())
      c:restart(i)
      print(("nemesis: %s restarted"):format(c.nodes[i].name))
    else
      local j = rng(#c.nodes)
      print(("nemesis: pause %s%s"):format(c.nodes[i].name, j ~= i and " and " .. c.nodes[j].name or ""))
      c:pause(i)
      if j ~= i then c:pause(j) end
      atom.sleep(1 + rng())
      c:resume(i)
      if j ~= i then c:resume(j) end
    end
  end
end

c:start()

local path, res

atom.test("clients under a nemesis", function()
  atom.gather(
    function()
      atom.sleep(DURATION)
      stop:set()
    end,
    nemesis,
    function()
      local fns = {}
      for i = 1, CLIENTS do fns[i] = function() client(i) end end
      atom.gather(fns)
    end)
  path = atom.run_dir() .. "/etcd-history.jsonl"
  h:save(path)
  local n, infos = 0, 0
  for _, ev in ipairs(h:ops()) do
    if ev.type == "invoke" then n = n + 1 elseif ev.type == "info" then infos = infos + 1 end
  end
  print(("history: %d operations (%d info) in %s"):format(n, infos, path))
  assert(n > 50, "too few operations to judge anything")
end)

atom.test("the history is linearizable (cas-register, each key on its own)", function()
  res = atom.history.load(path):check { model = "cas-register", independent = true }
  local page = res:html(atom.run_dir() .. "/etcd-linearizability.html")
  print(tostring(res))
  print("page: " .. page)
  atom.assert_eq(res.valid, true)
end)

atom.test("the same history with one read altered is not", function()
  local bad = atom.history.load(path)
  local events, altered = bad:ops(), nil
  for _, ev in ipairs(events) do -- the last ok read that saw a value
    if ev.type == "ok" and ev.f == "read" and ev.value[2] ~= nil then altered = ev end
  end
  assert(altered, "no read saw a value")
  altered.value = { altered.value[1], 1000 + altered.value[2] } -- never written
  local r = bad:check { model = "cas-register", independent = true }
  print(tostring(r))
  atom.assert_eq(r.valid, false)
  local ce = r.counterexample
  atom.assert_eq(ce.key, altered.value[1])
  atom.assert_eq(ce.op.completion, altered.index)
  atom.assert_eq(ce.op.output, altered.value)
end)
