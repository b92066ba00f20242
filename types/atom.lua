---@meta atom
-- LuaLS / LuaCATS annotations for atomlua's `atom` module: the global `atom`
-- in scenario files and `require "atom"` in module mode. Point your editor's
-- Lua language server at the directory `atomlua --types-path` prints (see
-- docs/editor.md). spec/types_spec.lua fails when a public function, method
-- or field is missing here, or when this file names one that does not exist.

---@alias atom.timeout_opts number|{timeout: number?}
---@alias atom.error_kind "usage"|"timeout"|"cancelled"|"deadlock"|"process"|"spawn"|"http"|"rpc"|"io"|"json"|"itf"|"assert"|"grpc"|"work"

---An error value: `tostring(e)` is one line, `file:line: message`.
---@class atom.error
---@field kind atom.error_kind|string
---@field message string
---@field task string|nil the task it was raised in
---@field traceback string|nil
---@field where string|nil the script's file:line
---@field cause string|nil e.g. "refused", "reset", "eof", "too_large", "closed"
---@field code integer|nil exit code, rpc error code, ...
---@field child_error atom.error|nil on a cancellation caused by a failing child or process
---@field also atom.error[]|nil later errors of siblings (gather/map)
---@field cleanup_errors atom.error[]|nil errors raised by cleanups
---@field stderr string|nil a failed atom.exec / atom.sh: the command's stderr

---A task handle (`atom.go`, `atom.owner`).
---@class atom.task
---@field name string
local Task = {}
---Wait for the task; returns its results or raises its error.
---@param opts atom.timeout_opts?
---@return any ...
function Task:join(opts) end
---Cancel the task and what it started.
function Task:cancel() end
---@return "running"|"done"|"failed"|"cancelled"
function Task:status() end

---@class atom.channel
local Channel = {}
---@param v any not nil
---@param opts atom.timeout_opts?
function Channel:send(v, opts) end
---@param opts atom.timeout_opts?
---@return any|nil v nil once closed and drained
function Channel:recv(opts) end
function Channel:close() end
---@return fun(): any
function Channel:iter() end

---@class atom.event
local Event = {}
function Event:set() end
---@param opts atom.timeout_opts?
function Event:wait(opts) end
---@return boolean
function Event:is_set() end

---@class atom.semaphore
local Semaphore = {}
---@param opts atom.timeout_opts?
function Semaphore:acquire(opts) end
function Semaphore:release() end
---Acquire, call fn(...), release however fn ends.
---@param fn function
---@return any ...
function Semaphore:with(fn, ...) end

---@class atom.spawn_spec
---@field [integer] string|number argv
---@field name string?
---@field cwd string?
---@field env table<string, string|number|false>?
---@field env_clear boolean?
---@field stdin string? data written then closed, or "pipe"
---@field output ("capture"|"inherit"|"null")?
---@field critical boolean?
---@field grace number? seconds between SIGTERM and SIGKILL in p:stop() (5)
---@field net atom_host? run inside this host (isolated runs)
---@field owner atom.task? spawn for this owner (from atom.owner())

---@class atom.exec_spec: atom.spawn_spec
---@field timeout number?
---@field check boolean? false: a non-zero exit does not raise

---@class atom.exec_result
---@field code integer|nil
---@field signal string|nil
---@field stdout string
---@field stderr string
---@field duration number

---A spawned process (`atom.spawn`).
---@class atom.process
---@field pid integer
---@field name string
---@field critical boolean
---@field log string|nil the path of its log file
local Process = {}
---Wait for an output line matching `pattern` at or after the match cursor.
---@param pattern string a Lua pattern (or plain text with plain = true)
---@param opts number|{timeout: number?, plain: boolean?}?
---@return string line, any ... captures
function Process:expect(pattern, opts) end
---Output lines from the cursor on, as they come.
---@return fun(): string|nil
function Process:lines() end
---@param opts atom.timeout_opts?
---@return integer|nil code, string|nil signal
function Process:wait(opts) end
---@param sig string|integer? "TERM" (default)
---@return boolean sent false once the process was reaped
function Process:kill(sig) end
---@param grace number?
---@return integer|nil code, string|nil signal
function Process:stop(grace) end
function Process:pause() end
function Process:resume() end
---@param s string
---@param opts atom.timeout_opts?
function Process:write(s, opts) end
function Process:close_stdin() end
---@return string stdout, string stderr the last 1 MiB of each
function Process:output() end
---@return boolean
function Process:is_running() end
---@return boolean
function Process:running() end
---@param n integer? (20)
---@return string[]
function Process:tail(n) end
---@return "running"|"exited" state, integer|nil code, string|nil signal
function Process:status() end
---The last n lines as process errors quote them (header, "  | " lines, log path).
---@param n integer? (20)
---@return string
function Process:tail_text(n) end

---A TCP stream (`atom.tcp.connect`).
---@class atom.stream
local Stream = {}
---@param data string
---@param opts atom.timeout_opts?
function Stream:write(data, opts) end
---Exactly n bytes, or nil at a clean EOF.
---@param n integer
---@param opts atom.timeout_opts?
---@return string|nil
function Stream:read(n, opts) end
---@param opts number|{timeout: number?, max_line: integer?}?
---@return string|nil
function Stream:read_line(opts) end
function Stream:close() end

---@class atom.http_request
---@field method string?
---@field url string
---@field headers table<string, string>?
---@field body string?
---@field json any?
---@field timeout number? (30)
---@field follow boolean?
---@field proxy string?
---@field insecure boolean?
---@field max_body integer?

---@class atom.http_response
---@field status integer
---@field headers table<string, string> lower-case names
---@field body string
---@field duration number
local Response = {}
---@return any
function Response:json() end

---A streamed HTTP response (`atom.http.stream`).
---@class atom.http_stream
---@field status integer
---@field headers table<string, string> lower-case names
---@field url string
local HttpStream = {}
---The next chunk of body bytes, or nil at the end.
---@param opts atom.timeout_opts?
---@return string|nil
function HttpStream:read(opts) end
---@param opts atom.timeout_opts?
---@return fun(): string|nil
function HttpStream:lines(opts) end
---Server-Sent Events.
---@param opts atom.timeout_opts?
---@return fun(): {event: string, data: string, id: string|nil}|nil
function HttpStream:sse(opts) end
function HttpStream:close() end

---A gRPC call opened with `atom.grpc.stream` (server, client or bidirectional streaming).
---@class atom.grpc_stream
---@field headers table<string, string>|nil response headers, once they came
---@field trailers table<string, string>|nil trailers, after the end
local GrpcStream = {}
---Queue a message; false once the call has ended (the message is dropped).
---@param msg table
---@return boolean
function GrpcStream:send(msg) end
---Half-close: the server sees the end of the client's messages.
function GrpcStream:close_send() end
---The next message, or nil once the server ended the call with OK.
---@param timeout number|atom.timeout_opts?
---@return table|nil
function GrpcStream:recv(timeout) end
---@param timeout number? bounds the wait for each message
---@return fun(): table|nil
function GrpcStream:messages(timeout) end
---Reset the HTTP/2 stream (the server sees CANCELLED); idempotent.
function GrpcStream:cancel() end
---Same as cancel.
function GrpcStream:close() end

---A WebSocket (`atom.ws.connect`).
---@class atom.ws
---@field url string
---@field protocol string|nil
---@field close_code integer|nil
---@field close_reason string|nil
local WebSocket = {}
---@param data string
---@param kind "text"|"binary"|nil
---@param opts atom.timeout_opts?
function WebSocket:send(data, kind, opts) end
---@param opts atom.timeout_opts?
---@return string|nil data, "text"|"binary"|nil kind
function WebSocket:recv(opts) end
---@param opts atom.timeout_opts?
---@return fun(): string|nil, string|nil
function WebSocket:messages(opts) end
---@param code integer? (1000)
---@param reason string?
function WebSocket:close(code, reason) end

---JSON-RPC over a WebSocket (`atom.rpc.connect`).
---@class atom.rpc_client
---@field url string
---@field ws atom.ws
local RpcClient = {}
---@param method string
---@param params table?
---@param timeout atom.timeout_opts?
---@return any
function RpcClient:call(method, params, timeout) end
---@param query string
---@param timeout atom.timeout_opts?
---@return atom.rpc_subscription
function RpcClient:subscribe(query, timeout) end
function RpcClient:close() end

---@class atom.rpc_subscription
---@field id integer
---@field query string
---@field client atom.rpc_client
local RpcSubscription = {}
---The next event's result {query, data, events}, or nil after close.
---@param timeout atom.timeout_opts?
---@return table|nil
function RpcSubscription:next(timeout) end
---@param timeout atom.timeout_opts?
---@return fun(): table|nil
function RpcSubscription:events(timeout) end
function RpcSubscription:close() end

---@class atom.cluster_node
---@field id integer
---@field name string
---@field ports table<string, integer>
---@field dir string
---@field proc atom.process|nil
---@field host string its address: its host's (`node.net.address`) in an isolated run, else "127.0.0.1"

---@class atom.cluster_opts
---@field size integer
---@field name string?
---@field ports string[]?
---@field cmd fun(node: atom.cluster_node, c: atom.cluster): atom.spawn_spec
---@field ready (string|fun(node: atom.cluster_node, c: atom.cluster): any)?
---@field ready_timeout number?
---@field env table?
---@field cwd string?

---@class atom.cluster
---@field name string
---@field size integer
---@field nodes atom.cluster_node[]
local Cluster = {}
---@param opts atom.timeout_opts?
function Cluster:start(opts) end
function Cluster:stop() end
---@param i integer|atom.cluster_node
---@param sig string|integer?
---@param opts atom.timeout_opts?
---@return integer|nil code, string|nil signal
function Cluster:kill(i, sig, opts) end
---@param i integer|atom.cluster_node
---@param opts atom.timeout_opts?
function Cluster:restart(i, opts) end
---@param i integer|atom.cluster_node
function Cluster:pause(i) end
---@param i integer|atom.cluster_node
function Cluster:resume(i) end
---Nodes in different groups cannot reach each other (--isolate); replaces the previous partition.
---@param ... (integer|atom.cluster_node)[]
function Cluster:partition(...) end
---@param i integer|atom.cluster_node
function Cluster:isolate(i) end
---One way: i's packets to j vanish.
---@param i integer|atom.cluster_node
---@param j integer|atom.cluster_node
function Cluster:block(i, j) end
---@param i integer|atom.cluster_node
---@param j integer|atom.cluster_node
function Cluster:unblock(i, j) end
---Remove this cluster's partition and blocks.
function Cluster:heal() end

---A host of an isolated run (docs/faults.md). `node.net` of a cluster node is one.
---@class atom_host
---@field name string
---@field address string "10.77.0.N"
---@field spawn fun(self: atom_host, spec: atom.spawn_spec): atom.process
---@field exec fun(self: atom_host, spec: atom.spawn_spec): table
---@field sh fun(self: atom_host, cmd: string, opts?: number|table): string
---@field close fun(self: atom_host)

---@class atom_rule
---@field remove fun(self: atom_rule) idempotent

---@class atom_proxy_settings
---@field delay number? seconds
---@field jitter number? seconds, uniform +-
---@field rate number? bytes per second
---@field blackhole boolean?
---@field reset boolean?
---@field direction ("up"|"down"|"both")?

---@class atom_proxy
---@field host string
---@field port integer
---@field stats {connections: integer, open: integer, bytes_up: integer, bytes_down: integer}
---@field set fun(self: atom_proxy, settings: atom_proxy_settings)
---@field clear fun(self: atom_proxy)
---@field close fun(self: atom_proxy)

---@class atomlib
atom = {}

---@type string
atom.version = ""
---True in an isolated run (--isolate).
---@type boolean
atom.isolated = false
---Hosts and drop rules of isolated runs (docs/faults.md).
atom.net = {}
---@param name string?
---@return atom_host
function atom.net.host(name) end
---Drop packets from host `from` to host `to` (optionally to one port); a list drops several in one step.
---@param spec {from: atom_host|string, to: atom_host|string, port: integer?}|table[]
---@return atom_rule
function atom.net.drop(spec) end
---Remove every rule.
function atom.net.heal() end
---A TCP proxy that can delay, slow, blackhole or reset (every run).
---@param opts {upstream: string, listen: integer|string|nil}
---@return atom_proxy
function atom.proxy(opts) end
---Script arguments after `--`.
---@type string[]
atom.args = {}
---The scenario file's directory (also on package.path).
---@type string
atom.dir = ""

-- Tasks and structured concurrency

---@param secs number
function atom.sleep(secs) end
---Seconds since the run began (monotonic).
---@return number
function atom.now() end
---Rename the current task; without an argument, return its name.
---@param str string?
---@return string|nil
function atom.name(str) end
---@return any ... the first result of each function
function atom.gather(...) end
---@return integer i, any result
function atom.race(...) end
---@param list any[]
---@param fn fun(item: any, i: integer): any
---@param opts {concurrency: integer?}?
---@return table results packed like table.pack
function atom.map(list, fn, opts) end
---@param secs number
---@param fn function
---@return any ...
function atom.timeout(secs, fn, ...) end
---@param fn function
---@return any ...
function atom.shield(fn, ...) end
---@param fn function
---@return atom.task
function atom.go(fn, ...) end
---Call fn(...) when the current task ends (or atom.defer{fn, ..., grace = s}).
---@param fn function|table
function atom.defer(fn, ...) end
---@param fn fun(): any, string?
---@param opts number|{timeout: number?, interval: number?}?
---@return any
function atom.wait_until(fn, opts) end
---@param capacity integer? (0)
---@return atom.channel
function atom.channel(capacity) end
---@return atom.event
function atom.event() end
---@param n integer
---@return atom.semaphore
function atom.semaphore(n) end

-- Tests

---@param name string
---@param fn function
---@param opts number|{timeout: number?}?
---@return boolean|nil passed nil when --filter left it out
function atom.test(name, fn, opts) end
---@param name string
---@param reason string?
function atom.skip(name, reason) end
---Deep comparison; raises kind "assert" naming the first differing key path.
---@param actual any
---@param expected any
---@param message string?
function atom.assert_eq(actual, expected, message) end
---Module mode: run fn(...) as a root task on atom's loop.
---@param fn function
---@return any ...
function atom.run(fn, ...) end

-- Processes

---@param spec atom.spawn_spec
---@return atom.process
function atom.spawn(spec) end
---@param spec atom.exec_spec
---@return atom.exec_result
function atom.exec(spec) end
---@param cmdline string
---@param opts number|atom.exec_spec?
---@return string stdout, atom.exec_result|nil result with check = false
function atom.sh(cmdline, opts) end

-- Network

atom.http = {}
---@param req atom.http_request
---@return atom.http_response
function atom.http.request(req) end
---@param url string
---@param opts number|atom.http_request?
---@return atom.http_response
function atom.http.get(url, opts) end
---@param url string
---@param body string|table a table is sent as json
---@param opts number|atom.http_request?
---@return atom.http_response
function atom.http.post(url, body, opts) end

---A streamed response, returned once the headers are in.
---@param req atom.http_request
---@return atom.http_stream
function atom.http.stream(req) end

---A JSON-RPC 2.0 call over HTTP POST.
---@param url string
---@param method string
---@param params table?
---@param opts number|atom.http_request?
---@return any
function atom.rpc(url, method, params, opts) end
---@param url string
---@param calls {[1]: string, [2]: table?}[]
---@param opts number|atom.http_request?
---@return {result: any, error: {code: integer, message: string, data: any}?}[]
function atom.rpc_batch(url, calls, opts) end

---JSON-RPC 2.0 over a WebSocket (ws:// or wss://).
---@param url string
---@param opts number|table?
---@return atom.rpc_client
function atom.rpc.connect(url, opts) end

atom.grpc = {}
---Status names to numbers: OK = 0, CANCELLED = 1, ..., UNAUTHENTICATED = 16.
atom.grpc.codes = {}
---Load .proto files (through protoc) or descriptor sets.
---@param paths string|string[]
---@param opts {include: string[]?}?
function atom.grpc.load(paths, opts) end
---Load every service the server lists through server reflection.
---@param target string host:port, http://host:port or https://host:port
---@param opts number|{timeout: number?, metadata: table?, tls: boolean|table|nil}?
---@return string[] services
function atom.grpc.reflect(target, opts) end
---A unary call: the response message and the call's metadata.
---@param target string host:port, http://host:port or https://host:port
---@param method string "package.Service/Method"
---@param request table
---@param opts number|{timeout: number?, metadata: table<string, string|number>?, tls: boolean|{ca: string?, cert: string?, key: string?, insecure: boolean?}|nil, max_message: integer?}?
---@return table response, {headers: table<string, string>, trailers: table<string, string>} metadata
function atom.grpc.call(target, method, request, opts) end
---Open a streaming call (any kind; a unary method works too).
---@param target string
---@param method string "package.Service/Method"
---@param opts number|{timeout: number?, metadata: table<string, string|number>?, tls: boolean|table|nil, max_message: integer?}?
---@return atom.grpc_stream
function atom.grpc.stream(target, method, opts) end

atom.ws = {}
---@param url string ws:// or wss://
---@param opts number|{timeout: number?, headers: table?, protocols: string[]?, tls: boolean|table|nil, max_message: integer?}?
---@return atom.ws
function atom.ws.connect(url, opts) end

atom.tcp = {}
---@param host string
---@param port integer
---@param opts number|{timeout: number?, max_line: integer?}? max_line: read_line's default (1 MiB)
---@return atom.stream
function atom.tcp.connect(host, port, opts) end
---@param host string
---@param port integer
---@param opts atom.timeout_opts?
function atom.tcp.wait_port(host, port, opts) end
---@return integer
function atom.tcp.free_port() end
---@param host string
---@param port integer
---@param opts atom.timeout_opts?
function atom.wait_port(host, port, opts) end
---A port free on 127.0.0.1, outside the ephemeral range, reserved for this run.
---@return integer
function atom.free_port() end

-- Data

atom.json = {}
---@type lightuserdata
atom.json.null = nil
---@param v any
---@return string
function atom.json.encode(v) end
---@param s string
---@return any
function atom.json.decode(s) end
---Mark t to encode as a JSON array (also when empty); returns t.
---@param t table
---@return table
function atom.json.array(t) end
atom.json.base64 = atom.base64
atom.json.hex = atom.hex

atom.base64 = {}
---@param s string
---@return string
function atom.base64.encode(s) end
---@param s string
---@return string
function atom.base64.decode(s) end
atom.hex = {}
---@param s string
---@return string
function atom.hex.encode(s) end
---@param s string
---@return string
function atom.hex.decode(s) end

atom.itf = {}
---@param path string
---@return {vars: string[], states: table[], params: table?, meta: table?}
function atom.itf.load(path) end
---@param text string
---@return {vars: string[], states: table[], params: table?, meta: table?}
function atom.itf.decode(text) end

-- Clusters

---@param opts atom.cluster_opts
---@return atom.cluster
function atom.cluster(opts) end

-- Hosts: nodes on other machines (docs/hosts.md)

---@class atom.host_opts
---@field via string[] the transport's argv, ending where a shell command line goes: {"ssh", "-T", "user@node1"}, {"sh", "-c"}
---@field name string?
---@field address string? `h.address` (default: the ssh target's host part, else "127.0.0.1")
---@field atomlua string? the binary's path on the host (default ~/.cache/atomlua/<version>/atomlua)
---@field upload boolean? copy this atomlua there when missing or different (default true)
---@field timeout number? seconds for the connection and for each request (default 30)

---@class atom.remote_host
---@field name string
---@field address string
---@field dir string a fresh directory on the host, removed when it closes unless --keep
---@field via string[]
---@field uploaded boolean
local RemoteHost = {}
---@param spec atom.spawn_spec
---@return atom.process
function RemoteHost:spawn(spec) end
---@param spec atom.spawn_spec
---@return {code: integer|nil, signal: string|nil, stdout: string, stderr: string, duration: number}
function RemoteHost:exec(spec) end
---@param cmdline string
---@param opts number|table?
---@return string stdout, table|nil result
function RemoteHost:sh(cmdline, opts) end
---@return integer
function RemoteHost:free_port() end
---@param local_path string
---@param remote_path string
---@return string
function RemoteHost:put(local_path, remote_path) end
---@param remote_path string
---@param local_path string
---@return string
function RemoteHost:get(remote_path, local_path) end
function RemoteHost:close() end

---Run nodes on another machine through an atomlua agent (docs/hosts.md).
---@param opts atom.host_opts
---@return atom.remote_host
function atom.host(opts) end

-- Histories and work off the loop (docs/histories.md)

---@class atom.hist
local Hist = {}
---@param process integer|string
---@param f string
---@param value any
---@return atom.hist_op
function Hist:invoke(process, f, value) end
---@param process integer|string
---@param f string
---@param value any
---@param fn fun(op: atom.hist_op): ...
---@return ...
function Hist:run(process, f, value, fn) end
---@return table[] events {index, type, process, f, value, time, error}
function Hist:ops() end
---@param path string
---@return string
function Hist:save(path) end
---@param opts {model: "register"|"cas-register"|"kv"|table, independent: boolean?, timeout: number?}
---@return atom.verdict
function Hist:check(opts) end

---@class atom.hist_op
---@field process integer|string
---@field f string
---@field value any
---@field index integer event index of the invocation
---@field type "ok"|"fail"|"info"|nil once completed
---@field completion integer|nil event index of the completion
local HistOp = {}
---@param value any? the result (a read's value)
---@return atom.hist_op
function HistOp:ok(value) end
---@param reason any?
---@return atom.hist_op
function HistOp:fail(reason) end
---@param reason any?
---@return atom.hist_op
function HistOp:info(reason) end

---@class atom.verdict
---@field valid boolean|"unknown"
---@field ops integer
---@field keys integer
---@field seconds number
---@field model string
---@field history atom.hist
---@field counterexample {key: any, prefix: table[], op: table, concurrent: table[]}|nil
local CheckResult = {}
---@param path string
---@return string
function CheckResult:html(path) end

---@overload fun(name: string?): atom.hist
atom.history = {}
---@param name string?
---@return atom.hist
function atom.history.new(name) end
---@param path string
---@return atom.hist
function atom.history.load(path) end

---Run fn(...) in a Lua state of its own on a libuv worker thread.
---@param fn function
---@return ...
function atom.work(fn, ...) end
---The checker behind h:check, on a worker; a plain result table.
---@param events table[]
---@param opts {model: "register"|"cas-register"|"kv"|table, independent: boolean?, timeout: number?}
---@return table
function atom.linearizable(events, opts) end

-- For libraries (docs/API.md "Writing a library")

---A new error value (raise it with error(e, 0)).
---@param kind atom.error_kind|string
---@param message string
---@param fields table?
---@return atom.error
function atom.error(kind, message, fields) end
---@param v any
---@param kind string?
---@return boolean
function atom.is_error(v, kind) end
---@param level integer? (1: the caller)
---@return string|nil
function atom.where(level) end
---Raise a pending cancellation; does not wait.
---@param name string?
function atom.checkpoint(name) end
---@return atom.task
function atom.owner() end
---@param sig string|integer
---@return integer|nil
function atom.signum(sig) end
---@return string|nil
function atom.run_dir() end
---@param path string
---@return string
function atom.mkdir(path) end
---@param type string
---@param fields table?
function atom.emit(type, fields) end
---@param v any
---@param limit integer?
---@return string
function atom.repr(v, limit) end

---Counts of live tasks, handles, refs and children (module mode, debugging).
---@return {tasks: integer, handles: integer, refs: integer, children: integer, timers: integer}
function atom._stats() end

return atom
