-- atom.net and atom.proxy: the network faults of SPEC §11 as policy over
-- src/netns.c (hosts: one network namespace each; drop rules through
-- libnftables) and src/proxy.c (a TCP forwarder that delays, slows,
-- blackholes or resets). Argument checks, ownership and `fault` events live here.
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local sched = require "atom.sched"
require "atom.proc" -- its owner_end hook (stop processes) must run before ours (close hosts)
local task = require "atom.task"

local M = {}

local format = string.format

local function usage(msg) errors.raise("usage", msg) end
local function bad(n, fname, msg) errors.argerror(n, fname, msg) end

local function need_isolation(what)
  if not _atom.isolated() then
    usage(format("%s needs an isolated run: atomlua run --isolate (or ATOMLUA_ISOLATE=1)", what))
  end
end

-- {==== ownership ====
-- What a task opens is closed when it ends (SPEC Part II). Rules and proxies
-- belong to the task that made them; hosts, like processes (SPEC §4), to the
-- nearest test or the root, after whose processes they close. This is the
-- one place that knows how; a generic owned-resource list of the scheduler
-- can replace it.

local hosts_by_owner = setmetatable({}, { __mode = "k" })

local function own(close, for_owner)
  if for_owner then
    local t = _atom.owner()
    if not t then return end
    local list = hosts_by_owner[t]
    if not list then
      list = {}
      hosts_by_owner[t] = list
    end
    list[#list + 1] = close
  else
    sched.defer(close)
  end
end

table.insert(task.owner_end, function(me)
  local list = hosts_by_owner[me]
  if not list then return end
  hosts_by_owner[me] = nil
  for i = #list, 1, -1 do list[i]() end
end)

-- }====

-- {==== hosts ====

local Host = {}
local host_mt = { __name = "atom.host", __index = Host }
local hosts = {} -- address -> open host
local host_count = 0

host_mt.__tostring = function(h) return format("host %s (%s)", h.name, h.address) end
host_mt.__close = function(h) sched.shield(Host.close, h) end

local function check_host(h, fname)
  if getmetatable(h) ~= host_mt then
    usage(format("bad argument #0 to '%s' (host expected; use h:%s)", fname, fname))
  end
end

--- A new host: a network namespace of its own with address 10.77.0.N,
--- linked to the scenario's namespace, which routes between hosts.
---@param name string|nil (default "host<N>")
---@return table host with h.name, h.address
function M.host(name)
  errors.checktype(1, "host", name, "string", true)
  need_isolation("atom.net.host")
  _atom.checkpoint("atom.net.host")
  local ud, addr = _atom.host_new()
  host_count = host_count + 1
  local h = setmetatable({ name = name or ("host" .. host_count), address = addr, _ud = ud,
    _procs = {} }, host_mt)
  hosts[addr] = h
  own(function() Host.close(h) end, true)
  return h
end

-- For proc.lua: the namespace fd a process of host h joins; raises when
-- h is no open host.
function M.netns_fd(h, n, fname)
  if getmetatable(h) ~= host_mt then bad(n, fname, "field 'net' must be a host (from atom.net.host)") end
  local fd = h._ud:fd()
  if not fd then usage(format("%s: %s is closed", fname, tostring(h))) end
  return fd
end

-- The host's processes that may still run (strong refs: a weak table may
-- hold processes whose handle was already finalized); exited ones are dropped.
function M.track(h, p)
  local live = {}
  for _, q in ipairs(h._procs) do if q:is_running() then live[#live + 1] = q end end
  live[#live + 1] = p
  h._procs = live
end

local function with_net(spec, h, fname)
  if type(spec) ~= "table" then bad(1, fname, "table expected, got " .. type(spec)) end
  local s = {}
  for k, v in pairs(spec) do s[k] = v end
  s.net = h
  return s
end

--- Run a process inside the host (everything atom.spawn promises).
function Host:spawn(spec)
  check_host(self, "spawn")
  return require("atom.proc").spawn(with_net(spec, self, "spawn"))
end

function Host:exec(spec)
  check_host(self, "exec")
  return require("atom.proc").exec(with_net(spec, self, "exec"))
end

function Host:sh(cmd, opts)
  check_host(self, "sh")
  errors.checktype(1, "sh", cmd, "string")
  if type(opts) == "number" then opts = { timeout = opts } end
  if opts ~= nil and type(opts) ~= "table" then bad(2, "sh", "number or table expected, got " .. type(opts)) end
  return require("atom.proc").sh(cmd, with_net(opts or {}, self, "sh"))
end

--- Stop the host's processes (concurrently, each with its grace) and remove
--- the host; it is unreachable afterwards. Idempotent.
function Host:close()
  check_host(self, "close")
  if self._closed then return end
  self._closed = true
  hosts[self.address] = nil
  local stops = {}
  for _, p in ipairs(self._procs) do
    if p:is_running() then stops[#stops + 1] = function() p:stop() end end
  end
  if #stops > 0 and _atom.current() then pcall(sched.gather, stops) end
  for _, p in ipairs(self._procs) do if p:is_running() then p:kill("KILL") end end
  self._procs = {}
  self._ud:close()
end

-- }====

-- {==== rules ====

local Rule = {}
local rule_mt = { __name = "atom.rule", __index = Rule }
local live = {} -- rule -> true, while in force
local table_made = false

rule_mt.__tostring = function(r)
  if not r.from then return format("rule (%d drops)", #r._drops) end
  return format("rule drop %s -> %s%s", r.from, r.to, r.port and (":" .. r.port) or "")
end
rule_mt.__close = function(r) Rule.remove(r) end

local function host_address(v, n, field)
  local addr
  if getmetatable(v) == host_mt then
    if v._closed then usage(format("bad argument #%d to 'drop' (field '%s': %s is closed)", n, field, tostring(v))) end
    addr = v.address
  elseif type(v) == "string" then
    addr = v
  else
    bad(n, "drop", format("field '%s' must be a host or an address, got %s", field, v == nil and "no value" or type(v)))
  end
  if addr == "10.77.0.1" then
    usage(format("bad argument #%d to 'drop' (field '%s' is the scenario's own address 10.77.0.1: the scenario is never cut off)", n, field))
  end
  if not hosts[addr] then
    usage(format("bad argument #%d to 'drop' (field '%s': %s is no host of this run)", n, field, addr))
  end
  return addr
end

local function ensure_table()
  if table_made then return end
  _atom.nft("add table inet atomlua\n" ..
    "add chain inet atomlua forward { type filter hook forward priority 0; policy accept; }\n")
  table_made = true
end

local function fault(action, detail, cluster)
  if events.active("fault") then events.emit("fault", { action = action, detail = detail, cluster = cluster }) end
end

local function check_drop(spec, n, fname)
  if type(spec) ~= "table" then bad(n, fname, "table expected, got " .. (spec == nil and "no value" or type(spec))) end
  for k in pairs(spec) do
    if k ~= "from" and k ~= "to" and k ~= "port" then bad(n, fname, format("unknown field '%s'", tostring(k))) end
  end
  local from, to = host_address(spec.from, n, "from"), host_address(spec.to, n, "to")
  if from == to then bad(n, fname, "fields 'from' and 'to' are the same host") end
  local port = spec.port
  if port ~= nil and (math.type(port) ~= "integer" or port < 1 or port > 65535) then
    bad(n, fname, "field 'port' must be an integer from 1 to 65535")
  end
  return { from = from, to = to, port = port }
end

--- Drop packets from host `from` to host `to` (optionally only to
--- destination port `port`, TCP and UDP): connections hang, nothing is
--- refused. In force when it returns; removed with r:remove(), atom.net.heal()
--- or when the calling task ends. A list of such tables drops them all in
--- one step and returns one rule for all of them.
---@param spec {from: table|string, to: table|string, port: integer|nil}|table[]
---@return table rule
function M.drop(spec)
  if type(spec) ~= "table" then bad(1, "drop", "table expected, got " .. (spec == nil and "no value" or type(spec))) end
  need_isolation("atom.net.drop")
  local list = {}
  if spec[1] ~= nil then
    for k in pairs(spec) do
      if math.type(k) ~= "integer" then bad(1, "drop", "a list of drops must have no other fields") end
    end
    for i, s in ipairs(spec) do list[i] = check_drop(s, 1, "drop") end
  else
    list[1] = check_drop(spec, 1, "drop")
  end
  _atom.checkpoint("atom.net.drop")
  ensure_table()
  local cmds = {}
  for i, d in ipairs(list) do
    cmds[i] = format("add rule inet atomlua forward ip saddr %s ip daddr %s%s drop\n", d.from, d.to,
      d.port and format(" meta l4proto { tcp, udp } th dport %d", d.port) or "")
  end
  local out = _atom.nft(table.concat(cmds), true)
  local handles = {}
  for h in out:gmatch("# handle (%d+)") do handles[#handles + 1] = h end
  if #handles ~= #list then errors.raise("io", "nftables did not say which rules it added: " .. out) end
  local r = setmetatable({ _handles = handles, _drops = list }, rule_mt)
  if #list == 1 then r.from, r.to, r.port = list[1].from, list[1].to, list[1].port end
  live[r] = true
  own(function() Rule.remove(r) end)
  for _, d in ipairs(list) do fault("drop", { from = d.from, to = d.to, port = d.port }) end
  return r
end

--- Remove the rule (all its drops, in one step); idempotent.
function Rule:remove()
  if getmetatable(self) ~= rule_mt then usage("bad argument #0 to 'remove' (rule expected; use r:remove)") end
  if not live[self] then return end
  live[self] = nil
  local cmds = {}
  for i, h in ipairs(self._handles) do cmds[i] = "delete rule inet atomlua forward handle " .. h .. "\n" end
  _atom.nft(table.concat(cmds))
  for _, d in ipairs(self._drops) do fault("remove", { from = d.from, to = d.to, port = d.port }) end
end

--- Remove every rule.
function M.heal()
  need_isolation("atom.net.heal")
  if table_made then _atom.nft("flush chain inet atomlua forward\n") end
  live = {}
  fault("heal", {})
end

-- }====

-- {==== the proxy ====

local Proxy = {}
local proxy_mt = { __name = "atom.proxy" }

local function split_hostport(s)
  local host, port = s:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = s:match("^([^:]+):(%d+)$") end
  return host, tonumber(port)
end

proxy_mt.__index = function(px, k)
  if k == "stats" then
    local c, o, up, down = rawget(px, "_ud"):stats()
    return { connections = c, open = o, bytes_up = up, bytes_down = down }
  end
  return Proxy[k]
end
proxy_mt.__tostring = function(px) return format("proxy %s:%d -> %s", px.host, px.port, px.upstream) end
proxy_mt.__close = function(px) Proxy.close(px) end

local function check_proxy(px, fname)
  if getmetatable(px) ~= proxy_mt then
    usage(format("bad argument #0 to '%s' (proxy expected; use px:%s)", fname, fname))
  end
  if px._closed then
    errors.raise("io", format("px:%s: %s is closed", fname, tostring(px)), { cause = "closed" })
  end
end

--- A TCP proxy to `upstream` ("host:port"), listening on `listen` (a port
--- or "host:port"; default a free port on 127.0.0.1).
---@param opts {upstream: string, listen: integer|string|nil}
---@return table proxy with px.host, px.port, px.stats
function M.proxy(opts)
  if type(opts) ~= "table" then bad(1, "proxy", "table expected, got " .. (opts == nil and "no value" or type(opts))) end
  for k in pairs(opts) do
    if k ~= "upstream" and k ~= "listen" then bad(1, "proxy", format("unknown field '%s'", tostring(k))) end
  end
  if type(opts.upstream) ~= "string" then bad(1, "proxy", "field 'upstream' (\"host:port\") is required") end
  local uhost, uport = split_hostport(opts.upstream)
  if not uhost or uport < 1 or uport > 65535 then bad(1, "proxy", "field 'upstream' must be \"host:port\"") end
  local lhost, lport = "127.0.0.1", 0
  local l = opts.listen
  if math.type(l) == "integer" then
    lport = l
  elseif type(l) == "string" then
    lhost, lport = split_hostport(l)
    if not lhost then bad(1, "proxy", "field 'listen' must be a port or \"host:port\"") end
  elseif l ~= nil then
    bad(1, "proxy", "field 'listen' must be a port or \"host:port\"")
  end
  if lport < 0 or lport > 65535 then bad(1, "proxy", "field 'listen': port out of range") end
  _atom.checkpoint("atom.proxy")
  -- Jitter is drawn from a generator seeded by math.random, itself seeded by --seed.
  local ud, host, port = _atom.proxy_new(lhost, lport, uhost, uport, math.random(0, math.maxinteger))
  local px = setmetatable({ host = host, port = port, upstream = opts.upstream, _ud = ud,
    _set = { direction = "both" } }, proxy_mt)
  own(function() Proxy.close(px) end)
  return px
end

local set_fields = { delay = "number", jitter = "number", rate = "number", blackhole = "boolean",
  reset = "boolean", direction = "string" }

local function apply(px)
  local s = px._set
  for d, name in ipairs({ "up", "down" }) do
    if s.direction == "both" or s.direction == name then
      px._ud:apply(d - 1, s.delay or 0, s.jitter or 0, s.rate or 0, s.blackhole or false, s.reset or false)
    else
      px._ud:apply(d - 1, 0, 0, 0, false, false)
    end
  end
  px._ud:kick()
end

--- Merge settings into the current ones and apply them to open and new
--- connections: delay, jitter (seconds), rate (bytes per second), blackhole,
--- reset, direction ("up", "down" or "both").
function Proxy:set(opts)
  check_proxy(self, "set")
  if type(opts) ~= "table" then bad(1, "set", "table expected, got " .. (opts == nil and "no value" or type(opts))) end
  for k, v in pairs(opts) do
    local want = set_fields[k]
    if not want then bad(1, "set", format("unknown field '%s'", tostring(k))) end
    if type(v) ~= want then bad(1, "set", format("field '%s' must be a %s, got %s", k, want, type(v))) end
    if want == "number" and not (v >= 0 and v < math.huge) then
      bad(1, "set", format("field '%s' must be a non-negative number", k))
    end
  end
  local d = opts.direction
  if d and d ~= "up" and d ~= "down" and d ~= "both" then
    bad(1, "set", "field 'direction' must be \"up\", \"down\" or \"both\"")
  end
  for k, v in pairs(opts) do self._set[k] = v end
  apply(self)
end

--- Back to plain forwarding.
function Proxy:clear()
  check_proxy(self, "clear")
  self._set = { direction = "both" }
  apply(self)
end

--- Stop listening and close every connection; idempotent.
function Proxy:close()
  if getmetatable(self) ~= proxy_mt then usage("bad argument #0 to 'close' (proxy expected; use px:close)") end
  if self._closed then return end
  self._closed = true
  self._ud:close()
end

-- }====

return M
