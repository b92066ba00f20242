-- atom.ws: WebSocket clients (SPEC §10). This file parses the URL, runs the
-- HTTP/1.1 Upgrade handshake (RFC 6455 §4) over the bytes src/ws.c moves,
-- wraps the connection in the ws object, emits `ws` events and makes the
-- task that connected own the connection. Framing, masking, ping/pong,
-- queues and back-pressure are src/ws.c's (with wslay); TLS is src/tls.c's.
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local own = require "atom.own"

local now, b64 = _atom.now, _atom.base64_encode
local argerror = errors.argerror

local M = {}

local DEFAULT_TIMEOUT = 10
local MAX_MESSAGE = 16 * 1024 * 1024

--- The start of a body for error messages (as atom.http's).
local function quote(s)
  return require("atom.http")._quote(s)
end

---@class atom.ws
---@field url string
---@field protocol string|nil the subprotocol the server chose
---@field close_code integer|nil set once the peer's close frame arrived (1005: it had no code)
---@field close_reason string|nil
local WS = {}
WS.__index = WS
WS.__name = "atom.ws"

local topt = errors.opt_timeout -- the optional timeout of a method; -1 is none

local function closed_error(self, fname)
  errors.raise("io", ("ws:%s() on a closed connection to %s"):format(fname, self.url), { cause = "closed" })
end

--- Send one message: `kind` "text" (the default; must be UTF-8) or
--- "binary". Returns once the frame is handed to the kernel.
---@param data string
---@param kind? "text"|"binary"
---@param opts? number|{timeout?: number}
function WS:send(data, kind, opts)
  if self._closed then closed_error(self, "send") end
  if type(data) ~= "string" then
    if type(data) ~= "number" then
      argerror(1, "send", "string expected, got " .. (data == nil and "no value" or type(data)))
    end
    data = tostring(data)
  end
  local binary = false
  if kind == "binary" then
    binary = true
  elseif kind ~= nil and kind ~= "text" then
    argerror(2, "send", "\"text\" or \"binary\" expected, got " .. tostring(kind))
  elseif not utf8.len(data) then
    argerror(1, "send", "text message is not valid UTF-8 (send it as \"binary\")")
  end
  local ok, err = pcall(self._c.send, self._c, data, binary, topt("send", 3, opts))
  if not ok then self:_failed(err) end
end

--- The next message: data, kind ("text" or "binary"); nil once the peer
--- sent a close frame (close_code, close_reason are then set), and nil again
--- on every later call. A connection that ends without a close frame raises
--- `io` (cause "eof" or "reset"); a message over max_message raises `io`
--- (cause "too_large").
---@param opts? number|{timeout?: number}
---@return string|nil, string|nil
local function recv(self, t)
  if self._closed then closed_error(self, "recv") end
  local c = self._c
  local ok, data, kind = pcall(c.recv, c, t)
  if not ok then self:_failed(data) end
  if data == nil and self.close_code == nil then
    self.close_code, self.close_reason = c:info()
  end
  return data, kind
end

function WS:recv(opts)
  return recv(self, opts and topt("recv", 1, opts) or -1)
end

-- Errors from the connection: kept for the `ws` event, then raised.
function WS:_failed(err)
  if errors.is(err, "io") and err.cause ~= "closed" then self._error = self._error or err end
  error(err, 0)
end

--- Iterate messages: `for data, kind in ws:messages() do`. `timeout`
--- bounds the wait for each message.
---@param opts? number|{timeout?: number}
function WS:messages(opts)
  local t = topt("messages", 1, opts)
  return function() return recv(self, t) end
end

--- Send a close frame (code 1000 unless given) and wait up to 1 s for the
--- peer's, then close the connection. Idempotent; `<close>` does the same.
---@param code? integer
---@param reason? string
function WS:close(code, reason)
  if self._closed then return end
  if code ~= nil and (math.type(code) ~= "integer" or code < 1000 or code > 4999) then
    argerror(1, "close", "close code must be an integer in 1000..4999")
  end
  if reason ~= nil and (type(reason) ~= "string" or #reason > 123) then
    argerror(2, "close", "reason must be a string of at most 123 bytes")
  end
  self._closed = true
  local c = self._c
  local ok, err = pcall(c.close, c, code or 1000, reason)
  local cc, cr, sent, received, cause = c:info()
  if self.close_code == nil then self.close_code, self.close_reason = cc, cr end
  if events.active("ws") then
    local e = self._error
    if not e and cause then e = errors.new("io", "ws connection to " .. self.url .. " failed", { cause = cause }) end
    events.emit("ws", { url = self.url, duration = now() - self._t0, sent = sent, received = received,
      close_code = self.close_code, error = e })
  end
  if not ok then error(err, 0) end
end

-- When the owning task ends: close frame 1001 (going away).
function WS:_owner_close() return self:close(1001) end

WS.__close = function(self) self:close() end
WS.__gc = nil
WS.__tostring = function(self) return "atom.ws (" .. self.url .. (self._closed and ", closed)" or ")") end

--- "ws://host:port/path" -> secure, host, port, "host:port" for Host, path.
local function parse_url(url)
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and scheme:lower()
  if scheme ~= "ws" and scheme ~= "wss" then
    argerror(1, "connect", "ws:// or wss:// URL expected, got " .. quote(url))
  end
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  path = path:gsub("#.*$", "")
  if path == "" then path = "/" elseif path:sub(1, 1) == "?" then path = "/" .. path end
  authority = authority:gsub("^.*@", "")
  local host, port = authority:match("^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then argerror(1, "connect", "invalid URL " .. quote(url)) end
  local secure = scheme == "wss"
  port = tonumber(port ~= "" and port or nil) or (secure and 443 or 80)
  if port < 1 or port > 65535 then argerror(1, "connect", "invalid port in " .. quote(url)) end
  return secure, host, port, authority, path
end

local OPTS = { timeout = "number", headers = "table", protocols = "table", tls = "any",
               max_message = "number", insecure = "boolean" }

local function check_opts(opts)
  if opts == nil then return {} end
  if type(opts) == "number" then return { timeout = opts } end
  if type(opts) ~= "table" then argerror(2, "connect", "number or table expected, got " .. type(opts)) end
  for k, v in pairs(opts) do
    local want = OPTS[k]
    if want == nil then argerror(2, "connect", ("unknown field '%s'"):format(tostring(k))) end
    if want ~= "any" and type(v) ~= want then
      argerror(2, "connect", ("field '%s' must be a %s, got %s"):format(k, want, type(v)))
    end
  end
  local t = opts.tls
  if t ~= nil and type(t) ~= "boolean" and type(t) ~= "table" then
    argerror(2, "connect", "field 'tls' must be true or a table {ca =, cert =, key =, insecure =}")
  end
  if opts.timeout and not (opts.timeout >= 0) then argerror(2, "connect", "timeout must be a non-negative number") end
  if opts.max_message and not (opts.max_message >= 1) then argerror(2, "connect", "max_message must be positive") end
  return opts
end

-- Lower-case header table of a response head (repeated names joined ", ").
local function parse_head(head)
  local status_line = head:match("^([^\r\n]*)")
  local status = tonumber(status_line:match("^HTTP/%d%.%d (%d%d%d)"))
  local h = {}
  for name, value in head:gmatch("\r?\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    name = name:lower()
    value = value:gsub("[ \t]+$", "")
    h[name] = h[name] and (h[name] .. ", " .. value) or value
  end
  return status, h, status_line
end

local function handshake(url, opts, secure, host, port, authority, path, deadline)
  local function left()
    if deadline == nil then return -1 end
    local l = deadline - now()
    return l > 0 and l or 0
  end
  local peer = (host:find(":", 1, true) and "[" .. host .. "]" or host) .. ":" .. port
  local s = _atom.tcp_connect(host, port, left() >= 0 and left() or math.huge)
  local c = _atom.ws_wrap(s, peer)
  local ok, res = pcall(function()
    if secure or opts.tls then
      local t = type(opts.tls) == "table" and opts.tls or {}
      c:tls(host, t.ca, t.cert, t.key, (t.insecure or opts.insecure) and true or false, left())
    end
    local key = b64(_atom.ws_random(16))
    local lines = { "GET " .. path .. " HTTP/1.1", "Host: " .. authority, "Upgrade: websocket",
      "Connection: Upgrade", "Sec-WebSocket-Key: " .. key, "Sec-WebSocket-Version: 13" }
    if opts.protocols and #opts.protocols > 0 then
      lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. table.concat(opts.protocols, ", ")
    end
    for k, v in pairs(opts.headers or {}) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") or tostring(v):find("[\r\n]") then
        argerror(2, "connect", "headers must map names to strings")
      end
      lines[#lines + 1] = k .. ": " .. tostring(v)
    end
    c:raw_write(table.concat(lines, "\r\n") .. "\r\n\r\n", left())
    local head = c:raw_head(left())
    local status, headers, status_line = parse_head(head)
    if status ~= 101 then
      -- the start of the body, for the message: what Content-Length says, at most 1 KiB
      local want = math.min(tonumber(headers["content-length"]) or 1024, 1024)
      local body = {}
      local got = 0
      while got < want do
        local okr, chunk = pcall(c.raw_read, c, want - got, math.min(left() >= 0 and left() or 1, 1))
        if not okr or not chunk then break end
        body[#body + 1] = chunk
        got = got + #chunk
      end
      body = table.concat(body)
      errors.raise("http", ("ws connect %s: handshake refused: %s %s"):format(url,
        status_line ~= "" and status_line or "no status line", quote(body)),
        { status = status, body = body, headers = headers, url = url })
    end
    local accept = b64(_atom.ws_accept_digest(key))
    if (headers.upgrade or ""):lower() ~= "websocket" or headers["sec-websocket-accept"] ~= accept then
      errors.raise("http", ("ws connect %s: the server's 101 reply is not a WebSocket upgrade"):format(url),
        { status = status, headers = headers, url = url, cause = "protocol" })
    end
    c:start(math.floor(opts.max_message or MAX_MESSAGE))
    return headers["sec-websocket-protocol"]
  end)
  if not ok then
    c:abort()
    error(res, 0)
  end
  return c, res
end

--- Connect to a ws:// or wss:// URL and run the opening handshake.
---@param url string
---@param opts? number|{timeout?: number, headers?: table, protocols?: string[], tls?: boolean|table, max_message?: integer}
---@return atom.ws
function M.connect(url, opts)
  if type(url) ~= "string" then
    argerror(1, "connect", "string expected, got " .. (url == nil and "no value" or type(url)))
  end
  opts = check_opts(opts)
  local secure, host, port, authority, path = parse_url(url)
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  local t0 = now()
  local deadline = timeout ~= math.huge and t0 + timeout or nil
  local ok, c, protocol = pcall(handshake, url, opts, secure, host, port, authority, path, deadline)
  if not ok then
    local err = c
    if errors.is(err, "timeout") then
      err = errors.new("timeout", errors.timed_out("ws connect " .. url, timeout), { url = url })
    elseif errors.is(err, "io") and err.cause == "tls" then
      err.url = url
    end
    if events.active("ws") and not errors.is(err, "cancelled") and not errors.is(err, "usage") then
      events.emit("ws", { url = url, duration = now() - t0, sent = 0, received = 0, error = err })
    end
    error(err, 0)
  end
  local ws = setmetatable({ url = url, protocol = protocol, _c = c, _t0 = t0, _closed = false }, WS)
  return own.own(ws)
end

M._WS = WS

return M
