-- atom.http: HTTP requests (SPEC §5) as task waits. This file checks
-- arguments, applies the request fields' defaults, wraps responses and emits
-- `http` events; src/http.c runs the request on the curl multi handle and
-- src/curlm.c drives that from the loop. JSON-RPC is in lua/atom/rpc.lua.
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local json = require "atom.json"

local perform, now = _atom.http_perform, _atom.now
local encode, decode = _atom.json_encode, _atom.json_decode
local argerror = errors.argerror

-- Flags of _atom.http_perform (src/http.c).
local HF_HEADERS, HF_FOLLOW, HF_INSECURE, HF_JSON = 1, 2, 4, 8

local DEFAULT_TIMEOUT = 30

local M = {}

--- The start of a body for error messages: at most 200 bytes, control
--- characters escaped, on one line.
---@param s string
---@return string
function M._quote(s)
  local cut = #s > 200
  if cut then s = s:sub(1, 200) end
  s = s:gsub('[%c"\\]', function(c)
    if c == "\n" then return "\\n" elseif c == "\r" then return "\\r" elseif c == "\t" then return "\\t"
    elseif c == '"' or c == "\\" then return "\\" .. c end
    return ("\\x%02x"):format(c:byte())
  end)
  return '"' .. s .. (cut and '..."' or '"')
end
local quote = M._quote

---@class atom.http.response
---@field status integer the HTTP status (any status is a normal response)
---@field headers table<string, string> lower-case names; repeated headers joined with ", "
---@field body string
---@field duration number seconds from start to the end of the body
local Response = {}
Response.__index = Response
Response.__name = "atom.http.response"

--- Decode the body as JSON. Raises kind `json` quoting the start of the body.
---@return any
function Response:json()
  local ok, v = pcall(decode, self.body)
  if ok then return v end
  local msg = errors.is(v) and v.message or tostring(v)
  errors.raise("json", ("%s in HTTP %d response body %s"):format(msg, self.status, quote(self.body)),
    { position = errors.is(v) and v.position or nil, status = self.status })
end
M._Response = Response

local function check_timeout(fname, argn, v)
  if v == nil then return DEFAULT_TIMEOUT end
  if type(v) ~= "number" then argerror(argn, fname, "field 'timeout' must be a number") end
  if not (v >= 0) then argerror(argn, fname, "timeout must be a non-negative number") end
  return v == math.huge and -1 or v
end

local FIELDS = { method = "string", url = "string", headers = "table", body = "string",
                 json = "any", timeout = "number", follow = "boolean", proxy = "string",
                 insecure = "boolean", max_body = "number" }

--- Check a request table (field types, unknown fields) for `fname`.
local function check_fields(fname, argn, spec)
  for k, v in pairs(spec) do
    local want = FIELDS[k]
    if want == nil then
      argerror(argn, fname, ("unknown field '%s'"):format(tostring(k)))
    elseif want ~= "any" and type(v) ~= want then
      argerror(argn, fname, ("field '%s' must be a %s, got %s"):format(k, want, type(v)))
    end
  end
  if spec.body ~= nil and spec.json ~= nil then
    argerror(argn, fname, "give either 'body' or 'json', not both")
  end
  local mb = spec.max_body
  if mb ~= nil and (math.type(mb) ~= "integer" or mb < 0) then
    argerror(argn, fname, "field 'max_body' must be a non-negative integer")
  end
end

local function check_url(fname, url)
  if type(url) ~= "string" then
    argerror(1, fname, "url expected, got " .. (url == nil and "no value" or type(url)))
  end
  if not url:find("^%a[%w+.-]*://") then argerror(1, fname, ("invalid URL %s"):format(quote(url))) end
end

-- Run one checked request; spec fields are those of FIELDS.
local function run(fname, argn, spec, method, url)
  local body, flags = spec.body, HF_HEADERS
  if spec.json ~= nil then
    body = encode(spec.json)
    flags = flags | HF_JSON
  end
  if spec.follow then flags = flags | HF_FOLLOW end
  if spec.insecure then flags = flags | HF_INSECURE end
  local timeout = check_timeout(fname, argn, spec.timeout)
  local desc = method .. " " .. url
  if not events.active("http") then
    local status, rbody, headers, duration =
      perform(fname, method, url, spec.headers, body, timeout, flags, spec.proxy, desc, spec.max_body)
    return setmetatable({ status = status, headers = headers, body = rbody, duration = duration }, Response)
  end
  local t0 = now()
  local ok, status, rbody, headers, duration =
    pcall(perform, fname, method, url, spec.headers, body, timeout, flags, spec.proxy, desc, spec.max_body)
  if not ok then
    local err = status
    if not (errors.is(err, "cancelled") or errors.is(err, "usage")) then
      events.emit("http", { method = method, url = url, duration = now() - t0, error = err })
    end
    error(err, 0)
  end
  events.emit("http", { method = method, url = url, status = status, duration = duration })
  return setmetatable({ status = status, headers = headers, body = rbody, duration = duration }, Response)
end

--- Perform an HTTP request. Any status is a normal response; transport
--- failures raise kind `http` with `cause` (refused, reset, dns, tls, eof,
--- protocol, resources, too_large), and running out of time raises `timeout`.
--- A response body over `max_body` bytes (default 256 MiB) aborts the
--- transfer and raises `http` cause `too_large`.
---@param spec {method?: string, url: string, headers?: table<string, string|number>, body?: string, json?: any, timeout?: number, follow?: boolean, proxy?: string, insecure?: boolean, max_body?: integer}
---@return atom.http.response
function M.request(spec)
  if type(spec) ~= "table" then
    argerror(1, "request", "table expected, got " .. (spec == nil and "no value" or type(spec)))
  end
  check_fields("request", 1, spec)
  check_url("request", spec.url)
  return run("request", 1, spec, spec.method or "GET", spec.url)
end

-- opts of the shorthands: a number (timeout) or request fields.
local function opts_of(fname, argn, opts)
  if opts == nil then return {} end
  if type(opts) == "number" then return { timeout = opts } end
  if type(opts) ~= "table" then
    argerror(argn, fname, "number or table expected, got " .. type(opts))
  end
  check_fields(fname, argn, opts)
  return opts
end

--- GET `url`.
---@param url string
---@param opts? number|table timeout, or request fields
---@return atom.http.response
function M.get(url, opts)
  check_url("get", url)
  opts = opts_of("get", 2, opts)
  return run("get", 2, opts, opts.method or "GET", url)
end

--- POST `body` (a string, sent as is) or a table (sent as JSON) to `url`.
---@param url string
---@param body string|table
---@param opts? number|table timeout, or request fields
---@return atom.http.response
function M.post(url, body, opts)
  check_url("post", url)
  local tb = type(body)
  if tb ~= "string" and tb ~= "table" then
    argerror(2, "post", "string or table expected, got " .. (body == nil and "no value" or tb))
  end
  opts = opts_of("post", 3, opts)
  if opts.body ~= nil or opts.json ~= nil then argerror(3, "post", "the body is the second argument") end
  local spec = setmetatable(tb == "string" and { body = body } or { json = body }, { __index = opts })
  return run("post", 3, spec, opts.method or "POST", url)
end

--- Stream a response (SPEC §10): see lua/atom/hstream.lua.
function M.stream(spec)
  return require("atom.hstream").stream(spec)
end

return M
