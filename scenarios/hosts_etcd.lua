-- The demo's three-node etcd cluster (scenarios/etcd_cluster.lua) with each
-- member on a host of its own (docs/hosts.md): atomlua runs an agent on
-- every host through a transport and drives the members from here.
-- Run it: atomlua run scenarios/hosts_etcd.lua
--
-- Here the "hosts" are agents on this machine (`sh -c`), so it runs
-- anywhere etcd is installed. On real machines, give ssh targets instead:
--   local hosts = {
--     atom.host{ via = { "ssh", "-T", "-o", "BatchMode=yes", "deploy@node1" } },
--     atom.host{ via = { "ssh", "-T", "-o", "BatchMode=yes", "deploy@node2" } },
--     atom.host{ via = { "ssh", "-T", "-o", "BatchMode=yes", "deploy@node3" } },
--   }
-- (or `kubectl exec -i pod-N -- sh -c`, `docker exec -i nodeN sh -c`).
-- atomlua uploads itself to each host when missing; etcd must be there.

local b64 = atom.base64

local hosts = {}
for i = 1, 3 do hosts[i] = atom.host { via = { "sh", "-c" }, name = "node" .. i } end

local c <close> = atom.cluster {
  size = 3, name = "etcd", ports = { "client", "peer" }, hosts = hosts,
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
      "--initial-cluster-token", "atomlua", "--initial-cluster-state", "new",
      "--heartbeat-interval", "50", "--election-timeout", "500",
      "--logger", "zap", "--log-outputs", "stderr",
      grace = 1 }
  end,
  ready = "serving client traffic",
  ready_timeout = 20,
}

local function call(node, path, body)
  local resp = atom.http.post(("http://%s:%d/v3/%s"):format(node.host, node.ports.client, path), body, 2)
  if resp.status ~= 200 then error(("%s %s: HTTP %d %s"):format(node.name, path, resp.status, resp.body)) end
  return resp:json()
end

local function put(node, key, value) call(node, "kv/put", { key = b64.encode(key), value = b64.encode(value) }) end

local function get(node, key)
  local r = call(node, "kv/range", { key = b64.encode(key), serializable = true })
  return r.kvs and r.kvs[1] and b64.decode(r.kvs[1].value) or nil
end

c:start()

atom.test("each member runs on its own host", function()
  for i, node in ipairs(c.nodes) do
    atom.assert_eq(node.host, hosts[i].address)
    assert(node.dir:find(hosts[i].dir, 1, true) == 1, node.dir)
  end
end)

atom.test("a write through etcd1 is read through etcd3", function()
  put(c.nodes[1], "greeting", "hello")
  atom.wait_until(function() return get(c.nodes[3], "greeting") == "hello" end, 5)
end)

atom.test("a member killed on its host comes back with its data", function()
  c:kill(2, "KILL")
  -- if etcd2 led, the others elect a new leader first: retry until one serves
  atom.wait_until(function() put(c.nodes[1], "while-down", "yes"); return true end, 15)
  c:restart(2)
  atom.wait_until(function() return get(c.nodes[2], "while-down") == "yes" end, 10)
  atom.assert_eq(get(c.nodes[2], "greeting"), "hello")
end)
