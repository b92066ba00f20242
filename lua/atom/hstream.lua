-- atom.http.stream (SPEC §10): an HTTP response read as it arrives. The
-- transfer and its bounded buffer are src/hstream.c's (on the curl multi
-- handle); this file checks the request, wraps the response and parses
-- lines and Server-Sent Events. The task that opened a stream owns it.
local _atom = require "_atom"
local errors = require "atom.errors"
local own = require "atom.own"

local open, encode = _atom.http_stream, _atom.json_encode
local argerror = errors.argerror
local find, sub = string.find, string.sub

local HF_HEADERS, HF_FOLLOW, HF_INSECURE, HF_JSON = 1, 2, 4, 8

local M = {}

---@class atom.http.stream
---@field status integer
---@field headers table<string, string>
local Resp = {}
Resp.__index = Resp
Resp.__name = "atom.http.stream"

local topt = errors.opt_timeout

local function read(self, t)
  if self._closed then
    errors.raise("io", ("resp:read() on a closed stream (%s)"):format(self.url), { cause = "closed" })
  end
  return self._h:read(t)
end

--- The next chunk of body bytes, or nil at the end of the body.
---@param opts? number|{timeout?: number}
---@return string|nil
function Resp:read(opts)
  return read(self, topt("read", 1, opts))
end

-- The next line (without "\n" and a preceding "\r"), or nil at the end; a
-- last line without "\n" is delivered too.
local function next_line(self, t)
  local buf, pos = self._lbuf or "", self._lpos or 1
  while true do
    local nl = find(buf, "\n", pos, true)
    if nl then
      local e = nl - 1
      if e >= pos and sub(buf, e, e) == "\r" then e = e - 1 end
      self._lbuf, self._lpos = buf, nl + 1
      return sub(buf, pos, e)
    end
    local chunk = read(self, t)
    if chunk == nil then
      self._lbuf, self._lpos = "", 1
      if pos > #buf then return nil end
      local last = sub(buf, pos)
      if sub(last, -1) == "\r" then last = sub(last, 1, -2) end
      return last
    end
    buf, pos = sub(buf, pos) .. chunk, 1
  end
end

--- Iterate the body's lines. `timeout` bounds the wait for each line.
---@param opts? number|{timeout?: number}
function Resp:lines(opts)
  local t = topt("lines", 1, opts)
  return function() return next_line(self, t) end
end

--- Iterate Server-Sent Events as {event =, data =, id =} (WHATWG rules:
--- event "message" unless named; data lines joined with "\n"; id persists
--- until the server sends another). `timeout` bounds the wait for each event.
---@param opts? number|{timeout?: number}
function Resp:sse(opts)
  local t = topt("sse", 1, opts)
  local first = true
  return function()
    local data, event
    while true do
      local line = next_line(self, t)
      if line == nil then return nil end -- an unfinished event is dropped
      if first then
        first = false
        if sub(line, 1, 3) == "\239\187\191" then line = sub(line, 4) end
      end
      if line == "" then
        if data then
          local ev = { event = event or "message", data = data, id = self._last_id }
          return ev
        end
        event = nil
      elseif sub(line, 1, 1) ~= ":" then
        local c = find(line, ":", 1, true)
        local field, value = line, ""
        if c then
          field, value = sub(line, 1, c - 1), sub(line, c + 1)
          if sub(value, 1, 1) == " " then value = sub(value, 2) end
        end
        if field == "data" then
          data = data and (data .. "\n" .. value) or value
        elseif field == "event" then
          event = value
        elseif field == "id" then
          if not find(value, "\0", 1, true) then self._last_id = value end
        end
      end
    end
  end
end

--- Abort the transfer (the server sees the connection close). Idempotent.
function Resp:close()
  if self._closed then return end
  self._closed = true
  self._h:close()
end

Resp.__close = Resp.close

local FIELDS = { method = "string", url = "string", headers = "table", body = "string",
                 json = "any", timeout = "number", follow = "boolean", proxy = "string",
                 insecure = "boolean" }

--- Start a request and return as soon as the response headers are in.
--- `timeout` (default 30) bounds the wait for the headers only.
---@param spec {method?: string, url: string, headers?: table, body?: string, json?: any, timeout?: number, follow?: boolean, proxy?: string, insecure?: boolean}
---@return atom.http.stream
function M.stream(spec)
  if type(spec) ~= "table" then
    argerror(1, "stream", "table expected, got " .. (spec == nil and "no value" or type(spec)))
  end
  for k, v in pairs(spec) do
    local want = FIELDS[k]
    if want == nil then argerror(1, "stream", ("unknown field '%s'"):format(tostring(k))) end
    if want ~= "any" and type(v) ~= want then
      argerror(1, "stream", ("field '%s' must be a %s, got %s"):format(k, want, type(v)))
    end
  end
  local url = spec.url
  if type(url) ~= "string" or not url:find("^%a[%w+.-]*://") then
    argerror(1, "stream", "field 'url' must be a URL")
  end
  if spec.body ~= nil and spec.json ~= nil then argerror(1, "stream", "give either 'body' or 'json', not both") end
  local body, flags = spec.body, HF_HEADERS
  if spec.json ~= nil then
    body = encode(spec.json)
    flags = flags | HF_JSON
  end
  if spec.follow then flags = flags | HF_FOLLOW end
  if spec.insecure then flags = flags | HF_INSECURE end
  local timeout = spec.timeout or 30
  if not (timeout >= 0) then argerror(1, "stream", "timeout must be a non-negative number") end
  local method = spec.method or (body and "POST" or "GET")
  local h, status, headers = open("stream", method, url, spec.headers, body,
    timeout == math.huge and -1 or timeout, flags, spec.proxy, method .. " " .. url)
  local resp = setmetatable({ status = status, headers = headers, url = url, _h = h, _closed = false }, Resp)
  return own.own(resp)
end

M._Resp = Resp

return M
