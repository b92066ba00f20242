-- busted helper (see .busted): load atom.so before any spec runs, so that an
-- ASan-built module can drop the sanitizer LD_PRELOAD before specs start
-- processes (make check), and every spec sees the same build.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
require "atom"

-- Everything the specs leave in $TMPDIR (module mode's kept run directories,
-- the CLI specs' scenario files and workdirs: see support/cli.lua) goes to
-- one private directory, removed when busted exits: the suite leaves nothing
-- behind in /tmp or in the tree.
do
  local uv = require "luv"
  local base = (os.getenv("TMPDIR") or "/tmp"):gsub("/+$", "")
  local dir = assert(uv.fs_mkdtemp(base .. "/atomlua-spec-XXXXXX"))
  uv.fs_chmod(dir, tonumber("755", 8)) -- specs run scenarios as other users too
  uv.os_setenv("TMPDIR", dir)
  local ok, busted = pcall(require, "busted")
  if ok and type(busted) == "table" and busted.subscribe then
    busted.subscribe({ "exit" }, function()
      os.execute("rm -rf '" .. dir .. "'")
      return nil, true
    end)
  end
end
