-- make demo: the seed case of SPEC §3 (until a real cluster example replaces it).
-- Seven tasks gathered; node 5 fails at t≈5 s, everything else is cancelled
-- at once, and the script goes on. Run it: atomlua run scenarios/demo.lua
local function run_test() atom.sleep(10); error("test error") end
local function run_node(i)
  atom.sleep(i)
  if i == 5 then error("node error: id " .. i) end
  atom.sleep(i)
end
local fns = { run_test }
for i = 1, 6 do fns[#fns + 1] = function() run_node(i) end end
local t0 = atom.now()
local ok, err = pcall(atom.gather, fns)
print(err)            -- ...node error: id 5   (printed at t≈5.0 s, not 10 or 12)
print(("after %.2fs"):format(atom.now() - t0))
print("all good")

atom.test("the first error cancelled every sibling", function()
  atom.assert_eq(ok, false)
  assert(tostring(err):find("node error: id 5", 1, true))
  assert(atom.now() - t0 < 6, "gather should return at about 5 s")
end)
