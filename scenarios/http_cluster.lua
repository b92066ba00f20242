-- A three-node cluster with nothing to install: the nodes are
-- scenarios/kvnode.lua, run by this very atomlua binary. It shows
-- atom.cluster's fault injection — crash, restart, pause — against a naive
-- replicated key-value store. Run it: atomlua run scenarios/http_cluster.lua
local uv = require "luv"

local ATOMLUA = uv.exepath()               -- the binary running this scenario
local KVNODE = atom.dir .. "/kvnode.lua"    -- absolute: each node runs in its own dir
if KVNODE:sub(1, 1) ~= "/" then KVNODE = uv.cwd() .. "/" .. KVNODE end

local c <close> = atom.cluster{
  size = 3, name = "kv", ports = { "http" },
  cmd = function(node, cluster)
    local argv = { ATOMLUA, "run", "-q", KVNODE, "--",
      "--name", node.name, "--port", node.ports.http }
    for _, peer in ipairs(cluster.nodes) do
      if peer ~= node then
        argv[#argv + 1] = "--peer"
        argv[#argv + 1] = "http://127.0.0.1:" .. peer.ports.http
      end
    end
    argv.grace = 2
    return argv
  end,
  ready = "ready on",
  ready_timeout = 10,
}

local function url(i, path) return ("http://127.0.0.1:%d%s"):format(c.nodes[i].ports.http, path) end
local function put(i, key, value)
  local resp = atom.http.request{ method = "PUT", url = url(i, "/kv/" .. key), body = value, timeout = 5 }
  atom.assert_eq(resp.status, 200)
  return resp:json()
end
local function get(i, key, timeout) return atom.http.get(url(i, "/kv/" .. key), timeout or 5) end

c:start()                                  -- all three at once; each waits for "ready on"

atom.test("a write through kv1 is read through kv2", function()
  atom.assert_eq(put(1, "color", "red").acks, 3)
  atom.assert_eq(get(2, "color").body, "red")
end)

atom.test("with kv3 crashed, writes reach the two others", function()
  c:kill(3, "KILL")                        -- returns once kv3 has exited; not a failure
  atom.assert_eq(put(1, "color", "green").acks, 2)
  local ok, err = pcall(get, 3, "color", 1)
  assert(not ok and err.kind == "http" and err.cause == "refused", tostring(err))
end)

atom.test("restarted kv3 keeps its port and directory and catches up", function()
  c:restart(3)                             -- same port, same dir (data.log), same log file
  atom.assert_eq(get(3, "color").body, "green")
end)

atom.test("a paused node stalls but the write goes on without it", function()
  c:pause(2)                               -- SIGSTOP: kv2 neither answers nor fails
  local t0 = atom.now()
  atom.assert_eq(put(1, "shape", "circle").acks, 2)   -- kv1 gives up on kv2 after 0.5 s
  assert(atom.now() - t0 >= 0.5)
  c:resume(2)
  -- The replica request waited in kv2's socket buffer; it lands once kv2 runs.
  atom.wait_until(function() return get(2, "shape").body == "circle" end, 5)
end)
