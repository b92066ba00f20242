-- Five etcd members, each on a host of its own with etcd's default ports,
-- and the network cut between them: a partition {1,2} | {3,4,5}, an isolated
-- leader, and a leader whose packets to every follower vanish.
-- Run it: atomlua run --isolate scenarios/etcd_partition.lua
-- (needs Debian's etcd-server; no root needed where user namespaces are allowed).

local b64 = atom.base64

if not atom.isolated then
  error("run this scenario with --isolate: it gives each etcd a host of its own")
end

local c <close> = atom.cluster{
  size = 5, name = "etcd",
  cmd = function(node, cluster)
    local members = {}
    for _, n in ipairs(cluster.nodes) do
      members[#members + 1] = ("%s=http://%s:2380"):format(n.name, n.host)
    end
    local client = ("http://%s:2379"):format(node.host)
    local peer = ("http://%s:2380"):format(node.host)
    return { "etcd", "--name", node.name, "--data-dir", node.dir .. "/data",
      "--listen-client-urls", client, "--advertise-client-urls", client,
      "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
      "--initial-cluster", table.concat(members, ","),
      "--initial-cluster-token", "atomlua", "--initial-cluster-state", "new",
      -- Fast failure detection keeps the scenario short.
      "--heartbeat-interval", "50", "--election-timeout", "500",
      "--logger", "zap", "--log-outputs", "stderr",
      grace = 1 }
  end,
  ready = "serving client traffic",
  ready_timeout = 30,
}

-- {==== etcd's JSON gateway (keys and values are base64) ====

local function call(node, path, body, timeout)
  local resp = atom.http.post(("http://%s:2379/v3/%s"):format(node.host, path), body, timeout or 2)
  if resp.status ~= 200 then error(("%s %s: HTTP %d %s"):format(node.name, path, resp.status, resp.body)) end
  return resp:json()
end

local function put(node, key, value, timeout)
  call(node, "kv/put", { key = b64.encode(key), value = b64.encode(value) }, timeout)
end

-- A serializable read answers from the member's own copy.
local function get(node, key)
  local r = call(node, "kv/range", { key = b64.encode(key), serializable = true })
  return r.kvs and r.kvs[1] and b64.decode(r.kvs[1].value) or nil
end

local function is_leader(node)
  local ok, s = pcall(call, node, "maintenance/status", {}, 1)
  return ok and s.leader == s.header.member_id
end

-- The index of a member among `among` that says it leads.
local function leader_among(among)
  for _, i in ipairs(among) do
    if is_leader(c.nodes[i]) then return i end
  end
end

local ALL = { 1, 2, 3, 4, 5 }

local function others(k)
  local out = {}
  for _, i in ipairs(ALL) do if i ~= k then out[#out + 1] = i end end
  return out
end

-- }====

c:start()
local leader = atom.wait_until(function() return leader_among(ALL) end, 20)

atom.test("partition {1,2} | {3,4,5}: the majority commits, the minority times out, heal catches up", function()
  c:partition({ 1, 2 }, { 3, 4, 5 })
  -- The majority may first have to elect a leader of its own.
  atom.wait_until(function() return pcall(put, c.nodes[3], "k", "majority", 1) end, 15)
  -- Another key: a write that timed out for us may still commit after the
  -- heal (etcd1 may hold the proposal), which is correct etcd behaviour.
  local ok, e = pcall(put, c.nodes[1], "minority-k", "minority", 2)
  assert(not ok, "a write through the minority committed")
  assert(atom.is_error(e, "timeout"), "expected a timeout, got " .. tostring(e))
  c:heal()
  for _, i in ipairs({ 1, 2 }) do
    atom.wait_until(function() return get(c.nodes[i], "k") == "majority" end, 15)
  end
  leader = atom.wait_until(function() return leader_among(ALL) end, 15)
end)

atom.test("isolating the leader: a new leader among the rest, then heal", function()
  local old = leader
  c:isolate(old)
  local new = atom.wait_until(function() return leader_among(others(old)) end, 15)
  assert(new ~= old)
  atom.wait_until(function() return pcall(put, c.nodes[new], "after-isolate", "yes", 1) end, 10)
  c:heal()
  atom.wait_until(function() return get(c.nodes[old], "after-isolate") == "yes" end, 15)
  leader = atom.wait_until(function() return leader_among(ALL) end, 15)
end)

atom.test("a leader whose packets to every follower vanish loses leadership", function()
  local old = leader
  for _, i in ipairs(others(old)) do c:block(old, i) end
  atom.wait_until(function() return not is_leader(c.nodes[old]) and leader_among(others(old)) end, 15)
  c:heal()
  atom.wait_until(function() return pcall(put, c.nodes[old], "after-block", "yes", 1) end, 15)
  leader = atom.wait_until(function() return leader_among(ALL) end, 15)
end)
