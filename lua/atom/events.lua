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

-- Event types someone needs; nil means all (--events writes every type).
-- Without --events the CLI's reporters need only the runner's events, and
-- http/rpc events, one per request, are then not even built.
M.wanted = nil
do
  local ok, _atom = pcall(require, "_atom")
  if ok and _atom.forward and _atom.events_all == false then
    M.wanted = { run_start = true, run_end = true, scenario_start = true, scenario_end = true,
      test_start = true, test_end = true, process_spawn = true, process_exit = true, _tick = true }
  end
end

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
