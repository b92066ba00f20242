-- busted helper (see .busted): load atom.so before any spec runs, so that an
-- ASan-built module can drop the sanitizer LD_PRELOAD before specs start
-- processes (make check), and every spec sees the same build.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
require "atom"
