-- atom.own: streams a task opens are closed when that task ends (SPEC
-- Part II: "everything a task opens is closed when that task ends"). The one
-- piece of glue for WebSockets, JSON-RPC clients and HTTP streams; a generic
-- owned-resource list on tasks will replace it.
local _atom = require "_atom"

local M = {}

-- Closes what is still open, last opened first, as atom.defer would.
local function close_all(list)
  for i = #list, 1, -1 do
    local obj = list[i]
    list[i] = nil
    if obj and not obj._closed then obj:close() end
  end
end

--- Make `obj` (anything with :close() and a `_closed` flag) owned by the
--- current task: closed among the task's cleanups unless closed before.
--- Returns obj.
function M.own(obj)
  local x = _atom.extra(true)
  if not x then return obj end
  local list = x.owned
  if not list then
    list = {}
    x.owned = list
    local defers = x.defers or {}
    defers[#defers + 1] = { n = 2, close_all, list }
    x.defers = defers
  else
    -- closed objects leave the list, so a long task does not pile them up
    for i = #list, 1, -1 do
      if list[i]._closed then table.remove(list, i) end
    end
  end
  list[#list + 1] = obj
  return obj
end

return M
