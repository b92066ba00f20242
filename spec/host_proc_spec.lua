-- spec/proc_spec.lua again, with every process started through a host's
-- agent (`atom.host{via = {"sh", "-c"}}`): expect, output bounds, stop,
-- kill, pause, resume, critical exits, ownership, exec and spawn errors
-- must behave the same over the link as for local children.
local chunk = assert(loadfile("spec/proc_spec.lua", "t", setmetatable({ ATOMLUA_PROC_ON_HOST = true },
  { __index = _ENV, __newindex = _ENV })))
chunk()
