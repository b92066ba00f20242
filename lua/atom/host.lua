-- atom.host: nodes on other machines (docs/hosts.md). A host is a copy of
-- atomlua running as `atomlua agent` at the far end of a transport that
-- gives a remote stdin/stdout (ssh -T, kubectl exec -i, docker exec -i, or
-- sh -c for this machine). This file is the policy: the bootstrap shell
-- line (upload of the binary when missing, checksum-verified), the hello,
-- the host's API and its end. The wire is src/agent.c and src/remote.c;
-- processes on a host are the process objects of lua/atom/proc.lua.
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local state = require "atom.state"
local proc = require "atom.proc"
local task = require "atom.task"

local M = {}
local PROTO = 1 -- src/agent.h AGENT_PROTO
local PUT_CHUNK = 1024 * 1024

local format, concat, pack, unpack = string.format, table.concat, string.pack, string.unpack
local now = _atom.now

local Host = {}
local hmt = { __name = "atom.host", __index = Host }
debug.getregistry()["atom.host"] = hmt
hmt.__tostring = function(h) return "host " .. h.name end

local by_owner = setmetatable({}, { __mode = "k" }) -- owner task -> its hosts
local counter = 0

local function bad(n, msg) errors.argerror(n, "host", msg) end

local function shq(s)
  if s:find("^[%w%./_=:,@%%+-]+$") then return s end
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The user@host argument of an ssh command line (nil when via is not ssh).
local function ssh_target(via)
  if not via[1]:find("ssh$") then return nil end
  local with_value = "BbcDEeFIiJLlmOopQRSWw" -- ssh's options that take a value
  local i = 2
  while i <= #via do
    local a = via[i]
    if a == "--" then return via[i + 1] end
    if a:sub(1, 1) ~= "-" then return a end
    if #a == 2 and with_value:find(a:sub(2), 1, true) then i = i + 1 end
    i = i + 1
  end
  return nil
end

-- {==== the local binary and its checksum ====

local binaries = {} -- path -> {size =, sum =}

local function local_binary()
  local path = _atom.cli and require("luv").exepath() or os.getenv("ATOMLUA_BIN")
  if not path or path == "" then
    errors.raise("usage", "atom.host: the atomlua binary to upload is unknown in module mode: "
      .. "set ATOMLUA_BIN, or give upload = false with the host's atomlua = path")
  end
  local b = binaries[path]
  if b then return path, b end
  local out = proc.sh("sha256sum " .. shq(path) .. " && wc -c < " .. shq(path), { name = "sha256sum" })
  local sum, size = out:match("^(%x+)%s.-\n%s*(%d+)")
  if not sum then errors.raise("io", "atom.host: cannot checksum " .. path .. ": " .. out) end
  b = { sum = sum, size = tonumber(size) }
  binaries[path] = b
  return path, b
end

-- The shell line given to the transport: run the agent, or first ask for
-- the binary ("atomlua-upload" on stdout), take exactly its size from
-- stdin, check it and put it in place.
local function bootstrap(remote_bin, upload, sum, size)
  local b = "b=" .. remote_bin .. "; "
  if not upload then return b .. 'exec "$b" agent' end
  return b .. "s=" .. sum .. "; " ..
    'if [ -x "$b" ] && [ "$(sha256sum "$b" 2>/dev/null | cut -c1-64)" = "$s" ]; then exec "$b" agent; fi; ' ..
    "printf 'atomlua-upload\\n'; t=\"$b.up$$\"; " ..
    'mkdir -p "$(dirname "$b")" && head -c ' .. size .. ' > "$t" && ' ..
    '[ "$(sha256sum "$t" | cut -c1-64)" = "$s" ] && chmod 755 "$t" && mv -f "$t" "$b" && exec "$b" agent; ' ..
    'rm -f "$t"; echo "atomlua: the upload of the binary to $b failed" >&2; exit 3'
end

-- }====

-- {==== connecting ====

local function fail(h, msg)
  local t = h._t
  if t then
    t.critical = false
    pcall(t.close_stdin, t)
    pcall(t.stop, t, 1)
  end
  h._link:close()
  h._closed = true
  errors.raise("process", msg, { host = h.name })
end

function Host:_stderr_block()
  local _, err = self._link:state()
  err = err:gsub("%s+$", "")
  if err == "" then return " (no transport stderr)" end
  local q = {}
  for l in (err .. "\n"):gmatch("([^\n]*)\n") do q[#q + 1] = "  | " .. l end
  if #q > 20 then q = { table.unpack(q, #q - 19) } end
  return "\ntransport stderr:\n" .. concat(q, "\n")
end

function Host:_lost()
  local eof = self._link:state()
  return eof and not self._closing
end

local function connect(h, opts)
  local timeout = opts.timeout or 30
  local upload = opts.upload ~= false
  local local_bin, bin
  if upload then local_bin, bin = local_binary() end
  local remote_bin = opts.atomlua and shq(opts.atomlua)
    or ('"${XDG_CACHE_HOME:-$HOME/.cache}/atomlua/' .. _atom.version .. '/atomlua"')
  local argv = {}
  for i, a in ipairs(h.via) do argv[i] = a end
  argv[#argv + 1] = bootstrap(remote_bin, upload, bin and bin.sum, bin and bin.size)
  local link = _atom.link_new(h.name)
  h._link = link
  local ofd, efd = link:child_fds()
  local ok, t = pcall(proc.start_transport, argv, h.name, ofd, efd, h)
  if not ok then
    link:close()
    errors.raise("process", format("host %s: cannot start the transport %s: %s", h.name, h.via[1],
      errors.is(t) and t.message or tostring(t)), { host = h.name })
  end
  h._t = t
  link:attach(t._c)
  local deadline = now() + timeout
  local desc = format("connect to host %s", h.name)
  local uploaded = false
  while true do
    local left = deadline - now()
    local ok2, kind, a, b = pcall(link.hello, link, left > 0 and left or 0, desc)
    while ok2 and kind == nil do -- woken: look at the state again
      ok2, kind, a, b = pcall(link.hello, link, math.max(deadline - now(), 0), desc)
    end
    if not ok2 then
      if errors.is(kind, "timeout") then
        fail(h, format("host %s: no answer from the agent through %s within %gs%s", h.name,
          concat(h.via, " "), timeout, h:_stderr_block()))
      end
      fail(h, format("host %s: %s", h.name, errors.is(kind) and kind.message or tostring(kind)))
    end
    if kind == "upload" then
      local f = assert(io.open(local_bin, "rb"))
      local data = f:read("a")
      f:close()
      local okw, e = pcall(t.write, t, data, { timeout = math.max(deadline - now(), 0.001) })
      if not okw and not errors.is(e, "io") then error(e, 0) end
      uploaded = true
    elseif kind == "hello" then
      if a ~= PROTO then
        fail(h, format("host %s: its agent (atomlua %s) speaks protocol %d, this atomlua (%s) speaks %d: "
          .. "run the same version on both ends (or let atom.host upload it)", h.name, b, a, _atom.version, PROTO))
      end
      h.agent_version = b
      break
    elseif kind == "fatal" then
      fail(h, format("host %s: %s", h.name, a))
    else
      local okw, code, sig = pcall(t.wait, t, 2)
      local how = okw and (code and ("exited with code " .. code) or ("ended by signal " .. tostring(sig)))
        or "closed its stdout"
      fail(h, format("host %s: cannot start the agent through %s: the transport %s%s", h.name,
        concat(h.via, " "), how, h:_stderr_block()))
    end
  end
  link:send("h", 0, pack(">I4", PROTO) .. _atom.version)
  h.uploaded = uploaded
  -- From here on, a transport that ends on its own fails the host's owner.
  t.critical = true
end

-- }====

-- {==== requests ====

function Host:_id()
  self._next = self._next + 1
  return self._next
end

function Host:_request(kind, payload, what)
  if self._closed then errors.raise("usage", format("host %s is closed", self.name)) end
  local k, res = self._link:request(kind, self:_id(), payload, self.timeout,
    format("%s on host %s", what, self.name))
  if k == "e" then errors.raise("io", format("%s on host %s: %s", what, self.name, res), { host = self.name }) end
  return res
end

local function item(list, tag, v)
  list[#list + 1] = pack(">c1s4", tag, v)
end

-- proc.lua's start() calls this instead of _atom.proc_spawn: the agent
-- spawns, then the C handle is made the same way, fed by the link.
function Host:_start(o)
  if self._closed then errors.raise("usage", format("host %s is closed", self.name)) end
  if o.netns then errors.raise("usage", "a process on a host cannot join an atom.net host (field 'net')") end
  local items = {}
  for _, a in ipairs(o.argv) do item(items, "a", a) end
  if o.env_clear then item(items, "z", "") end
  if o.env then
    for k, v in pairs(o.env) do
      if v == false then item(items, "u", k) else item(items, "e", k .. "=" .. v) end
    end
  end
  if o.cwd then item(items, "c", o.cwd) end
  item(items, "i", (o.stdin == "pipe" or o.stdin_data) and "pipe" or "null")
  item(items, "o", o.output)
  local rid = self:_id()
  local k, res = self._link:request("s", rid, concat(items), self.timeout,
    format("spawn %s on host %s", o.name, self.name))
  if k == "e" then errors.raise("spawn", format("%s (host %s)", res, self.name), { host = self.name }) end
  o.link, o.rid, o.pid = self._link, rid, (unpack(">I4", res))
  if o.stdin_data then o.stdin = "pipe" end
  self._procs[o.wrapper] = true
  return _atom.proc_spawn(o)
end

-- }====

-- {==== the host's API ====

local function check(h, fname)
  if getmetatable(h) ~= hmt then
    errors.raise("usage", format("bad argument #0 to '%s' (host expected; use h:%s)", fname, fname))
  end
end

--- Start a process on the host: every field of atom.spawn.
function Host:spawn(spec)
  check(self, "spawn")
  return proc.spawn(spec, self)
end

--- Run a command on the host to completion (atom.exec's fields).
function Host:exec(spec)
  check(self, "exec")
  return proc.exec(spec, self)
end

--- Run `/bin/sh -c cmdline` on the host; its stdout without the trailing newline.
function Host:sh(cmdline, opts)
  check(self, "sh")
  return proc.sh(cmdline, opts, self)
end

--- A free TCP port on the host, reserved there until the run ends.
function Host:free_port()
  check(self, "free_port")
  return tonumber(self:_request("f", "", "free_port"))
end

--- Copy a local file to the host (mode kept); returns the remote path.
function Host:put(local_path, remote_path)
  check(self, "put")
  errors.checktype(1, "put", local_path, "string")
  errors.checktype(2, "put", remote_path, "string")
  local f, err = io.open(local_path, "rb")
  if not f then errors.raise("io", "put: " .. err) end
  local st = require("luv").fs_stat(local_path)
  local mode = st and (st.mode & 4095) or 420
  local first = true
  repeat
    local chunk = f:read(PUT_CHUNK) or ""
    local last = #chunk < PUT_CHUNK
    if last then last = true end
    local flags = (first and 1 or 0) | (last and 2 or 0)
    self:_request("u", pack(">BI4s4", flags, mode, remote_path) .. chunk, "put " .. remote_path)
    first = false
  until last
  f:close()
  return remote_path
end

--- Copy a file of the host here (at most 64 MiB); returns the local path.
function Host:get(remote_path, local_path)
  check(self, "get")
  errors.checktype(1, "get", remote_path, "string")
  errors.checktype(2, "get", local_path, "string")
  local data = self:_request("g", remote_path, "get " .. remote_path)
  local f, err = io.open(local_path, "wb")
  if not f then errors.raise("io", "get: " .. err) end
  f:write(data)
  f:close()
  return local_path
end

function Host:_close()
  if self._closed then return end
  self._closed, self._closing = true, true
  self._link:closing()
  local t = self._t
  t.critical = false
  pcall(t.close_stdin, t)
  -- The agent kills what is left, removes h.dir and exits when stdin closes.
  local ok = pcall(t.wait, t, 5)
  if not ok then pcall(t.stop, t, 1) end
  self._link:close()
  events.emit("host_close", { name = self.name })
end

--- Close the host now (it closes by itself when its owner ends): stops its
--- processes, removes h.dir (unless --keep) and ends the agent.
function Host:close()
  check(self, "close")
  if self._closed then return end
  local procs = {}
  for p in pairs(self._procs) do procs[#procs + 1] = p end
  for _, p in ipairs(procs) do pcall(p.stop, p) end
  self:_close()
end
hmt.__close = function(h) h:close() end

-- }====

local function host_end(me)
  local list = by_owner[me]
  if not list then return end
  by_owner[me] = nil
  _atom.proc_stop_owned("remote") -- processes on hosts first, while the transports are up
  for _, h in ipairs(list) do h:_close() end
end
table.insert(task.owner_end, 1, host_end)

--- Connect to a host through `via` (argv of a transport that runs a shell
--- line: ssh -T user@node, kubectl exec -i pod -- sh -c, sh -c).
---@param opts {via: string[], name: string?, address: string?, atomlua: string?, upload: boolean?, timeout: number?}
---@return table host
function M.host(opts)
  if type(opts) ~= "table" then bad(1, "table expected, got " .. type(opts)) end
  local known = { via = "table", name = "string", address = "string", atomlua = "string",
    upload = "boolean", timeout = "number" }
  for k, v in pairs(opts) do
    if not known[k] then bad(1, format("unknown field '%s'", tostring(k))) end
    if type(v) ~= known[k] then bad(1, format("field '%s' must be a %s, got %s", k, known[k], type(v))) end
  end
  local via = opts.via
  if not via or #via == 0 then bad(1, "field 'via' must be a non-empty list (e.g. {\"ssh\", \"-T\", \"user@node\"})") end
  local v = {}
  for i, a in ipairs(via) do
    if type(a) ~= "string" and type(a) ~= "number" then bad(1, format("via[%d] must be a string", i)) end
    v[i] = tostring(a)
  end
  if opts.timeout and opts.timeout <= 0 then bad(1, "field 'timeout' must be positive") end
  _atom.checkpoint("atom.host")
  counter = counter + 1
  local target = ssh_target(v)
  local target_host = target and target:gsub("^.*@", "")
  local h = setmetatable({ via = v, timeout = opts.timeout or 30, _next = 0,
    _procs = setmetatable({}, { __mode = "k" }) }, hmt)
  h.name = opts.name or target_host or ("host" .. counter)
  h.address = opts.address or target_host or "127.0.0.1"
  connect(h, opts)
  local ok, dir = pcall(h._request, h, "d", state.keep and "\1" or "\0", "dir")
  if not ok then
    h:_close()
    error(dir, 0)
  end
  h.dir = dir
  local owner = _atom.owner()
  if owner then
    local list = by_owner[owner] or {}
    by_owner[owner] = list
    list[#list + 1] = h
  end
  events.emit("host_open", { name = h.name, via = v, uploaded = h.uploaded, dir = dir,
    agent_version = h.agent_version })
  return h
end

M._Host = Host -- for spec/types_spec.lua

return M
