-- Reactor for the bank traces (DRAFT, untested until atom.spawn and atom.tcp
-- land): replays each trace against a real redis-server, where every account
-- is a key "balance:<name>", and after every step compares all balances with
-- the model's.
--
--   atomlua trace --reactor scenarios/bank/reactor.lua scenarios/bank/traces
--
-- It reads both kinds of trace in traces/: Quint's (action in
-- "mbt::actionTaken", arguments in "mbt::nondetPicks" as Some/None variants)
-- and Apalache's (a model variable `action` with `tag` and the arguments).

-- One redis-server for the whole run: top-level code runs in the reactor's
-- root task, so the process lives until the run ends. Each trace starts from
-- an empty database (setup flushes it).
local port = atom.free_port()
local redis = atom.spawn{ "redis-server", "--port", port, "--bind", "127.0.0.1",
  "--save", "", "--appendonly", "no", name = "redis" }
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

local function reply(conn)
  local line = conn:read_line()
  if line == nil then error("redis closed the connection") end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then error("redis: " .. rest, 2) end
  if kind == ":" then return math.tointeger(tonumber(rest)) end
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return nil end
    local data = conn:read(n + 2)
    return data:sub(1, n)
  end
  if kind == "*" then
    local n = tonumber(rest)
    if n < 0 then return nil end
    local out = { n = n }
    for i = 1, n do out[i] = reply(conn) end
    return out
  end
  error("unexpected RESP reply: " .. line)
end

local function call(conn, ...)
  command(conn, ...)
  return reply(conn)
end

--{==================================================================
-- Reading the model state
--===================================================================

-- The transfer's arguments: Quint's nondet picks are Some(v) / None variants;
-- Apalache's Bank.tla keeps them in the `action` record.
local function transfer_args(state)
  local picks = state["mbt::nondetPicks"]
  if picks then
    return picks.sender.value, picks.receiver.value, picks.amount.value
  end
  return state.action.sender, state.action.receiver, state.action.amount
end

-- A plain {name = balance} table of the model's balances (an ITF map).
local function model_balances(state)
  local out = {}
  for name, amount in state.balances:iter() do out[name] = amount end
  return out
end

return {
  -- Quint writes the action in "mbt::actionTaken" (the SPEC's default path);
  -- Apalache traces of Bank.tla have it at "action.tag". A reactor for one tool
  -- would just say `action = "action.tag"`; this one takes both.
  action = function(state)
    return state["mbt::actionTaken"] or (state.action and state.action.tag)
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
      for name, amount in state.balances:iter() do
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
      call(r, "WATCH", "balance:" .. sender)
      local have = tonumber(call(r, "GET", "balance:" .. sender)) or 0
      if have < amount then
        call(r, "UNWATCH")
        error(("%s has %d, cannot send %d"):format(sender, have, amount))
      end
      call(r, "MULTI")
      call(r, "DECRBY", "balance:" .. sender, amount)
      call(r, "INCRBY", "balance:" .. receiver, amount)
      local results = call(r, "EXEC")
      if results == nil then error("transfer aborted: balance:" .. sender .. " changed") end
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
