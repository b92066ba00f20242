-- W7: 20,000 unary gRPC calls, 64 in flight, to etcd's KV/Range (serializable,
-- one small key) on the harness's local etcd. Args: TARGET PROTO N K.
-- Prints calls per second; the harness adds client CPU per call.
local target = assert(atom.args[1], "usage: atomlua run w7.lua -- TARGET PROTO [N [K]]")
local proto = assert(atom.args[2], "PROTO expected")
atom.grpc.load(proto)
local n = tonumber(atom.args[3]) or 20000
local k = tonumber(atom.args[4]) or 64
local req = { key = "w7", serializable = true }
local next_i, bad = 0, 0
local function worker()
  while next_i < n do
    next_i = next_i + 1
    local r = atom.grpc.call(target, "etcdserverpb.KV/Range", req)
    if r.kvs[1].value ~= "value" then bad = bad + 1 end
  end
end
local workers = {}
for i = 1, k do workers[i] = worker end
local t0 = atom.now()
atom.gather(workers)
local dt = atom.now() - t0
if bad > 0 then error(bad .. " calls returned a wrong value") end
print(string.format("RESULT calls_per_s=%.1f n=%d wall_s=%.4f", n / dt, n, dt))
