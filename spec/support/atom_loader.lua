-- Loads the built atom.so (ATOMLUA_CPATH, default ./build/?.so) once per
-- busted run, and offers helpers shared by module-mode specs.
local assert = require "luassert"
local M = {}
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
M.atom = require "atom"

--- Assert the runtime holds nothing: no task, handle, ref or child.
function M.assert_clean()
  local s = M.atom._stats()
  assert.are.same({ tasks = 0, handles = 0, refs = 0, children = 0 },
    { tasks = s.tasks, handles = s.handles, refs = s.refs, children = s.children })
end

--- Run fn as a root task and check nothing is left afterwards.
function M.run(fn, ...)
  local res = table.pack(M.atom.run(fn, ...))
  M.assert_clean()
  return table.unpack(res, 1, res.n)
end

return M
