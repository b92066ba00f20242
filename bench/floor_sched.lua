-- floor_sched.lua: the floor of W1 and W2 — plain Lua 5.4 coroutines and a
-- timer heap, no atomlua. luv is used only for its monotonic clock and to
-- sleep until the earliest deadline (no libuv timers, no loop).
--   lua5.4 floor_sched.lua w1 N   -- N coroutines each sleeping 10 ms, gathered
--   lua5.4 floor_sched.lua w1 N cached -- the same, deadlines from the loop's
--                                    cached time (libuv's and Node's timers)
--   lua5.4 floor_sched.lua w2 N   -- N sleeping 60 s plus one failing after 50 ms;
--                                    time from the failure until all are closed
local uv = require "luv"
local hrtime, usleep = uv.hrtime, uv.sleep
local create, resume, yield, status, close =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.close
local ceil = math.ceil

local function now() return hrtime() / 1e9 end
-- The loop's cached time, as libuv's loop->time: updated after each wait.
local loop_now = now()

-- The sleep queue: a binary min-heap of distinct deadlines, each with a FIFO
-- list of coroutines (timers started in one loop turn share the cached time).
local heap, hn, lists = {}, 0, {}
local function push(t, co)
  local l = lists[t]
  if l then
    l[#l + 1] = co
    return
  end
  lists[t] = {co}
  hn = hn + 1
  local i = hn
  while i > 1 do
    local p = i // 2
    if heap[p] <= t then break end
    heap[i] = heap[p]
    i = p
  end
  heap[i] = t
end
local function pop()  -- the earliest deadline and its list
  local top, last = heap[1], heap[hn]
  heap[hn] = nil
  hn = hn - 1
  if hn > 0 then
    local i = 1
    while true do
      local c = i * 2
      if c > hn then break end
      if c < hn and heap[c + 1] < heap[c] then c = c + 1 end
      if heap[c] >= last then break end
      heap[i] = heap[c]
      i = c
    end
    heap[i] = last
  end
  local l = lists[top]
  lists[top] = nil
  return top, l
end

local function sleep(d) yield(d) end

-- A sleep's deadline. As atom.sleep (and trio.sleep): at least d after the
-- call, read from the clock, rounded up to whole milliseconds (libuv's timers
-- fire no finer), so a coroutine started late is due late. With "cached", as
-- libuv's uv_timer_start: from the loop's cached time, so every coroutine
-- started before the loop next waits shares the first one's deadline.
local cached = arg[3] == "cached"
local function deadline(d)
  if cached then return loop_now + d end
  return ceil((now() + d) * 1000) / 1000
end

-- Runs fns as coroutines until all ended; returns their results, or stops at
-- the first error and returns nil, the error (the caller closes the rest).
local function gather(fns)
  loop_now = now()
  local results, left, cos = {}, #fns, {}
  local function step(i, co, ...)
    local ok, v = resume(co, ...)
    if not ok then return v end
    if status(co) == "dead" then
      results[i] = v
      left = left - 1
    else
      push(deadline(v), co)
    end
  end
  local index = {}
  for i = 1, #fns do
    local co = create(fns[i])
    cos[i], index[co] = co, i
    local err = step(i, co)
    if err then return nil, err, cos end
  end
  while left > 0 do
    local t, l = pop()
    if t > loop_now then
      -- Millisecond granularity, as libuv's timers.
      local wait = t - now()
      if wait > 0 then usleep(ceil(wait * 1000)) end
      loop_now = now()
    end
    for j = 1, #l do
      local co = l[j]
      local err = step(index[co], co)
      if err then return nil, err, cos end
    end
  end
  return results
end

local mode, n = arg[1] or "w1", tonumber(arg[2]) or 10000
local fns = {}
if mode == "w1" then
  for i = 1, n do fns[i] = function() sleep(0.01) return i end end
  local t0 = now()
  local r = gather(fns)
  local dt = now() - t0
  assert(#r == n)
  print(string.format("RESULT overhead_ms=%.3f n=%d", dt * 1000 - 10, n))
else
  local t_fail
  for i = 1, n do fns[i] = function() sleep(60) end end
  fns[n + 1] = function()
    sleep(0.05)
    t_fail = now()
    error("boom")
  end
  local r, err, cos = gather(fns)
  assert(r == nil and err:find("boom"))
  -- Cancel: close every other coroutine (unwinding it) and drop the timers.
  for i = 1, #cos do
    if status(cos[i]) == "suspended" then assert(close(cos[i])) end
  end
  heap, hn, lists = {}, 0, {}
  local t1 = now()
  print(string.format("RESULT cancel_ms=%.3f n=%d", (t1 - t_fail) * 1000, n))
end
