-- Reactor for the bank traces: replays each trace against a real redis-server,
-- where every account is a key "balance:<name>", and after every step compares
-- all balances with the model's.
--
--   atomlua trace --reactor scenarios/bank/reactor.lua scenarios/bank/traces
--
-- It reads both kinds of trace in traces/: Quint's (action in
-- "mbt::actionTaken", arguments in "mbt::nondetPicks", variables possibly
-- qualified as "bank::balances") and Apalache's (a model variable `action`
-- holding `tag` and the arguments).

-- One redis-server for the whole run: top-level code runs in the reactor's
-- root task, so the process lives until the run ends and is stopped then
-- (also when a trace fails or the run is interrupted). Each trace starts from
-- an empty database (setup flushes it). critical: if redis dies on its own,
-- the running trace fails at once instead of timing out on a dead socket.
local port = atom.free_port()
local redis = atom.spawn{ "redis-server", "--port", port, "--bind", "127.0.0.1",
  "--save", "", "--appendonly", "no", name = "redis", critical = true }
redis:expect("Ready to accept connections", 10)

--{==================================================================
-- A minimal RESP client
--===================================================================

local function command(conn, ...)
  local args = table.pack(...)
  local parts = { ("*%d\r\n"):format(args.n) }
  for i = 1, args.n do
    local s = tostring(args[i])
    parts[#parts + 1] = ("$%d\r\n%s\r\n"):format(#s, s)
  end
  conn:write(table.concat(parts))
end

-- One reply, decoded: simple strings and bulk strings as Lua strings, integers
-- as integers, arrays as lists (with n, since a nil bulk string is a hole), a
-- nil bulk or array as nil. An error reply raises.
local function reply(conn)
  local line = conn:read_line()
  if line == nil then error("redis closed the connection", 0) end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then error("redis: " .. rest, 0) end
  if kind == ":" then return math.tointeger(tonumber(rest)) end
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return nil end
    return conn:read(n + 2):sub(1, n)
  end
  if kind == "*" then
    local n = tonumber(rest)
    if n < 0 then return nil end
    local out = { n = n }
    for i = 1, n do out[i] = reply(conn) end
    return out
  end
  error("unexpected RESP reply: " .. line, 0)
end

local function call(conn, ...)
  command(conn, ...)
  return reply(conn)
end

--{==================================================================
-- Reading the model state
--===================================================================

-- A model variable by its plain name. Quint qualifies the variables of a
-- module it reached through a namespaced import or an instance
-- ("bank::balances", "bankTest::bank::balances"), so take any key that ends
-- in "::<name>" too.
local function var(state, name)
  local v = state[name]
  if v ~= nil then return v end
  local suffix = "::" .. name
  for k, x in pairs(state) do
    if type(k) == "string" and k:sub(-#suffix) == suffix and not k:match("^mbt::") then return x end
  end
  error(("the model state has no variable %q"):format(name), 0)
end

-- A nondet pick: Quint's --mbt writes each as an Option variant (Some(v) or
-- None); take a plain value too, in case a Quint version writes it bare.
local function pick(picks, name)
  local v = picks[name]
  if type(v) == "table" and v.tag == "Some" then return v.value end
  if type(v) == "table" and v.tag == "None" then return nil end
  return v
end

-- The transfer's arguments: Quint's nondet picks, or the `action` record that
-- Bank.tla keeps for Apalache.
local function transfer_args(state)
  local picks = state["mbt::nondetPicks"]
  if picks then return pick(picks, "sender"), pick(picks, "receiver"), pick(picks, "amount") end
  local a = var(state, "action")
  return a.sender, a.receiver, a.amount
end

-- A plain {name = balance} table of the model's balances (an ITF map).
local function model_balances(state)
  local out = {}
  for name, amount in var(state, "balances"):iter() do out[name] = amount end
  return out
end

return {
  -- Quint writes the action in "mbt::actionTaken" (the SPEC's default path),
  -- "init" for the initial state; Bank.tla writes it at "action.tag", with
  -- "init" in its Init. A reactor for one tool would give the key path
  -- (or nothing, for Quint); this one takes whichever the state has.
  action = function(state)
    local quint = state["mbt::actionTaken"]
    if quint ~= nil then return quint end
    local ok, a = pcall(var, state, "action")
    return ok and type(a) == "table" and a.tag or nil
  end,
  timeout = 60,

  setup = function(ctx)
    ctx.redis = atom.tcp.connect("127.0.0.1", port)
    atom.defer(function() ctx.redis:close() end)
    assert(call(ctx.redis, "FLUSHALL") == "OK")
  end,

  steps = {
    init = function(ctx, state)
      local args = { "MSET" }
      for name, amount in var(state, "balances"):iter() do
        args[#args + 1] = "balance:" .. name
        args[#args + 1] = amount
      end
      assert(call(ctx.redis, table.unpack(args)) == "OK")
    end,

    -- The model only takes a transfer when the sender's balance suffices; the
    -- implementation checks the same under WATCH, so a concurrent change would
    -- abort the transaction (EXEC returns nil) instead of overdrawing.
    Transfer = function(ctx, state)
      local sender, receiver, amount = transfer_args(state)
      local r = ctx.redis
      assert(call(r, "WATCH", "balance:" .. sender) == "OK")
      local have = tonumber(call(r, "GET", "balance:" .. sender)) or 0
      if have < amount then
        call(r, "UNWATCH")
        error(("%s has %d, cannot send %d"):format(sender, have, amount), 0)
      end
      assert(call(r, "MULTI") == "OK")
      assert(call(r, "DECRBY", "balance:" .. sender, amount) == "QUEUED")
      assert(call(r, "INCRBY", "balance:" .. receiver, amount) == "QUEUED")
      if call(r, "EXEC") == nil then error("transfer aborted: balance:" .. sender .. " changed", 0) end
    end,
  },

  check = function(ctx, state)
    local expected = model_balances(state)
    local names = {}
    for name in pairs(expected) do names[#names + 1] = name end
    table.sort(names)
    local keys = {}
    for i, name in ipairs(names) do keys[i] = "balance:" .. name end
    local values = call(ctx.redis, "MGET", table.unpack(keys))
    local actual = {}
    for i, name in ipairs(names) do
      actual[name] = values[i] and math.tointeger(tonumber(values[i]))
    end
    atom.assert_eq(actual, expected, "balances")
  end,
}
