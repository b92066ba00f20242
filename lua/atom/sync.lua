-- atom.sync: channels, events and semaphores (SPEC §3), built on the
-- scheduler's park/unpark: a parked task is woken with values by unpark,
-- and a stale waiter (cancelled, timed out) simply refuses the wake-up.
local _atom = require "_atom"
local errors = require "atom.errors"

local M = {}
local park, park_token, unpark = _atom.park, _atom.park_token, _atom.unpark
local checkpoint = _atom.checkpoint

-- Waiting calls take a number (timeout) or an options table with `timeout`.
local function timeout_of(v, n, fname)
  if v == nil then return nil end
  if type(v) == "number" then return v end
  if type(v) == "table" then return v.timeout end
  errors.checktype(n, fname, v, "number|table")
end

-- A FIFO of waiters {task, token, ...}.
local function push(q, w) q.last = q.last + 1; q[q.last] = w end
local function pop(q)
  if q.first > q.last then return nil end
  local w = q[q.first]
  q[q.first] = nil
  q.first = q.first + 1
  return w
end
local function queue() return { first = 1, last = 0 } end

-- Wake the first waiter still waiting with the given values; true if one took them.
local function wake_one(q, ...)
  while true do
    local w = pop(q)
    if not w then return false end
    if unpark(w[1], w[2], ...) then return true, w end
  end
end

---------------------------------------------------------------- channel
local Channel = {}
Channel.__index = Channel
Channel.__name = "atom.channel"

function M.channel(capacity)
  capacity = capacity or 0
  if type(capacity) ~= "number" or capacity < 0 then
    errors.argerror(1, "channel", "non-negative number expected")
  end
  return setmetatable({ cap = capacity, buf = queue(), recvq = queue(), sendq = queue(), closed = false }, Channel)
end

function Channel:send(v, opts)
  if v == nil then errors.raise("usage", "bad argument #1 to 'send' (a channel cannot carry nil)") end
  local timeout = timeout_of(opts, 2, "send")
  checkpoint("ch:send")
  if self.closed then errors.raise("io", "send on a closed channel", { cause = "closed" }) end
  if wake_one(self.recvq, v) then return end
  local buf = self.buf
  if buf.last - buf.first + 1 < self.cap then push(buf, v); return end
  local t, tok = park_token()
  push(self.sendq, { t, tok, v })
  local ok = park("ch:send", "ch:send()", timeout)
  if ok == false then errors.raise("io", "send on a closed channel", { cause = "closed" }) end
end

function Channel:recv(opts)
  local timeout = timeout_of(opts, 1, "recv")
  checkpoint("ch:recv")
  local buf = self.buf
  if buf.first <= buf.last then
    local v = pop(buf)
    -- a blocked sender may now put its value in the buffer
    while true do
      local w = pop(self.sendq)
      if not w then break end
      if unpark(w[1], w[2], true) then push(buf, w[3]); break end
    end
    return v
  end
  while true do -- hand-over from a blocked sender (unbuffered channel)
    local w = pop(self.sendq)
    if not w then break end
    if unpark(w[1], w[2], true) then return w[3] end
  end
  if self.closed then return nil end
  local t, tok = park_token()
  push(self.recvq, { t, tok })
  return park("ch:recv", "ch:recv()", timeout)
end

function Channel:close()
  if self.closed then return end
  self.closed = true
  while wake_one(self.recvq, nil) do end
  while wake_one(self.sendq, false) do end
end

function Channel:iter()
  return function() return self:recv() end
end

---------------------------------------------------------------- event
local Event = {}
Event.__index = Event
Event.__name = "atom.event"

function M.event() return setmetatable({ set_ = false, q = queue() }, Event) end

function Event:set()
  if self.set_ then return end
  self.set_ = true
  while wake_one(self.q, true) do end
end

function Event:is_set() return self.set_ end

function Event:wait(opts)
  local timeout = timeout_of(opts, 1, "wait")
  checkpoint("ev:wait")
  if self.set_ then return end
  local t, tok = park_token()
  push(self.q, { t, tok })
  park("ev:wait", "ev:wait()", timeout)
end

---------------------------------------------------------------- semaphore
local Semaphore = {}
Semaphore.__index = Semaphore
Semaphore.__name = "atom.semaphore"

function M.semaphore(n)
  if type(n) ~= "number" or n < 0 or math.type(n) ~= "integer" then
    errors.argerror(1, "semaphore", "non-negative integer expected")
  end
  return setmetatable({ n = n, free = n, q = queue() }, Semaphore)
end

function Semaphore:acquire(opts)
  local timeout = timeout_of(opts, 1, "acquire")
  checkpoint("s:acquire")
  if self.free > 0 and self.q.first > self.q.last then
    self.free = self.free - 1
    return
  end
  local t, tok = park_token()
  push(self.q, { t, tok })
  park("s:acquire", "s:acquire()", timeout) -- the releaser handed its permit over
end

function Semaphore:release()
  if wake_one(self.q, true) then return end
  if self.free >= self.n then errors.raise("usage", "s:release() beyond the semaphore's " .. self.n .. " permits") end
  self.free = self.free + 1
end

function Semaphore:with(fn, ...)
  errors.checktype(1, "with", fn, "function")
  self:acquire()
  local res = table.pack(pcall(fn, ...))
  self:release()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

return M
