-- Waiting on events instead of polling: a one-node etcd (Debian's
-- etcd-server) and its JSON gateway's watch stream (POST /v3/watch, one
-- JSON object per line, chunked). A concurrent task makes three puts; the
-- test is woken by each event etcd pushes, with no sleep and no polling loop.
-- Run it: atomlua run scenarios/etcd_watch.lua

local b64 = atom.base64
local client, peer = atom.free_port(), atom.free_port()
local base = "http://127.0.0.1:" .. client
local data = os.tmpname()
os.remove(data)

local etcd <close> = atom.spawn{ "etcd", "--name", "watch1", "--data-dir", data,
  "--listen-client-urls", base, "--advertise-client-urls", base,
  "--listen-peer-urls", "http://127.0.0.1:" .. peer,
  "--initial-advertise-peer-urls", "http://127.0.0.1:" .. peer,
  "--initial-cluster", "watch1=http://127.0.0.1:" .. peer,
  "--logger", "zap", "--log-outputs", "stderr", name = "etcd", critical = true, grace = 2 }
atom.defer(function() atom.sh("rm -rf '" .. data .. "'") end)
etcd:expect("serving client traffic", 20)

local function put(key, value)
  local r = atom.http.post(base .. "/v3/kv/put", { key = b64.encode(key), value = b64.encode(value) }, 5)
  assert(r.status == 200, r.body)
end

atom.test("a watch wakes the test for each of three concurrent puts", function()
  -- keys "k/" up to (not including) "k0": the prefix k/
  local watch <close> = atom.http.stream{ method = "POST", url = base .. "/v3/watch", timeout = 5,
    json = { create_request = { key = b64.encode("k/"), range_end = b64.encode("k0") } } }
  atom.assert_eq(watch.status, 200)
  local lines = watch:lines(10)           -- each wait is bounded, none polls
  local created = atom.json.decode(lines())
  assert(created.result.created, "watch not created: " .. atom.json.encode(created))

  local writer = atom.go(function()
    for i = 1, 3 do put("k/" .. i, "v" .. i) end
  end)

  local seen = {}
  while #seen < 3 do
    local msg = atom.json.decode(assert(lines(), "watch stream ended"))
    for _, ev in ipairs(msg.result.events or {}) do
      seen[#seen + 1] = b64.decode(ev.kv.key) .. "=" .. b64.decode(ev.kv.value)
    end
  end
  writer:join()
  atom.assert_eq(seen, { "k/1=v1", "k/2=v2", "k/3=v3" })
end, 30)
