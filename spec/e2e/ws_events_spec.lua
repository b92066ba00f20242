-- Streams end to end: scenarios/etcd_watch.lua on a real etcd, and the
-- `ws` event (SPEC §8) in --events, through the atomlua binary.
local cli = require "support.cli"
local netfix = require "fixtures.netfix"

describe("streams end to end", function()
  it("scenarios/etcd_watch.lua passes: a watch stream wakes the test, no polling", function()
    local r = cli.run({ "run", "scenarios/etcd_watch.lua" })
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.truthy(r.out:find("1 passed, 0 failed", 1, true), r.out)
  end)

  it("writes a ws event when a connection ends, and closes what a task left open", function()
    local srv = netfix.ws()
    local dir = netfix.tmpdir()
    local f = assert(io.open(dir .. "/s.lua", "w"))
    f:write(([[
atom.test("t", function()
  local ws = atom.ws.connect("%s/echo")
  ws:send("a"); ws:recv(5); ws:send("b"); ws:recv(5)
  atom.go(function() atom.ws.connect("%s/hold?id=e2e") end):join()
  ws:close(4000, "bye")
end)
]]):format(srv.url, srv.url))
    f:close()
    local r = cli.run({ "run", "--events", dir .. "/ev.ndjson", dir .. "/s.lua" })
    local evs = {}
    for line in io.lines(dir .. "/ev.ndjson") do
      if line:find('"type":"ws"', 1, true) then evs[#evs + 1] = line end
    end
    local stats = io.popen("curl -s " .. srv.url:gsub("^ws", "http") .. "/stats"):read("a")
    srv.stop()
    os.execute("rm -rf " .. dir)
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.are.equal(2, #evs, table.concat(evs, "\n"))
    local ev = require("atom").json.decode(evs[2])
    assert.are.equal(2, ev.sent)
    assert.are.equal(2, ev.received)
    assert.truthy(stats:find('"e2e": false', 1, true), stats)
  end)
end)
