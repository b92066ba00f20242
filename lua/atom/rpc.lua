-- atom.rpc: JSON-RPC 2.0 over HTTP POST (SPEC §5): atom.rpc and
-- atom.rpc_batch. Framing, ids and reply checks live here; the request runs
-- through _atom.http_perform (src/http.c) without building a response
-- object, since a call needs only the body. Emits `rpc` events (SPEC §8).
local _atom = require "_atom"
local errors = require "atom.errors"
local events = require "atom.events"
local http = require "atom.http"

local perform, rpc_call, rpc_result, now = _atom.http_perform, _atom.rpc_call, _atom.json_rpc_result, _atom.now
local encode, decode = _atom.json_encode, _atom.json_decode
local argerror, quote = errors.argerror, http._quote
local concat = table.concat

local HF_FOLLOW, HF_INSECURE, HF_JSON = 2, 4, 8
local DEFAULT_TIMEOUT = 30

local M = {}

-- Ids are atomlua's: one counter for the whole process, so concurrent calls
-- and batch members never share an id.
local last_id = 0

-- Encoded method names, so a hot loop does not re-encode "status".
local method_cache, method_cache_len = {}, 0
local function encode_method(m)
  local s = method_cache[m]
  if s then return s end
  s = encode(m)
  if method_cache_len >= 256 then method_cache, method_cache_len = {}, 0 end
  method_cache[m] = s
  method_cache_len = method_cache_len + 1
  return s
end

-- params as JSON text, or nil to leave them out: nil and an empty table
-- (JSON "{}") are left out; atom.json.array({}) gives "[]" and is sent.
local function encode_params(fname, argn, params)
  if params == nil then return nil end
  if type(params) ~= "table" then
    argerror(argn, fname, "params must be a table, got " .. type(params))
  end
  local s = encode(params)
  if s == "{}" then return nil end
  return s
end

local function request_json(id, method, params)
  if params then
    return '{"jsonrpc":"2.0","id":' .. id .. ',"method":' .. encode_method(method) .. ',"params":' .. params .. "}"
  end
  return '{"jsonrpc":"2.0","id":' .. id .. ',"method":' .. encode_method(method) .. "}"
end

local OPTS = { timeout = "number", headers = "table", follow = "boolean", proxy = "string",
               insecure = "boolean" }

-- timeout, headers, flags, proxy from the optional last argument.
local function parse_opts(fname, argn, opts)
  if opts == nil then return DEFAULT_TIMEOUT, nil, HF_JSON, nil end
  if type(opts) == "number" then
    if not (opts >= 0) then argerror(argn, fname, "timeout must be a non-negative number") end
    return opts == math.huge and -1 or opts, nil, HF_JSON, nil
  end
  if type(opts) ~= "table" then argerror(argn, fname, "number or table expected, got " .. type(opts)) end
  for k, v in pairs(opts) do
    local want = OPTS[k]
    if want == nil then argerror(argn, fname, ("unknown field '%s'"):format(tostring(k))) end
    if type(v) ~= want then argerror(argn, fname, ("field '%s' must be a %s, got %s"):format(k, want, type(v))) end
  end
  local timeout = opts.timeout or DEFAULT_TIMEOUT
  if not (timeout >= 0) then argerror(argn, fname, "timeout must be a non-negative number") end
  local flags = HF_JSON | (opts.follow and HF_FOLLOW or 0) | (opts.insecure and HF_INSECURE or 0)
  return timeout == math.huge and -1 or timeout, opts.headers, flags, opts.proxy
end

-- The last URL that passed the check (a hot loop calls one endpoint).
local checked_url
local function check_url(fname, url)
  if url == checked_url then return end
  if type(url) ~= "string" then
    argerror(1, fname, "string expected, got " .. (url == nil and "no value" or type(url)))
  end
  if not url:find("^%a[%w+.-]*://") then argerror(1, fname, "invalid URL " .. quote(url)) end
  checked_url = url
end

-- "rpc <method> at <url>", the operation named in timeout and transport
-- errors; cached per endpoint and method so a hot loop builds no string.
local descs, descs_len = {}, 0
local function desc_of(url, method)
  local per = descs[url]
  local d = per and per[method]
  if d then return d end
  if descs_len >= 256 then descs, descs_len, per = {}, 0, nil end
  if not per then
    per = {}
    descs[url] = per
  end
  d = "rpc " .. method .. " at " .. url
  per[method] = d
  descs_len = descs_len + 1
  return d
end

-- Raise kind rpc for a reply that is not JSON-RPC.
local function bad_reply(url, what, why, status, body)
  errors.raise("rpc", ("rpc %s at %s: %s (HTTP %d): %s"):format(what, url, why, status, quote(body)),
    { url = url, method = what, status = status })
end

-- Why a reply is not a JSON document: the decoder's reason when it stopped
-- ("reply is not JSON (decode: nesting deeper than 1000 at position 1001)").
local function not_json(ok, doc)
  if ok then return "reply is not JSON" end
  return ("reply is not JSON (%s)"):format(errors.is(doc) and doc.message or tostring(doc))
end

-- Raise kind rpc for an error object: message, code and data as received;
-- `summary` (what tostring shows) adds the URL, method and code.
local function raise_error(url, method, e)
  local code, message, data
  if type(e) == "table" then
    code, message, data = e.code, e.message, e.data
  else
    message = e
  end
  local summary = ("rpc %s at %s: error %s: %s"):format(method, url, tostring(code), tostring(message))
  errors.raise("rpc", message, { code = code, data = data, url = url, method = method, summary = summary })
end

-- The entry of a batch reply: {result = v} or {error = {code, message, data}}.
local function entry(r)
  local e = r.error
  if e ~= nil and e ~= _atom.json_null then
    if type(e) ~= "table" then e = { message = e } end
    return { error = { code = e.code, message = e.message, data = e.data } }
  end
  return { result = r.result }
end

-- The last request and reply bodies of call(), for the failure report's
-- "last RPC" (private _request/_response event fields; no copies made).
local last_request, last_reply

-- Whether a call emits an rpc event. Without --events, rpc events serve
-- only a failed test's "last RPC": outside tests nobody reads them, so none
-- is built.
local function traced()
  return events.active("rpc") and not (events.wanted and not _atom.owner_scope())
end

-- Run fn(...) emitting an rpc event.
local function with_event(url, method, fn, ...)
  local t0 = now()
  last_request, last_reply = nil, nil
  local res = table.pack(pcall(fn, ...))
  if not res[1] then
    local err = res[2]
    if not (errors.is(err, "cancelled") or errors.is(err, "usage")) then
      events.emit("rpc", { url = url, method = method, duration = now() - t0, error = err,
        _request = last_request, _response = last_reply })
    end
    error(err, 0)
  end
  events.emit("rpc", { url = url, method = method, duration = now() - t0,
    _request = last_request, _response = last_reply })
  return table.unpack(res, 2, res.n)
end

-- The result of a call's reply, or the error it stands for.
local function reply_result(url, method, status, rbody)
  local ok, doc = pcall(decode, rbody)
  if not ok or type(doc) ~= "table" then bad_reply(url, method, not_json(ok, doc), status, rbody) end
  -- Over HTTP the reply belongs to this request, so its id is not checked
  -- (servers answering a fixed id, or null after a parse error, still work).
  local e = doc.error
  if e ~= nil and e ~= _atom.json_null then raise_error(url, method, e) end
  local result = doc.result
  if result == nil then bad_reply(url, method, "reply is not JSON-RPC", status, rbody) end
  return result
end

-- One call: the request body is built in C (src/http.c) and a reply of the
-- usual shape gives its result without a table for the document
-- (src/json.c); any other reply goes through reply_result.
local function call(url, method, em, params, timeout, headers, flags, proxy)
  last_id = last_id + 1
  local per = descs[url]
  local status, rbody = rpc_call(url, em, params, timeout, headers, flags, proxy,
    per and per[method] or desc_of(url, method), last_id)
  local ok, result = rpc_result(rbody)
  if ok then return result end
  return reply_result(url, method, status, rbody)
end

-- The same call for with_event: the same request, built in Lua and kept
-- with the reply for the event.
local function call_traced(url, method, params, timeout, headers, flags, proxy)
  last_id = last_id + 1
  local body = request_json(last_id, method, params)
  last_request = body
  local status, rbody = perform("rpc", "POST", url, headers, body, timeout, flags, proxy, desc_of(url, method))
  last_reply = rbody
  return reply_result(url, method, status, rbody)
end

--- Call `method` at `url` (JSON-RPC 2.0 over HTTP POST) and return its result
--- (a JSON null result is atom.json.null). An error object raises kind `rpc`
--- with `code`, `message` (the server's) and `data`; a reply that is not
--- JSON-RPC raises `rpc` quoting it; transport failures raise `http`.
---@param url string
---@param method string
---@param params? table left out when nil or empty (atom.json.array({}) sends [])
---@param opts? number|{timeout?: number, headers?: table, follow?: boolean, proxy?: string, insecure?: boolean}
---@return any
function M.rpc(url, method, params, opts)
  -- The common case (the last URL, a known method, no params, no options)
  -- checked inline: this runs once per call.
  if url ~= checked_url then check_url("rpc", url) end
  local em = method_cache[method] -- only strings get there
  if em == nil then
    if type(method) ~= "string" then
      argerror(2, "rpc", "string expected, got " .. (method == nil and "no value" or type(method)))
    end
    em = encode_method(method)
  end
  local p = params ~= nil and encode_params("rpc", 3, params) or nil
  local timeout, headers, flags, proxy = DEFAULT_TIMEOUT, nil, HF_JSON, nil
  if opts ~= nil then timeout, headers, flags, proxy = parse_opts("rpc", 4, opts) end
  if traced() then
    return with_event(url, method, call_traced, url, method, p, timeout, headers, flags, proxy)
  end
  return call(url, method, em, p, timeout, headers, flags, proxy)
end

local function call_batch(url, n, methods, body, ids, timeout, headers, flags, proxy)
  local status, rbody = perform("rpc_batch", "POST", url, headers, body, timeout, flags, proxy,
    "rpc batch of " .. n .. " at " .. url)
  local ok, doc = pcall(decode, rbody)
  if not ok or type(doc) ~= "table" then bad_reply(url, "batch", not_json(ok, doc), status, rbody) end
  if doc[1] == nil then -- one error object for the whole batch (e.g. parse error)
    local e = doc.error
    if e ~= nil and e ~= _atom.json_null then raise_error(url, "batch", e) end
    bad_reply(url, "batch", "reply is not a JSON-RPC batch", status, rbody)
  end
  local out = {}
  for _, r in ipairs(doc) do
    local i = type(r) == "table" and ids[r.id]
    if not i or (r.result == nil and r.error == nil) then
      bad_reply(url, "batch", "reply holds an entry that answers no call", status, rbody)
    end
    out[i] = entry(r)
  end
  for i = 1, n do
    if out[i] == nil then
      bad_reply(url, "batch", ("reply lacks the answer to call %d (%s)"):format(i, methods[i]), status, rbody)
    end
  end
  return out
end

--- Send one JSON-RPC batch and return its answers in request order, whatever
--- order the server used: each entry is {result = v} or
--- {error = {code =, message =, data =}}.
---@param url string
---@param calls {[1]: string, [2]: table?}[] {method, params} pairs (or {method =, params =})
---@param opts? number|{timeout?: number, headers?: table, follow?: boolean, proxy?: string, insecure?: boolean}
---@return table[]
function M.rpc_batch(url, calls, opts)
  check_url("rpc_batch", url)
  if type(calls) ~= "table" then
    argerror(2, "rpc_batch", "table expected, got " .. (calls == nil and "no value" or type(calls)))
  end
  local n = #calls
  if n == 0 then argerror(2, "rpc_batch", "the batch is empty") end
  local parts, ids, methods = {}, {}, {}
  for i = 1, n do
    local c = calls[i]
    if type(c) ~= "table" then argerror(2, "rpc_batch", ("call %d must be a table, got %s"):format(i, type(c))) end
    local method, params = c[1] or c.method, c[2]
    if params == nil then params = c.params end
    if type(method) ~= "string" then argerror(2, "rpc_batch", ("call %d has no method name"):format(i)) end
    last_id = last_id + 1
    ids[last_id] = i
    methods[i] = method
    parts[i] = request_json(last_id, method, encode_params("rpc_batch", 2, params))
  end
  local timeout, headers, flags, proxy = parse_opts("rpc_batch", 3, opts)
  local body = "[" .. concat(parts, ",") .. "]"
  if traced() then
    return with_event(url, "batch", call_batch, url, n, methods, body, ids, timeout, headers, flags, proxy)
  end
  return call_batch(url, n, methods, body, ids, timeout, headers, flags, proxy)
end

return M
