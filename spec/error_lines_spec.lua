-- tostring(err) is one line for every error kind (file:line: first line of
-- the message, and how many more it has); the details stay in .message
-- (and exec's stderr in .stderr) for the reports' failure blocks.
local support = require "support.atom_loader"
local atom = support.atom

local function one_line(e)
  local s = tostring(e)
  assert.is_nil(s:find("\n", 1, true), s)
  return s
end

describe("tostring of errors", function()
  it("exec failures: one line, stderr in .stderr, quoted in .message", function()
    support.run(function()
      local ok, e = pcall(atom.sh, "echo first-err >&2; echo second-err >&2; exit 3")
      assert.is_false(ok)
      local s = one_line(e)
      assert.matches("^spec/error_lines_spec.lua:%d+: sh .* exited with code 3 %[%+%d+ lines in %.message%]$", s)
      assert.equal("first-err\nsecond-err\n", e.stderr)
      assert.truthy(e.message:find("second-err", 1, true))
    end)
  end)

  it("expect timeouts and critical exits quote the tail in .message only", function()
    support.run(function()
      local p = atom.spawn { "sh", "-c", "echo booting; echo still-booting; exec sleep 30" }
      local ok, e = pcall(p.expect, p, "never", 0.2)
      assert.is_false(ok)
      assert.equal("timeout", e.kind)
      one_line(e)
      assert.truthy(e.message:find("still-booting", 1, true))
      p:stop()
    end)
  end)

  it("deadlocks list the waiting tasks in .message only", function()
    local ok, e = pcall(support.run, function()
      local ev = atom.event()
      ev:wait()
    end)
    assert.is_false(ok)
    assert.equal("deadlock", e.kind)
    local s = one_line(e)
    assert.matches("%[%+%d+ lines? in %.message%]$", s)
    assert.truthy(e.message:find("waiting in ev:wait()", 1, true))
  end)

  it("a single-line message is left as it is", function()
    local e = atom.error("io", "plain")
    assert.matches("^spec/error_lines_spec.lua:%d+: plain$", tostring(e))
  end)
end)
