-- Remote spawn rate through an agent (docs/hosts.md): h:exec{"true"} in a
-- loop, each a full round trip (spawn, exit, output end), through a `sh -c`
-- agent and, when HOSTS_SSH gives ssh's argv (words joined by spaces),
-- through ssh; beside a plain `ssh host true` per process.
-- Run: sh bench/hosts.sh (starts a private sshd on 127.0.0.1).
local N = tonumber(os.getenv("N") or "300")

local function rate(label, n, fn)
  local t0 = atom.now()
  for _ = 1, n do fn() end
  local dt = atom.now() - t0
  print(("%-34s %6d runs %8.3fs %9.1f /s %8.2f ms each"):format(label, n, dt, n / dt, 1000 * dt / n))
  return n / dt
end

atom.test("remote spawn rate", function()
  local h = atom.host { via = { "sh", "-c" }, name = "local" }
  rate("sh -c agent: h:exec{true}", N, function() h:exec { "true" } end)
  local ssh = os.getenv("HOSTS_SSH")
  if ssh then
    local via = {}
    for w in ssh:gmatch("%S+") do via[#via + 1] = w end
    local hs = atom.host { via = via, name = "ssh" }
    local agent = rate("ssh agent: h:exec{true}", N, function() hs:exec { "true" } end)
    local argv = {}
    for i, w in ipairs(via) do argv[i] = w end
    argv[#argv + 1] = "true"
    local plain = rate("plain ssh host true", math.max(10, N // 20), function() atom.exec(argv) end)
    print(("agent / plain ssh: %.1fx"):format(agent / plain))
  end
end)
