-- scenarios/bank/reactor.lua against a real redis-server, before the runtime
-- exists: a blocking stand-in for atom.spawn, atom.tcp, atom.free_port,
-- atom.test and atom.defer built on luv spins the loop until each operation is
-- done. It checks the reactor's RESP code and logic, not atomlua's scheduler;
-- once `atomlua trace` works, the e2e run replaces this.
-- Not ./lua/?/init.lua: other specs load the real `atom` from build/atom.so.
package.path = "./lua/?.lua;" .. package.path

-- atom.json is C code in the binary; outside it, stand in with lua-cjson and
-- the same decoding rules (integral numbers within 2^53 become integers, null is
-- cjson.null, errors have kind "json"). Set in package.loaded, which busted
-- restores after this file, so other spec files never see it.
if not pcall(require, "atom.json") then
  local cjson = require("cjson")
  local errors = require("atom.errors")
  local function fix(v)
    if type(v) == "number" then
      if v == math.floor(v) and math.abs(v) <= 2 ^ 53 then return math.tointeger(v) end
      return v
    end
    if type(v) == "table" then
      for k, x in pairs(v) do v[k] = fix(x) end
    end
    return v
  end
  package.loaded["atom.json"] = {
    null = cjson.null,
    encode = cjson.encode,
    decode = function(s)
      local ok, v = pcall(cjson.decode, s)
      if not ok then errors.raise("json", tostring(v)) end
      return fix(v)
    end,
  }
end

local uv = require("luv")
local trace = require("atom.trace")
local itf = require("atom.itf")

local has_redis = os.execute("command -v redis-server >/dev/null 2>&1")

-- Run the loop until cond() holds (a 10 ms timer keeps uv.run("once") waking).
local function spin(cond, secs, what)
  local timer = uv.new_timer()
  timer:start(10, 10, function() end)
  local deadline = uv.now() + (secs or 10) * 1000
  while not cond() do
    if uv.now() > deadline then
      timer:close()
      error("stand-in timed out waiting for " .. (what or "?"))
    end
    uv.run("once")
  end
  timer:close()
end

local procs = {}
local tests, defers = {}, nil

local fake = {
  assert_eq = require("atom.assert").assert_eq,
}

function fake.free_port()
  local s = uv.new_tcp()
  s:bind("127.0.0.1", 0)
  local port = s:getsockname().port
  s:close()
  return port
end

function fake.spawn(spec)
  local out, inp = uv.new_pipe(), uv.new_pipe() -- not fd 0: CI may have none
  local args = {}
  for i = 2, #spec do args[#args + 1] = tostring(spec[i]) end
  local p = { lines = {}, buf = "", cursor = 1, exited = false }
  p.handle = uv.spawn(spec[1], { args = args, stdio = { inp, out, 2 } }, function()
    p.exited = true
  end)
  assert(p.handle, "spawn failed")
  out:read_start(function(_, data)
    if data then
      p.buf = p.buf .. data
      for line in p.buf:gmatch("([^\n]*)\n") do p.lines[#p.lines + 1] = line end
      p.buf = p.buf:match("[^\n]*$")
    end
  end)
  p.out, p.inp = out, inp
  function p:expect(pattern, secs)
    local found
    spin(function()
      for i = self.cursor, #self.lines do
        if self.lines[i]:find(pattern) then
          found, self.cursor = self.lines[i], i + 1
          return true
        end
      end
      return self.exited
    end, secs, pattern)
    assert(found, "process exited before " .. pattern)
    return found
  end
  procs[#procs + 1] = p
  return p
end

local function stop_all()
  for _, p in ipairs(procs) do
    if not p.exited then p.handle:kill("sigterm") end
    spin(function() return p.exited end, 10, "exit")
    p.out:close()
    p.inp:close()
    p.handle:close()
  end
  procs = {}
  uv.run("nowait")
end

fake.tcp = {}
function fake.tcp.connect(host, port)
  local c = uv.new_tcp()
  local s = { buf = "", eof = false }
  local done, err = false, nil
  c:connect(host, port, function(e)
    done, err = true, e
  end)
  spin(function() return done end, 10, "connect")
  assert(not err, err)
  c:read_start(function(e, data)
    assert(not e, e)
    if data then s.buf = s.buf .. data else s.eof = true end
  end)
  function s.write(_, data)
    local written = false
    c:write(data, function() written = true end)
    spin(function() return written end, 10, "write")
  end
  function s:read_line()
    spin(function() return self.buf:find("\n") or self.eof end, 10, "line")
    local line, rest = self.buf:match("^([^\n]*)\n(.*)$")
    if not line then return nil end
    self.buf = rest
    return (line:gsub("\r$", ""))
  end
  function s:read(n)
    spin(function() return #self.buf >= n or self.eof end, 10, "bytes")
    local data = self.buf:sub(1, n)
    self.buf = self.buf:sub(n + 1)
    return data
  end
  function s.close()
    if not c:is_closing() then c:close() end
  end
  return s
end

function fake.test(name, fn, timeout)
  local my = {}
  defers = my
  local ok, err = pcall(fn)
  for i = #my, 1, -1 do my[i]() end
  tests[#tests + 1] = { name = name, ok = ok, err = err, timeout = timeout }
  return ok
end

function fake.defer(fn) defers[#defers + 1] = fn end

describe("scenarios/bank/reactor.lua (redis-server, blocking stand-in for atom)", function()
  local reactor
  local saved_atom, saved_global
  setup(function()
    saved_atom, saved_global = package.loaded.atom, rawget(_G, "atom")
    package.loaded.atom, _G.atom = fake, fake
  end)
  teardown(function()
    stop_all()
    package.loaded.atom, _G.atom = saved_atom, saved_global
  end)

  local run = has_redis and it or pending

  run("loads and passes every bank trace", function()
    reactor = trace.check_reactor(assert(loadfile("scenarios/bank/reactor.lua"))(), "reactor.lua")
    local results = trace.run(reactor, trace.decode_all(trace.collect({ "scenarios/bank/traces" })))
    assert.equal(4, #results)
    for i, ok in ipairs(results) do assert.is_true(ok, tostring(tests[i].err)) end
    assert.equal(60, tests[1].timeout)
  end)

  run("fails a trace whose model disagrees with redis, naming the step", function()
    local f = assert(io.open("scenarios/bank/traces/quint_1.itf.json"))
    local text = f:read("a"):gsub('"bob",{"#bigint":"80"}', '"bob",{"#bigint":"81"}', 1)
    f:close()
    tests = {}
    local results = trace.run(reactor, { { path = "tampered.itf.json", trace = itf.decode(text) } })
    assert.same({ false }, results)
    local msg = tests[1].err.message
    assert.matches("^trace tampered.itf.json, step 2 %(#meta.index 1%), action Transfer: check: "
      .. "balances: at %.bob: expected 81, got 80\nmodel state: ", msg)
  end)
end)
