-- atom.events: the runtime's internal event sink (SPEC §8 events).
-- Subsystems emit tables; reporters (console, JUnit, NDJSON) subscribe.
-- Emitting with no subscriber costs one table and a loop over nothing.
local M = {}
local sinks = {}
local t0 = nil

--- Seconds since the run began, as in every event's `t`.
M.clock = function() return 0 end

---@param fn fun(ev: table) called for every event, in emission order
function M.subscribe(fn) sinks[#sinks + 1] = fn end

function M.unsubscribe_all() sinks = {} end

-- Event types someone needs, as a set; nil means all. The CLI's file state
-- (lua/atom/scenario.lua) narrows it when no report wants every event.
M.wanted = nil

--- True when someone listens to `type` (skip building costly events otherwise).
---@param type string|nil
function M.active(type)
  if #sinks == 0 then return false end
  return M.wanted == nil or type == nil or M.wanted[type] == true
end

---@param type string SPEC §8 event type
---@param ev table|nil the event's fields (the table is used and extended)
function M.emit(type, ev)
  if #sinks == 0 or (M.wanted and not M.wanted[type]) then return end
  ev = ev or {}
  ev.type = type
  ev.t = M.clock()
  for i = 1, #sinks do sinks[i](ev) end
end

return M
