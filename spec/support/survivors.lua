-- The no-orphan checks of the end-to-end specs: processes started from
-- spec/fixtures/proc/family.sh run `sleep 100N.<tag>`, found through /proc
-- (not pgrep: it hangs under the sanitizers' LD_PRELOAD).
local M = {}

--- pids of live (not zombie) processes of this tag, space-separated.
function M.survivors(tag)
  local p = io.popen("ls /proc") -- outside a task: Lua's own popen
  local list = p:read("a")
  p:close()
  local found = {}
  for pid in list:gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/cmdline")
    local cmd = f and f:read("a") or ""
    if f then f:close() end
    local st = io.open("/proc/" .. pid .. "/stat")
    local zombie = st and st:read("a"):match("^%d+ %b() Z")
    if st then st:close() end
    if cmd:find("^sleep%z100%d%." .. tag) and not zombie then found[#found + 1] = pid end
  end
  return table.concat(found, " ")
end

--- Fail (killing them) if any survive 3 s: the reaper may need a moment
--- after atomlua is gone.
function M.assert_none(tag)
  local left
  for _ = 1, 60 do
    left = M.survivors(tag)
    if left == "" then return end
    os.execute("sleep 0.05")
  end
  os.execute("kill -9 " .. left .. " 2>/dev/null")
  error("processes outlived atomlua: " .. left)
end

return M
