-- etcd's own gRPC API from a scenario: one etcd (Debian's etcd-server) on
-- free ports, KV/Put and KV/Range as unary calls, and a Watch bidi stream
-- that must see three puts in order. The types come from a small .proto
-- (scenarios/proto/etcd_kv.proto): etcd serves no reflection.
-- Run it: atomlua run scenarios/etcd_grpc.lua

local dir = os.tmpname()
os.remove(dir)
atom.defer(function() os.execute("rm -rf '" .. dir .. "'") end)

local port, peer = atom.free_port(), atom.free_port()
local target = "127.0.0.1:" .. port
local etcd = atom.spawn{ "etcd", "--name", "grpc", "--data-dir", dir,
  "--listen-client-urls", "http://" .. target, "--advertise-client-urls", "http://" .. target,
  "--listen-peer-urls", "http://127.0.0.1:" .. peer,
  "--initial-advertise-peer-urls", "http://127.0.0.1:" .. peer,
  "--initial-cluster", "grpc=http://127.0.0.1:" .. peer,
  "--logger", "zap", "--log-outputs", "stderr", name = "etcd" }
etcd:expect("serving client traffic", 20)

-- scenario files are loaded relative to the working directory or this file
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
atom.grpc.load(here .. "/proto/etcd_kv.proto")

atom.test("put and range", function()
  local put = atom.grpc.call(target, "etcdserverpb.KV/Put", { key = "greeting", value = "hello" })
  assert(put.header.revision > 1)
  local r = atom.grpc.call(target, "etcdserverpb.KV/Range", { key = "greeting", serializable = true })
  atom.assert_eq(r.count, 1)
  atom.assert_eq(r.kvs[1].value, "hello")
  atom.assert_eq(r.kvs[1].mod_revision, put.header.revision)
  -- an absent key: no kvs, count 0 (proto3 defaults)
  r = atom.grpc.call(target, "etcdserverpb.KV/Range", { key = "nothing" })
  atom.assert_eq(r.count, 0)
  atom.assert_eq(#r.kvs, 0)
end)

atom.test("a watch sees three puts in order", function()
  local w <close> = atom.grpc.stream(target, "etcdserverpb.Watch/Watch")
  w:send({ create_request = { key = "w/", range_end = "w0" } }) -- the prefix w/
  local created = w:recv(5)
  assert(created.created, "watch not created")
  for i = 1, 3 do
    atom.grpc.call(target, "etcdserverpb.KV/Put", { key = "w/" .. i, value = "v" .. i })
  end
  local seen = {}
  while #seen < 3 do
    local resp = w:recv(5)
    for _, ev in ipairs(resp.events) do
      atom.assert_eq(ev.type, "PUT")
      seen[#seen + 1] = ev.kv.key .. "=" .. ev.kv.value
    end
  end
  atom.assert_eq(table.concat(seen, ","), "w/1=v1,w/2=v2,w/3=v3")
end)
