-- atom.tcp: raw TCP streams, atom.wait_port and atom.free_port (SPEC §5).
-- The work is in C (src/net.c, src/ports.c); this file names and documents it.
-- init.lua sets atom.tcp to this table and also takes wait_port and free_port.
local _atom = require "_atom"

local M = {}

---@class atom.stream
---@field write fun(self: atom.stream, data: string, opts?: number|{timeout?: number}) returns once the kernel has taken the data; failures raise `io` with `cause`
---@field read fun(self: atom.stream, n: integer, opts?: number|{timeout?: number}): string|nil exactly n bytes; nil at a clean EOF before any byte; EOF after fewer raises `io` (cause "eof", err.partial)
---@field read_line fun(self: atom.stream, opts?: number|{timeout?: number, max_line?: integer}): string|nil the next line without "\n" (and "\r"); nil at EOF; a line over max_line bytes (default: the stream's, 1 MiB) raises `io` cause "too_large"
---@field close fun(self: atom.stream) idempotent; also `<close>` and garbage collection

--- Connect to host:port (default timeout 30 s). One task reads at a time
--- (a second reader raises `usage`); failures raise `io` with `cause`
--- (`refused`, `dns`, `reset`, `eof`, `closed`, `too_large`, `resources`).
---@param host string a name or an IPv4/IPv6 address; every address of a name is tried in turn
---@param port integer
---@param opts? number|{timeout?: number, max_line?: integer} max_line: read_line's default limit
---@return atom.stream
function M.connect(host, port, opts)
  return _atom.tcp_connect(host, port, opts)
end

--- Wait until a TCP connect to host:port succeeds (the connection is closed
--- at once). Retries every `interval` seconds; raises `timeout` after
--- `timeout` (default 30).
---@param host string
---@param port integer
---@param opts? number|{timeout?: number, interval?: number}
function M.wait_port(host, port, opts)
  return _atom.wait_port(host, port, opts)
end

--- An integer port that binds on 127.0.0.1 now, lies outside the kernel's
--- ephemeral range, was not returned before in this run and is reserved for
--- it (advisory locks under /tmp/atomlua-ports-<uid>/ or $ATOMLUA_PORT_DIR).
---@return integer
function M.free_port()
  return _atom.free_port()
end

return M
