-- kvnode: a tiny replicated key-value node, the fixture "node binary" of
-- scenarios/http_cluster.lua (no package to install: atomlua runs it).
--   atomlua run -q scenarios/kvnode.lua -- --name kv1 --port 8001 [--peer URL]... [--heartbeat SECS]
-- HTTP/1.1 on 127.0.0.1, one request per connection:
--   GET /health -> "ok kv1"       GET /kv/KEY -> the value (404 if absent)
--   PUT /kv/KEY (body: value) -> {"acks": n, "version": v}: stored here, in
--     ./data.log (its cwd: the node's directory) and on every peer that
--     answers within 0.5 s (n counts this node too)
--   GET /dump -> every entry as JSON; a starting node pulls it from its peers
-- Prints "kvnode NAME ready on 127.0.0.1:PORT" once it listens, then
-- "heartbeat N" every 0.2 s, so a test can see whether it runs.
-- Deliberately naive (last version wins, no quorum): it is a test subject.
local uv = require "luv"

local opts = { peers = {}, heartbeat = 0.2 }
do
  local a, i = atom.args, 1
  while a[i] do
    local k, v = a[i], a[i + 1]
    if k == "--name" then opts.name = v
    elseif k == "--port" then opts.port = tonumber(v)
    elseif k == "--peer" then opts.peers[#opts.peers + 1] = v
    elseif k == "--heartbeat" then opts.heartbeat = tonumber(v)
    else error("kvnode: unknown argument " .. tostring(k)) end
    i = i + 2
  end
  assert(opts.name and opts.port, "kvnode: --name and --port are required")
end

-- {==== the store: key -> {value =, version =}, persisted as one JSON line per write ====
local store = {}
local log = assert(io.open("data.log", "a+"))
for line in log:lines() do
  local e = atom.json.decode(line)
  store[e.key] = { value = e.value, version = e.version }
end

-- Keep an entry if it is newer than ours; true when it was.
local function apply(key, value, version)
  local cur = store[key]
  if cur and cur.version >= version then return false end
  store[key] = { value = value, version = version }
  log:write(atom.json.encode({ key = key, value = value, version = version }), "\n")
  log:flush()
  return true
end

-- Catch up from the peers that answer before serving.
for _, peer in ipairs(opts.peers) do
  local ok, resp = pcall(atom.http.get, peer .. "/dump", 0.5)
  if ok and resp.status == 200 then
    for key, e in pairs(resp:json()) do apply(key, e.value, e.version) end
  end
end
-- }====

-- {==== HTTP ====
local reasons = { [200] = "OK", [400] = "Bad Request", [404] = "Not Found" }

local function reply(client, status, body)
  client:write(("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"):format(
    status, reasons[status], #body, body), function() client:close() end)
end

local function replicate(key, e)
  local acks = 1
  atom.map(opts.peers, function(peer)
    local ok, resp = pcall(atom.http.request, { method = "PUT", url = peer .. "/replica/" .. key,
      json = { value = e.value, version = e.version }, timeout = 0.5 })
    if ok and resp.status == 200 then acks = acks + 1 end
  end)
  return acks
end

-- Runs in its own task (atom.go), so it may wait on the peers.
local function handle(client, method, path, body)
  local key = path:match("^/kv/(.+)$")
  if method == "GET" and path == "/health" then
    reply(client, 200, "ok " .. opts.name)
  elseif method == "GET" and path == "/dump" then
    reply(client, 200, atom.json.encode(store))
  elseif method == "GET" and key then
    local e = store[key]
    reply(client, e and 200 or 404, e and e.value or "")
  elseif method == "PUT" and key then
    local version = (store[key] and store[key].version or 0) + 1
    apply(key, body, version)
    local acks = replicate(key, store[key])
    reply(client, 200, atom.json.encode({ acks = acks, version = version }))
  elseif method == "PUT" and path:match("^/replica/") then
    local e = atom.json.decode(body)
    apply(path:match("^/replica/(.+)$"), e.value, e.version)
    reply(client, 200, "")
  else
    reply(client, 404, "")
  end
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", opts.port))
assert(server:listen(64, function(err)
  if err then return end
  local client = uv.new_tcp()
  server:accept(client)
  local buf = ""
  client:read_start(function(rerr, data)
    if rerr or not data then client:close(); return end
    buf = buf .. data
    local head_end = buf:find("\r\n\r\n", 1, true)
    if not head_end then return end
    local len = tonumber(buf:sub(1, head_end):lower():match("content%-length:%s*(%d+)")) or 0
    if #buf < head_end + 3 + len then return end
    client:read_stop()
    local method, path = buf:match("^(%u+) (%S+)")
    local body = buf:sub(head_end + 4, head_end + 3 + len)
    atom.go(function()
      local ok = pcall(handle, client, method, path or "", body)
      if not ok and not client:is_closing() then reply(client, 400, "") end
    end)
  end)
end))
-- }====

print(("kvnode %s ready on 127.0.0.1:%d"):format(opts.name, opts.port))
local n = 0
while true do
  atom.sleep(opts.heartbeat)
  n = n + 1
  print("heartbeat " .. n)
end
