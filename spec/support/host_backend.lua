-- The process API through a host: a stand-in for `atom` whose spawn, exec
-- and sh run on a `via = {"sh", "-c"}` host (an agent on this machine),
-- opened at the start of every atom.run. spec/host_proc_spec.lua runs
-- spec/proc_spec.lua's tests through it: one process API, two back ends.
local M = {}

function M.wrap(atom)
  local current
  local proxy = setmetatable({}, { __index = atom })
  function proxy.run(fn, ...)
    return atom.run(function(...)
      current = atom.host { via = { "sh", "-c" }, name = "local-agent" }
      return fn(...)
    end, ...)
  end
  function proxy.spawn(spec) return current:spawn(spec) end
  function proxy.exec(spec) return current:exec(spec) end
  function proxy.sh(cmd, opts) return current:sh(cmd, opts) end
  proxy.on_host = true
  return proxy
end

return M
