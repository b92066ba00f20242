-- atom.grpc: gRPC calls (SPEC §9). Types come from .proto files (through
-- protoc), compiled descriptor sets or server reflection (lua/atom/pb.lua);
-- messages are encoded and decoded by src/pb.c; src/grpc.c runs the calls
-- on the curl multi handle. This file checks arguments, turns statuses into
-- errors, emits `grpc` events and closes the streams a task opened when it
-- ends (through atom.own).
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local pb = require "atom.pb"
local own = require("atom.own").own

local unary, open, now = _atom.grpc_unary, _atom.grpc_open, _atom.now
local argerror, raise = errors.argerror, errors.raise
local type, pairs, ipairs, format = type, pairs, ipairs, string.format

_atom.grpc_init() -- the stream metatable

local M = {}

local DEFAULT_TIMEOUT = 30
local DEFAULT_MAX = 64 * 1024 * 1024
-- Flags of _atom.grpc_unary / grpc_open (src/grpc.c).
local GF_H2C, GF_INSECURE = 1, 2

local CODES = {
  [0] = "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}
M.codes = {}
for k, v in pairs(CODES) do M.codes[v] = k end

local registry = pb.registry() -- this scenario file's types
M._registry = registry

-- {==== targets, methods, options ====

local targets = {} -- target string -> {base =, flags =, name =}

local function target_of(fname, target)
  local t = targets[target]
  if t then return t end
  if type(target) ~= "string" then
    argerror(1, fname, "target expected, got " .. (target == nil and "no value" or type(target)))
  end
  local scheme, rest = target:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then scheme, rest = "http", target end
  rest = rest:gsub("/+$", "")
  if (scheme ~= "http" and scheme ~= "https") or not rest:find("^[^/]+:%d+$") and not rest:find("^%[.*%]:%d+$") then
    argerror(1, fname, format("invalid target '%s' (host:port, http://host:port or https://host:port)", target))
  end
  t = { base = scheme .. "://" .. rest .. "/", flags = scheme == "http" and GF_H2C or 0, name = rest,
        tls = scheme == "https", urls = {} }
  targets[target] = t
  return t
end

local function method_of(fname, argn, method)
  if type(method) ~= "string" then
    argerror(argn, fname, "method expected, got " .. (method == nil and "no value" or type(method)))
  end
  local m = registry.methods[method] or registry.methods[method:gsub("^/", "")]
  if m then return m end
  if not method:find("^/?[%w_.]+/[%w_]+$") then
    raise("usage", format("invalid method name '%s' (expected \"package.Service/Method\")", method))
  end
  raise("usage", format("unknown method %s (load its .proto with atom.grpc.load or atom.grpc.reflect)", method))
end

local OPTS = { timeout = "number", metadata = "table", tls = "any", max_message = "number" }

local function b64pad(s) return s .. ("="):rep((4 - #s % 4) % 4) end

-- Checked options: timeout (nil: default), metadata lines, tls table|nil, flags, max.
local function opts_of(fname, argn, opts, t, def_timeout)
  if opts == nil then return def_timeout, nil, nil, t.flags, DEFAULT_MAX end
  if type(opts) == "number" then opts = { timeout = opts } end
  if type(opts) ~= "table" then argerror(argn, fname, "number or table expected, got " .. type(opts)) end
  for k, v in pairs(opts) do
    local want = OPTS[k]
    if not want then argerror(argn, fname, format("unknown option '%s'", tostring(k))) end
    if want ~= "any" and type(v) ~= want then
      argerror(argn, fname, format("option '%s' must be a %s, got %s", k, want, type(v)))
    end
  end
  local timeout = opts.timeout
  if timeout == nil then timeout = def_timeout
  elseif not (timeout >= 0) then argerror(argn, fname, "timeout must be a non-negative number") end
  if timeout == math.huge then timeout = -1 end
  local md
  if opts.metadata then
    md = {}
    for k, v in pairs(opts.metadata) do
      if type(k) ~= "string" or not k:find("^[%w_.-]+$") then
        argerror(argn, fname, format("invalid metadata key '%s'", tostring(k)))
      end
      if type(v) ~= "string" and type(v) ~= "number" then
        argerror(argn, fname, format("metadata '%s' must be a string or number, got %s", k, type(v)))
      end
      k = k:lower()
      v = tostring(v)
      if k:find("%-bin$") then
        v = (_atom.base64_encode(v):gsub("=+$", ""))
      elseif v:find("[%c]") then
        argerror(argn, fname, format("metadata '%s' has a control character (use a -bin key for bytes)", k))
      end
      md[#md + 1] = k .. ": " .. v
    end
  end
  local flags, tls = t.flags, nil
  if opts.tls ~= nil and opts.tls ~= false then
    if not t.tls then argerror(argn, fname, "option 'tls' needs an https:// target") end
    if type(opts.tls) == "table" then
      tls = opts.tls
      for k, v in pairs(tls) do
        if k == "insecure" then
          if type(v) ~= "boolean" then argerror(argn, fname, "tls.insecure must be a boolean") end
        elseif k == "ca" or k == "cert" or k == "key" then
          if type(v) ~= "string" then argerror(argn, fname, format("tls.%s must be a file name", k)) end
        else
          argerror(argn, fname, format("unknown tls option '%s'", tostring(k)))
        end
      end
      if tls.insecure then flags = flags | GF_INSECURE end
    elseif opts.tls ~= true then
      argerror(argn, fname, "option 'tls' must be true or a table")
    end
  end
  local max = opts.max_message or DEFAULT_MAX
  return timeout, md, tls, flags, math.tointeger(max) or DEFAULT_MAX
end

-- Metadata as returned: -bin values decoded.
local function md_out(h)
  if type(h) == "string" then h = _atom.grpc_md(h) end
  if not h then return h end
  for k, v in pairs(h) do
    if k:find("%-bin$") then
      local parts = {}
      for p in v:gmatch("[^,%s]+") do
        local ok, d = pcall(_atom.base64_decode, b64pad(p))
        parts[#parts + 1] = ok and d or p
      end
      h[k] = table.concat(parts, ",")
    end
  end
  return h
end

-- A unary call's metadata, parsed on first use: most callers never look.
local Metadata = { __name = "atom.grpc.metadata" }
Metadata.__index = function(m, k)
  local raw = k == "headers" and m._h or k == "trailers" and m._t
  if not raw then return nil end
  local v = md_out(raw)
  rawset(m, k, v)
  return v
end
local function metadata(h, t) return setmetatable({ _h = h, _t = t }, Metadata) end

-- }====

-- {==== errors and events ====

local function pct_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The error of a call that ended with code (not OK).
local function grpc_error(code, msg, cause, method, target, extra)
  msg = msg and pct_decode(msg) or ""
  local status = CODES[code] or tostring(code)
  local fields = { code = code, status = status, method = method, target = target, cause = cause,
                   summary = format("grpc %s from %s at %s%s%s", status, method, target,
                     msg ~= "" and ": " or "", msg) }
  if cause and code == 14 then fields.summary = fields.summary .. format(" (%s)", cause) end
  if extra then for k, v in pairs(extra) do fields[k] = v end end
  local e = errors.new("grpc", msg, fields)
  return e
end

local function emit(target, method, status, t0, err)
  events.emit("grpc", { target = target, method = method, status = status, duration = now() - t0,
                        error = err })
end

-- }====

-- {==== unary calls ====

--- Call a unary method; returns the response message and {headers =, trailers =}.
---@param target string host:port, http://host:port or https://host:port
---@param method string "package.Service/Method"
---@param request table the request message
---@param opts? number|{timeout?: number, metadata?: table, tls?: boolean|table, max_message?: integer}
---@return table response, table metadata
function M.call(target, method, request, opts)
  local t = target_of("call", target)
  local m = method_of("call", 2, method)
  if type(request) ~= "table" then
    argerror(3, "call", "table expected, got " .. (request == nil and "no value" or type(request)))
  end
  local timeout, md, tls, flags, max = opts_of("call", 4, opts, t, DEFAULT_TIMEOUT)
  local pool = registry.pool
  local body = pool:encode(m.input, request, true)
  if #body - 5 > max then
    raise("grpc", format("request message larger than max (%d vs. %d)", #body - 5, max),
      { code = 8, status = "RESOURCE_EXHAUSTED", method = m.name, target = t.name, cause = "too_large" })
  end
  local url = t.urls[m.name]
  if not url then
    url = t.base .. m.name
    t.urls[m.name] = url
  end
  local t0 = events.active("grpc") and now()
  local code, msg, cause, rbody, headers, trailers
  if not t0 then
    code, msg, cause, rbody, headers, trailers =
      unary("call", url, body, md, timeout, flags, tls, max, m.desc)
  else
    local ok
    ok, code, msg, cause, rbody, headers, trailers =
      pcall(unary, "call", url, body, md, timeout, flags, tls, max, m.desc)
    if not ok then
      local err = code
      if not errors.is(err, "usage") then emit(t.name, m.name, nil, t0, err) end
      error(err, 0)
    end
  end
  if code ~= 0 then
    local err = grpc_error(code, msg, cause, m.name, t.name, { metadata = metadata(headers, trailers) })
    if t0 then emit(t.name, m.name, err.status, t0, err) end
    error(err, 0)
  end
  local ok, resp = pcall(pool.decode, pool, m.output, rbody)
  if not ok then
    local err = grpc_error(13, tostring(resp), "protocol", m.name, t.name)
    if t0 then emit(t.name, m.name, err.status, t0, err) end
    error(err, 0)
  end
  if t0 then emit(t.name, m.name, "OK", t0) end
  return resp, metadata(headers, trailers)
end

-- }====

-- {==== streams ====

---@class atom.grpc.stream
local Stream = {}
Stream.__name = "atom.grpc.stream"
Stream.__index = function(s, k)
  if k == "headers" or k == "trailers" then
    local box = rawget(s, "_box")
    if box then
      local h, tr = box:info()
      if h then rawset(s, "headers", md_out(h)) end
      if tr then rawset(s, "trailers", md_out(tr)) end
    end
    return rawget(s, k)
  end
  return Stream[k]
end

-- The call has ended (status known): keep its metadata, free the call.
local function finish(s, code, msg, cause)
  local box = s._box
  if box then
    local h, tr = box:info()
    s.headers, s.trailers = md_out(h), md_out(tr)
    box:cancel()
    s._box = nil
    s._closed = true
  end
  if code == 0 then
    s._end = true
    if s._t0 then emit(s._target, s._method, "OK", s._t0) end
    return nil
  end
  local err
  if cause == "timeout" then
    err = errors.new("timeout", errors.timed_out("grpc " .. s._method, s._timeout))
  else
    err = grpc_error(code, msg, cause, s._method, s._target)
  end
  s._end = err
  if s._t0 then emit(s._target, s._method, err.kind == "grpc" and err.status or nil, s._t0, err) end
  error(err, 0)
end

local function closed_error(s)
  return errors.new("grpc", "stream closed", { code = 1, status = "CANCELLED", cause = "closed",
    method = s._method, target = s._target,
    summary = format("grpc %s at %s: stream closed", s._method, s._target) })
end

--- Send one message (waits only while more than 1 MiB is queued). Returns
--- false when the call has already ended (the message is dropped).
---@param msg table
---@return boolean
function Stream:send(msg)
  if type(msg) ~= "table" then
    argerror(1, "send", "table expected, got " .. (msg == nil and "no value" or type(msg)))
  end
  local box = self._box
  if not box then
    if self._end then return false end
    error(closed_error(self), 0)
  end
  local body = registry.pool:encode(self._input, msg, true)
  local ok = box:send("send", body)
  return ok
end

--- Half-close: the server sees the end of the client's messages.
function Stream:close_send()
  local box = self._box
  if box then box:close_send() end
end

--- The next message, or nil once the server ended the call with OK.
--- Other statuses raise `grpc`; the wait has no default timeout.
---@param timeout? number|{timeout?: number}
---@return table|nil
function Stream:recv(timeout)
  if type(timeout) == "table" then timeout = timeout.timeout end
  if timeout ~= nil and type(timeout) ~= "number" then argerror(1, "recv", "number expected") end
  local box = self._box
  if not box then
    if self._end == true then return nil end
    if self._end then error(self._end, 0) end
    error(closed_error(self), 0)
  end
  local ok, a, b, c = box:recv("recv", timeout or -1, "grpc " .. self._method .. " recv")
  if ok then
    local okd, msg = pcall(registry.pool.decode, registry.pool, self._output, a)
    if okd then return msg end
    self:cancel()
    local err = grpc_error(13, tostring(msg), "protocol", self._method, self._target)
    self._end = err
    error(err, 0)
  end
  if a == -1 then error(closed_error(self), 0) end
  return finish(self, a, b, c)
end

--- Iterate over the messages: `for msg in s:messages() do ... end`.
---@param timeout? number bounds the wait for each message
function Stream:messages(timeout)
  return function() return self:recv(timeout) end
end

--- Reset the HTTP/2 stream (the server sees CANCELLED). Idempotent.
function Stream:cancel()
  local box = self._box
  if not box then return end
  self._box = nil
  self._closed = true
  local h, tr = box:info()
  self.headers, self.trailers = md_out(h), md_out(tr)
  box:cancel()
  if self._t0 then emit(self._target, self._method, nil, self._t0) end
end
Stream.close = Stream.cancel
M._Stream = Stream
Stream.__close = function(s) s:cancel() end
Stream.__tostring = function(s)
  return format("atom.grpc.stream (%s at %s%s)", s._method, s._target, s._box and "" or ", closed")
end

--- Open a call of any kind (server, client or bidirectional streaming, or unary).
---@param target string
---@param method string "package.Service/Method"
---@param opts? number|{timeout?: number, metadata?: table, tls?: boolean|table, max_message?: integer}
---@return atom.grpc.stream
function M.stream(target, method, opts)
  local t = target_of("stream", target)
  local m = method_of("stream", 2, method)
  local timeout, md, tls, flags, max = opts_of("stream", 3, opts, t, -1)
  local box = open("stream", t.base .. m.name, md, timeout, flags, tls, max)
  local s = setmetatable({ _box = box, _method = m.name, _target = t.name, _input = m.input,
                           _output = m.output, _timeout = timeout,
                           _t0 = events.active("grpc") and now() or nil }, Stream)
  return own(s) -- reset when the task that opened it ends
end

-- }====

-- {==== types ====

local function find_protoc()
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    local f = io.open(dir .. "/protoc", "r")
    if f then f:close(); return dir .. "/protoc" end
  end
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then raise("io", format("cannot read %s: %s", path, err)) end
  local s = f:read("a")
  f:close()
  return s
end

--- Load .proto files (compiled with protoc) or descriptor sets (.pb, .desc, .binpb).
---@param paths string|string[]
---@param opts? {include?: string[]}
function M.load(paths, opts)
  if type(paths) == "string" then paths = { paths } end
  if type(paths) ~= "table" or #paths == 0 then
    argerror(1, "load", "file name or list expected, got " .. type(paths))
  end
  if opts ~= nil and type(opts) ~= "table" then argerror(2, "load", "table expected, got " .. type(opts)) end
  local include = opts and opts.include or {}
  if type(include) ~= "table" then argerror(2, "load", "field 'include' must be a list of directories") end
  for k in pairs(opts or {}) do
    if k ~= "include" then argerror(2, "load", format("unknown option '%s'", tostring(k))) end
  end
  local protos = {}
  for i, p in ipairs(paths) do
    if type(p) ~= "string" then argerror(1, "load", format("file name expected at index %d", i)) end
    if p:find("%.proto$") then
      protos[#protos + 1] = p
    else
      local ok, err = pcall(registry.add_set, registry, read_file(p))
      if not ok then
        if errors.is(err) then error(err, 0) end
        raise("usage", format("cannot load %s: %s", p, err))
      end
    end
  end
  if #protos == 0 then return end
  local protoc = find_protoc()
  if not protoc then
    raise("spawn", "cannot load .proto files: protoc not found on PATH (install the Debian package protobuf-compiler)")
  end
  local out = os.tmpname()
  local argv = { protoc, "--include_imports", "--descriptor_set_out=" .. out }
  local seen = {}
  local function add_dir(d)
    if not seen[d] then seen[d] = true; argv[#argv + 1] = "--proto_path=" .. d end
  end
  for _, d in ipairs(include) do add_dir(d) end
  for _, p in ipairs(protos) do add_dir(p:match("^(.*)/[^/]*$") or ".") end
  for _, p in ipairs(protos) do argv[#argv + 1] = p end
  argv.check, argv.name = false, "protoc"
  local res = require("atom.proc").exec(argv)
  if res.code ~= 0 then
    os.remove(out)
    local first = res.stderr:match("[^\n]+") or ("protoc exited with " .. tostring(res.code))
    raise("usage", format("protoc failed on %s: %s", table.concat(protos, " "), first))
  end
  local set = read_file(out)
  os.remove(out)
  local ok, err = pcall(registry.add_set, registry, set)
  if not ok then raise("usage", format("cannot load %s: %s", table.concat(protos, " "), tostring(err))) end
end

--- Load every service a server lists through server reflection, with the
--- files they depend on (grpc.reflection.v1, then v1alpha).
---@param target string
---@param opts? number|{timeout?: number, metadata?: table, tls?: boolean|table}
---@return string[] the service names
function M.reflect(target, opts)
  local t = target_of("reflect", target)
  local timeout, md, tls, flags, max = opts_of("reflect", 2, opts, t, DEFAULT_TIMEOUT)
  local b = pb.boot()
  local REQ, RESP = b.idx.ServerReflectionRequest, b.idx.ServerReflectionResponse
  local last
  for _, ver in ipairs({ "v1", "v1alpha" }) do
    local path = "grpc.reflection." .. ver .. ".ServerReflection/ServerReflectionInfo"
    -- One request per stream, half-closed at once: some servers answer an
    -- unknown method only after the client's end of stream.
    local function ask1(req)
      local box <close> = open("reflect", t.base .. path, md, timeout, flags, tls, max)
      box:send("reflect", b.pool:encode(REQ, req, true))
      box:close_send()
      local ok, a, bb, c = box:recv("reflect", timeout, "grpc reflection")
      if ok then return b.pool:decode(RESP, a) end
      return nil, a, bb, c
    end
    -- A connection that closed before any reply (UNAVAILABLE, eof) never
    -- reached the server's handler: asked once more, as gRPC's transparent
    -- retry does (seen with libcurl 7.88's h2c under load).
    local function ask(req)
      local r, code, msg, cause = ask1(req)
      if not r and code == 14 and cause == "eof" then return ask1(req) end
      return r, code, msg, cause
    end
    local r, code, msg, cause = ask({ list_services = "" })
    if not r then
      last = { code = code, msg = msg, cause = cause }
      if code ~= 12 then break end -- UNIMPLEMENTED: try v1alpha
    else
      local files, have = {}, {}
      local services = {}
      for _, s in ipairs(r.list_services_response and r.list_services_response.service or {}) do
        if not s.name:find("^grpc%.reflection%.") then services[#services + 1] = s.name end
      end
      local function take(what, req)
        local resp, code2, msg2, cause2 = ask(req)
        if not resp then error(grpc_error(code2, msg2, cause2, path, t.name), 0) end
        if resp.error_response then
          raise("grpc", format("reflection at %s: %s: %s", t.name, what, resp.error_response.error_message),
            { code = resp.error_response.error_code, status = CODES[resp.error_response.error_code],
              method = path, target = t.name })
        end
        local fdr = resp.file_descriptor_response
        for _, fd in ipairs(pb.decode_files(fdr and fdr.file_descriptor_proto or {})) do
          if not have[fd.name] then have[fd.name] = true; files[#files + 1] = fd end
        end
      end
      for _, name in ipairs(services) do take(name, { file_containing_symbol = name }) end
      -- dependencies the server did not send along
      local i = 1
      while i <= #files do
        for _, dep in ipairs(files[i].dependency) do
          if not have[dep] then take(dep, { file_by_filename = dep }) end
        end
        i = i + 1
      end
      -- dependencies first
      local order, placed, byname = {}, {}, {}
      for _, fd in ipairs(files) do byname[fd.name] = fd end
      local function place(fd)
        if placed[fd.name] then return end
        placed[fd.name] = true
        for _, dep in ipairs(fd.dependency) do if byname[dep] then place(byname[dep]) end end
        order[#order + 1] = fd
      end
      for _, fd in ipairs(files) do place(fd) end
      local ok, err = pcall(registry.add_files, registry, order)
      if not ok then raise("grpc", format("reflection at %s: %s", t.name, tostring(err))) end
      return services
    end
  end
  error(grpc_error(last.code, last.msg, last.cause, "grpc.reflection.v1.ServerReflection/ServerReflectionInfo", t.name), 0)
end

-- }====

return M
