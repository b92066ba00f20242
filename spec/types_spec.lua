-- The LuaLS annotations (types/atom.lua) against the real module, both ways:
-- every public function, method and field of `atom` and its objects is
-- annotated, and every annotation names something that exists.
local support = require "support.atom_loader"
local atom = support.atom

local META = "types/atom.lua"

-- What the meta file declares: "atom.http.get", "atom.process:expect",
-- "atom.process.pid" (fields), from function lines, assignments and the
-- ---@field lines of each class.
local function declared()
  local fh = assert(io.open(META))
  local src = fh:read("a")
  fh:close()
  local names, class_of_local = {}, {}
  local class
  for line in src:gmatch("[^\n]*") do
    local c = line:match("^%-%-%-@class ([%w_.]+)")
    if c then class = c end
    local f = class and line:match("^%-%-%-@field ([%w_]+) ")
    if f and class:find("^atom%.") and not class:find("_opts$") and not class:find("_spec$")
      and not class:find("_request$") and not class:find("_result$") and class ~= "atom.error" then
      names[class .. "." .. f] = true
    end
    local loc = line:match("^local (%u%w*) = {}")
    if loc and class then class_of_local[loc] = class end
    local fn = line:match("^function ([%w_.]+)%(")
    if fn then names[fn] = true end
    local obj, meth = line:match("^function (%u%w*):([%w_]+)%(")
    if obj then names[assert(class_of_local[obj], obj) .. ":" .. meth] = true end
    local var = line:match("^(atom[%w_.]*) = ")
    if var and var ~= "atom" then names[var] = true end
  end
  return names
end

-- Public names reachable at run time.
local function present()
  local names = {}
  local function walk(prefix, t, depth)
    for k, v in pairs(t) do
      if type(k) == "string" and not (k:sub(1, 1) == "_" and prefix ~= "atom") then
        local name = prefix .. "." .. k
        if type(v) == "function" or depth == 2 or type(v) ~= "table" then
          names[name] = true
        else
          names[name] = true
          walk(name, v, depth + 1)
        end
      end
    end
  end
  -- force the lazily loaded fields
  for _, k in ipairs { "assert_eq", "repr", "json", "base64", "hex", "spawn", "exec", "sh", "http", "rpc",
    "rpc_batch", "tcp", "wait_port", "free_port", "itf", "cluster", "ws", "net", "proxy", "history", "grpc", "host", "test", "skip", "run" } do
    local _ = atom[k]
  end
  walk("atom", atom, 1)
  local function methods(class, tbl)
    for k, v in pairs(tbl) do
      if type(k) == "string" and type(v) == "function" and k:sub(1, 1) ~= "_" then
        names[class .. ":" .. k] = true
      end
    end
  end
  local function upvalue_table(fn)
    for i = 1, 20 do
      local n, v = debug.getupvalue(fn, i)
      if not n then break end
      if type(v) == "table" and v.expect then return v end
    end
  end
  local uv = require "luv"
  atom.run(function()
    local t = atom.go(function() end)
    methods("atom.task", getmetatable(t).methods)
    names["atom.task.name"] = true
    t:join()
    methods("atom.channel", getmetatable(atom.channel()))
    methods("atom.event", getmetatable(atom.event()))
    methods("atom.semaphore", getmetatable(atom.semaphore(1)))
    local p = atom.spawn { "true" }
    methods("atom.process", upvalue_table(getmetatable(p).__index))
    for _, f in ipairs { "pid", "name", "critical", "log" } do names["atom.process." .. f] = true end
    p:wait()
    local server = uv.new_tcp()
    server:bind("127.0.0.1", 0)
    server:listen(1, function() end)
    local s = atom.tcp.connect("127.0.0.1", server:getsockname().port)
    methods("atom.stream", getmetatable(s).__index)
    s:close()
    server:close()
    methods("atom.http_response", atom.http._Response)
    for _, f in ipairs { "status", "headers", "body", "duration" } do names["atom.http_response." .. f] = true end
    local c = atom.cluster { size = 1, cmd = function() return { "true" } end }
    methods("atom.cluster", getmetatable(c).__index)
    for _, f in ipairs { "name", "size", "nodes" } do names["atom.cluster." .. f] = true end
    for f in pairs(c.nodes[1]) do
      if f:sub(1, 1) ~= "_" then names["atom.cluster_node." .. f] = true end
    end
    names["atom.cluster_node.proc"] = true
    methods("atom.ws", require("atom.ws")._WS)
    for _, f in ipairs { "url", "protocol", "close_code", "close_reason" } do names["atom.ws." .. f] = true end
    methods("atom.grpc_stream", require("atom.grpc")._Stream)
    for _, f in ipairs { "headers", "trailers" } do names["atom.grpc_stream." .. f] = true end
    methods("atom.http_stream", require("atom.hstream")._Resp)
    for _, f in ipairs { "status", "headers", "url" } do names["atom.http_stream." .. f] = true end
    local wsrpc = require "atom.wsrpc"
    methods("atom.rpc_client", wsrpc._Client)
    for _, f in ipairs { "url", "ws" } do names["atom.rpc_client." .. f] = true end
    methods("atom.rpc_subscription", wsrpc._Sub)
    for _, f in ipairs { "id", "query", "client" } do names["atom.rpc_subscription." .. f] = true end
    local h = atom.history()
    local op = h:invoke(1, "read")
    methods("atom.hist", getmetatable(h).__index)
    methods("atom.hist_op", getmetatable(op).__index)
    for _, f in ipairs { "process", "f", "value", "index", "type", "completion" } do
      names["atom.hist_op." .. f] = true
    end
    methods("atom.remote_host", require("atom.host")._Host)
    for _, f in ipairs { "name", "address", "dir", "via", "uploaded" } do names["atom.remote_host." .. f] = true end
    local res = h:check { model = "register" }
    methods("atom.verdict", getmetatable(res).__index)
    for _, f in ipairs { "valid", "ops", "keys", "seconds", "model", "history", "counterexample" } do
      names["atom.verdict." .. f] = true
    end
  end)
  names["atom.dir"] = true -- set in scenario files only
  return names
end

describe("types/atom.lua", function()
  local d, p = declared(), present()
  it("annotates every public function, method and field", function()
    local missing = {}
    for n in pairs(p) do if not d[n] then missing[#missing + 1] = n end end
    table.sort(missing)
    assert.same({}, missing)
  end)
  it("names nothing that does not exist", function()
    local stale = {}
    for n in pairs(d) do if not p[n] then stale[#stale + 1] = n end end
    table.sort(stale)
    assert.same({}, stale)
  end)
end)
