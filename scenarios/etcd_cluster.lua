-- A real three-node etcd cluster on free ports (Debian's etcd-server),
-- driven through etcd's v3 JSON gateway: replicate a write, crash the leader,
-- watch a new one take over, bring the old leader back, pause a follower.
-- Run it: atomlua run scenarios/etcd_cluster.lua (this is also `make demo`).
-- Nothing is left running: the cluster is <close>d and atomlua reaps groups.

local b64 = atom.base64

local c <close> = atom.cluster{
  size = 3, name = "etcd", ports = { "client", "peer" },
  cmd = function(node, cluster)
    local members = {}
    for _, n in ipairs(cluster.nodes) do
      members[#members + 1] = ("%s=http://127.0.0.1:%d"):format(n.name, n.ports.peer)
    end
    local client = "http://127.0.0.1:" .. node.ports.client
    local peer = "http://127.0.0.1:" .. node.ports.peer
    return { "etcd", "--name", node.name, "--data-dir", node.dir .. "/data",
      "--listen-client-urls", client, "--advertise-client-urls", client,
      "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
      "--initial-cluster", table.concat(members, ","),
      "--initial-cluster-token", "atomlua", "--initial-cluster-state", "new",
      -- Fast failure detection keeps the demo short: a leader is replaced ~1 s after it dies.
      "--heartbeat-interval", "50", "--election-timeout", "500",
      "--logger", "zap", "--log-outputs", "stderr",
      -- A leader told to stop first tries to hand over leadership to peers
      -- that are stopping too; 1 s is enough for a clean exit otherwise.
      grace = 1 }
  end,
  -- Logged once the member has joined the cluster and listens for clients.
  ready = "serving client traffic",
  ready_timeout = 20,
}

-- {==== etcd's JSON gateway: keys and values are base64 ====

local function call(node, path, body, timeout)
  local resp = atom.http.post(("http://127.0.0.1:%d/v3/%s"):format(node.ports.client, path), body,
    timeout or 2)
  if resp.status ~= 200 then error(("%s %s: HTTP %d %s"):format(node.name, path, resp.status, resp.body)) end
  return resp:json()
end

local function put(node, key, value, timeout)
  call(node, "kv/put", { key = b64.encode(key), value = b64.encode(value) }, timeout)
end

-- serializable = true reads the node's own copy (no round trip to the
-- leader), which shows what that node has applied.
local function get(node, key, serializable)
  local r = call(node, "kv/range", { key = b64.encode(key), serializable = serializable or nil })
  return r.kvs and r.kvs[1] and b64.decode(r.kvs[1].value) or nil
end

-- The leader's member id as one node sees it, and whether it is that node.
local function status(node)
  local s = call(node, "maintenance/status", {})
  return s.leader, s.leader == s.header.member_id
end

-- The index of the node that says it leads (nil while none does).
local function leader_index()
  for i, node in ipairs(c.nodes) do
    local ok, _, is_self = pcall(status, node)
    if ok and is_self then return i end
  end
end

-- }====

c:start()                                  -- three etcds at once, each until it serves clients

local leader, leader_id

atom.test("a write through etcd1 is read through etcd2", function()
  put(c.nodes[1], "greeting", "hello")
  atom.assert_eq(get(c.nodes[2], "greeting"), "hello")
end)

atom.test("every member agrees on one leader", function()
  leader = atom.wait_until(leader_index, 10)
  leader_id = status(c.nodes[leader])
  for _, node in ipairs(c.nodes) do atom.assert_eq((status(node)), leader_id) end
  print(("leader: %s (member %s)"):format(c.nodes[leader].name, leader_id))
end)

atom.test("after the leader crashes, a new one is elected and writes commit", function()
  c:kill(leader, "KILL")                   -- a crash on purpose: not a test failure
  local survivor = c.nodes[leader % 3 + 1]
  local new = atom.wait_until(function()
    local id = status(survivor)
    return id ~= "0" and id ~= leader_id and id
  end, 10)
  print("new leader: member " .. new)
  atom.wait_until(function() put(survivor, "greeting", "after the crash", 1); return true end, 10)
  atom.assert_eq(get(c.nodes[(leader + 1) % 3 + 1], "greeting"), "after the crash")
end)

atom.test("the old leader comes back and serves the new data", function()
  c:restart(leader)                        -- same ports and data dir; waits until it serves
  atom.wait_until(function() return get(c.nodes[leader], "greeting", true) == "after the crash" end, 10)
end)

atom.test("with a follower paused, writes still commit", function()
  local now_leader = atom.wait_until(leader_index, 10)
  local follower = now_leader % 3 + 1
  local other = follower % 3 + 1
  if other == now_leader then other = other % 3 + 1 end
  c:pause(follower)                        -- SIGSTOP: alive but silent, as in a long GC pause
  put(c.nodes[now_leader], "paused", "still committed")
  atom.wait_until(function() return get(c.nodes[other], "paused", true) == "still committed" end, 5)
  c:resume(follower)
  atom.wait_until(function() return get(c.nodes[follower], "paused", true) == "still committed" end, 10)
end)
