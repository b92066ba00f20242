-- atom.rpc.connect (SPEC §10): JSON-RPC 2.0 over one WebSocket, with
-- concurrent calls matched by id and CometBFT-style subscriptions (method
-- `subscribe` with {query}; events carry the subscribe call's id, or
-- "<id>#event", and result = {query, data, events}; `unsubscribe` with the
-- same query). One reader task per client (a child of the connecting task)
-- receives every message and routes it; a subscription's queue holds 1,000
-- events, and while it is full the reader waits, so the WebSocket stops
-- being read (back-pressure, nothing dropped).
local _atom = require "_atom"
local errors = require "atom.errors"
local own = require "atom.own"
local sched = require "atom.sched"
local sync = require "atom.sync"
local ws = require "atom.ws"

local encode, decode, null = _atom.json_encode, _atom.json_decode, _atom.json_null
local argerror = errors.argerror

local M = {}

local SUB_QUEUE = 1000
local DEFAULT_TIMEOUT = 30

local last_id = 0

---@class atom.rpc.client
local Client = {}
Client.__index = Client
Client.__name = "atom.rpc.client"

---@class atom.rpc.subscription
local Sub = {}
Sub.__index = Sub
Sub.__name = "atom.rpc.subscription"

-- Raise a copy of an error built in the reader task, positioned at the
-- script's call.
local function reraise(e)
  if not errors.is(e) then error(e, 0) end
  errors.raise(e.kind, e.message, { cause = e.cause, code = e.code, data = e.data, url = e.url,
    method = e.method, summary = e.summary })
end

local function rpc_error(c, method, e)
  local code, message, data
  if type(e) == "table" then code, message, data = e.code, e.message, e.data else message = e end
  local summary = ("rpc %s at %s: error %s: %s"):format(method, c.url, tostring(code), tostring(message))
  if type(data) == "string" and data ~= "" then summary = summary .. " (" .. data .. ")" end
  return errors.new("rpc", message, { code = code, data = data, url = c.url, method = method, summary = summary })
end

-- Route one message from the server.
local function dispatch(c, text)
  local ok, msg = pcall(decode, text)
  if not ok or type(msg) ~= "table" then return end
  local id = msg.id
  local err = msg.error
  if err == null then err = nil end
  local result = msg.result
  local p = c.pending[id]
  -- a subscribe's reply, unless it is already one of its events
  if p and (err ~= nil or not p.sub or type(result) ~= "table" or result.query == nil) then
    c.pending[id] = nil
    p.reply = msg
    p.ev:set()
    return
  end
  local sub = c.subs[id]
  if not sub and type(id) == "string" then sub = c.subs[tonumber(id:match("^(%d+)#event$"))] end
  if not sub then return end
  if err ~= nil then -- the server ended the subscription (e.g. the client lagged)
    sub._err = rpc_error(c, "subscribe", err)
    c.subs[sub.id] = nil
    sub._ch:close()
    return
  end
  if result ~= nil then
    local ok2, e2 = pcall(sub._ch.send, sub._ch, result)
    if not ok2 and not sub._closed then error(e2, 0) end
  end
end

local function reader(c)
  sched.name(c._task_name)
  local ok, err = pcall(function()
    for text in c.ws:messages() do dispatch(c, text) end
  end)
  local e
  if ok then
    e = errors.new("io", ("rpc connection to %s closed by the server"):format(c.url), { cause = "eof", url = c.url })
  elseif errors.is(err, "io") then
    e = err
  else
    e = errors.new("io", ("rpc connection to %s closed"):format(c.url), { cause = "closed", url = c.url })
  end
  c.dead = e
  for id, p in pairs(c.pending) do
    c.pending[id] = nil
    p.ev:set()
  end
  for id, s in pairs(c.subs) do
    c.subs[id] = nil
    s._err = s._err or e
    s._ch:close()
  end
  if not ok and errors.is(err, "cancelled") then error(err, 0) end
end

local function send(c, id, method, params, p)
  c.pending[id] = p
  local body = { jsonrpc = "2.0", id = id, method = method }
  if params ~= nil and next(params) ~= nil then body.params = params end
  local ok, err = pcall(c.ws.send, c.ws, encode(body))
  if not ok then
    c.pending[id] = nil
    error(err, 0)
  end
end

-- Wait for the reply to call `id`; raises timeout, the connection's error,
-- or the server's error object.
local function await(c, id, method, p, timeout)
  local ok, err = pcall(p.ev.wait, p.ev, timeout)
  if not ok then
    c.pending[id] = nil
    if errors.is(err, "timeout") then
      errors.raise("timeout", errors.timed_out(("rpc %s at %s"):format(method, c.url), timeout),
        { url = c.url, method = method })
    end
    error(err, 0)
  end
  local msg = p.reply
  if not msg then reraise(c.dead) end
  local e = msg.error
  if e ~= nil and e ~= null then error(rpc_error(c, method, e), 0) end
  return msg.result
end

local function check_timeout(fname, argn, t)
  if t == nil then return DEFAULT_TIMEOUT end
  if type(t) == "table" then t = t.timeout or DEFAULT_TIMEOUT end
  if type(t) ~= "number" or not (t >= 0) then argerror(argn, fname, "timeout must be a non-negative number") end
  return t
end

local function check_live(c, what)
  if c._closed then
    errors.raise("io", ("%s on a closed rpc client (%s)"):format(what, c.url), { cause = "closed" })
  end
  if c.dead then reraise(c.dead) end
end

--- Call `method` and return its result, as atom.rpc does; several calls
--- may be in flight at once (from different tasks).
---@param method string
---@param params? table
---@param timeout? number|{timeout?: number} default 30
function Client:call(method, params, timeout)
  if type(method) ~= "string" then
    argerror(1, "call", "string expected, got " .. (method == nil and "no value" or type(method)))
  end
  if params ~= nil and type(params) ~= "table" then argerror(2, "call", "params must be a table") end
  timeout = check_timeout("call", 3, timeout)
  check_live(self, "c:call()")
  last_id = last_id + 1
  local id, p = last_id, { ev = sync.event() }
  send(self, id, method, params, p)
  return await(self, id, method, p, timeout)
end

--- Subscribe to `query` (CometBFT: method "subscribe", params {query}).
--- Returns once the server acknowledged; raises `rpc` if it refused.
---@param query string
---@param timeout? number|{timeout?: number} default 30
---@return atom.rpc.subscription
function Client:subscribe(query, timeout)
  if type(query) ~= "string" then
    argerror(1, "subscribe", "string expected, got " .. (query == nil and "no value" or type(query)))
  end
  timeout = check_timeout("subscribe", 2, timeout)
  check_live(self, "c:subscribe()")
  last_id = last_id + 1
  local id = last_id
  local sub = setmetatable({ client = self, id = id, query = query, _ch = sync.channel(SUB_QUEUE),
    _closed = false }, Sub)
  self.subs[id] = sub
  local p = { ev = sync.event(), sub = true }
  local ok, err = pcall(function()
    send(self, id, "subscribe", { query = query }, p)
    return await(self, id, "subscribe", p, timeout)
  end)
  if not ok then
    self.subs[id] = nil
    error(err, 0)
  end
  return own.own(sub)
end

--- Close the connection: pending calls and subscriptions raise `io`.
function Client:close()
  if self._closed then return end
  self._closed = true
  if self._reader then self._reader:cancel() end
  self.ws:close()
end

function Client:_owner_close() self:close() end
Client.__close = Client.close

--- The next event's result table ({query, data, events}), or nil once the
--- subscription was closed. A server error on the subscription raises `rpc`.
---@param timeout? number|{timeout?: number} no default
function Sub:next(timeout)
  local t
  if timeout ~= nil then t = errors.opt_timeout("next", 1, timeout) end
  if t == -1 then t = nil end
  local ok, v = pcall(self._ch.recv, self._ch, t)
  if not ok then
    if errors.is(v, "timeout") then
      errors.raise("timeout", errors.timed_out(("sub:next() on %q at %s"):format(self.query, self.client.url), t))
    end
    error(v, 0)
  end
  if v == nil and self._err and not self._closed then reraise(self._err) end
  return v
end

--- Iterate events; `timeout` bounds the wait for each.
function Sub:events(timeout)
  return function() return self:next(timeout) end
end

--- Unsubscribe (sends `unsubscribe` with the query and waits for the
--- reply); sub:next then returns nil. Idempotent.
function Sub:close()
  if self._closed then return end
  self._closed = true
  local c = self.client
  local live = c.subs[self.id] == self
  c.subs[self.id] = nil
  self._ch:close()
  if live and not c._closed and not c.dead then c:call("unsubscribe", { query = self.query }, 5) end
end

function Sub:_owner_close() self:close() end
Sub.__close = Sub.close

--- Connect to a JSON-RPC WebSocket endpoint (CometBFT: ws://host:26657/websocket).
---@param url string
---@param opts? number|table the options of atom.ws.connect
---@return atom.rpc.client
function M.connect(url, opts)
  local conn = ws.connect(url, opts)
  local c = setmetatable({ url = url, ws = conn, pending = {}, subs = {}, _closed = false }, Client)
  c._task_name = "rpc reader " .. url
  c._reader = sched.go(reader, c)
  return own.own(c)
end

M._Client, M._Sub = Client, Sub

return M
