-- atom.grpc against a real etcd (Debian's etcd-server), end to end through
-- the atomlua binary: scenarios/etcd_grpc.lua (KV/Put, KV/Range, a Watch
-- that sees three puts in order) and spec/fixtures/grpc/etcd_more.lua
-- (UNIMPLEMENTED for an unknown method, a Watch cancelled mid-stream ends
-- in etcd).
local cli = require "support.cli"

local function has(out, text) assert(out:find(text, 1, true), "missing " .. text .. " in:\n" .. out) end

describe("gRPC against etcd", function()
  it("scenarios/etcd_grpc.lua passes and logs grpc events", function()
    local ev = os.tmpname()
    local r = cli.run({ "run", "--events", ev, "scenarios/etcd_grpc.lua" })
    local f = assert(io.open(ev))
    local log = f:read("a")
    f:close()
    os.remove(ev)
    assert.are.equal(0, r.code, r.out .. r.err)
    has(r.out, "2 passed, 0 failed")
    local n = 0
    for line in log:gmatch("[^\n]+") do
      if line:find('"type":"grpc"', 1, true) then
        n = n + 1
        assert(line:find('"target":"127.0.0.1:', 1, true), line)
        if line:find("Watch/Watch", 1, true) then -- closed by the script: no status
          assert(not line:find('"status"', 1, true), line)
        else
          assert(line:find('"status":"OK"', 1, true), line)
        end
      end
    end
    assert.is_true(n >= 6, "grpc events: " .. n)
    has(log, '"method":"etcdserverpb.KV/Put"')
    has(log, '"method":"etcdserverpb.Watch/Watch"')
  end)

  it("raises UNIMPLEMENTED for an unknown method; a cancelled Watch ends in etcd", function()
    local r = cli.run({ "run", "spec/fixtures/grpc/etcd_more.lua" })
    assert.are.equal(0, r.code, r.out .. r.err)
    has(r.out, "2 passed, 0 failed")
    has(r.out, "grpc UNIMPLEMENTED from etcdserverpb.Lease/LeaseNope at 127.0.0.1:")
    has(r.out, "watch cancelled")
  end)
end)
