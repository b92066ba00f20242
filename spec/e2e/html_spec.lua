-- The --html report in a real browser (Debian's headless chromium): the DOM
-- holds every test and process name, the failure's error text and log
-- tail; the page logs no console error; 10,000 events stay under 2 MB; and
-- `atomlua report` renders the same page from the saved events log.
local cli = require "support.cli"
local netfix = require "fixtures.netfix"
local q = cli.q

local CHROMIUM = "/usr/bin/chromium"
local have_chromium = io.open(CHROMIUM) ~= nil

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- The DOM after scripts ran, and chromium's stderr (console messages).
local function browse(page)
  local prof, err = netfix.tmpdir(), os.tmpname()
  local p = io.popen(("%s --headless --no-sandbox --disable-gpu --disable-quic --no-first-run " ..
    "--disable-background-networking --disable-component-update --disable-sync --user-data-dir=%s " ..
    "--enable-logging=stderr --v=0 --dump-dom %s 2>%s"):format(CHROMIUM, q(prof), q("file://" .. page), q(err)))
  local dom = p:read("a")
  p:close()
  local log = read(err)
  os.remove(err)
  os.execute("rm -rf " .. q(prof))
  return dom, log
end

local function console_errors(log)
  local bad = {}
  for line in log:gmatch("[^\n]+") do
    if line:find("CONSOLE", 1, true) or line:find("Uncaught", 1, true) then bad[#bad + 1] = line end
  end
  return bad
end

local function run_with_html(dir, args)
  local page, ev = dir .. "/page.html", dir .. "/events.ndjson"
  local full = { "run", "--workdir", dir .. "/runs", "--html", page, "--events", ev }
  for _, a in ipairs(args) do full[#full + 1] = a end
  local r = cli.run(full)
  return r, page, ev
end

local function same_from_log(dir, page, ev)
  local again = dir .. "/again.html"
  local r = cli.run { "report", ev, "--html", again }
  assert.equal(0, r.code, r.err)
  assert.equal(read(page), read(again))
end

describe("--html", function()
  local server
  setup(function() server = netfix.python() end)
  teardown(function() server.stop() end)

  local it_browser = have_chromium and it or pending

  it_browser("shows a failing run: timeout, crashed node, pause, failed calls", function()
    local dir = netfix.tmpdir()
    local r, page, ev = run_with_html(dir, { "spec/fixtures/html/failing.lua", "--", server.url })
    assert.equal(1, r.code, r.out .. r.err)
    local dom, log = browse(page)
    for _, name in ipairs { "calls the server", "node crashes", "waits too long", "crashnode", "sleeper" } do
      assert.truthy(dom:find(name, 1, true), name)
    end
    assert.truthy(dom:find("exited unexpectedly: code 7", 1, true))
    assert.truthy(dom:find("going-down-now", 1, true)) -- the crashed node's log tail
    assert.truthy(dom:find('timed out after 0.3s', 1, true))
    assert.truthy(dom:find('class="proc crashed"', 1, true))
    assert.truthy(dom:find('class="paused"', 1, true))
    assert.truthy(dom:find('class="tick bad"', 1, true))
    assert.truthy(dom:find("reproduce:", 1, true))
    assert.truthy(dom:find("history reg: not linearizable", 1, true))
    assert.truthy(dom:find("/reg.html", 1, true))
    assert.truthy(dom:find('class="fault"', 1, true))
    assert.truthy(dom:find("kill node=1 signal=KILL (cluster fx)", 1, true), "the fault mark names the node")
    assert.same({}, console_errors(log))
    same_from_log(dir, page, ev)
    os.execute("rm -rf " .. q(dir))
  end)

  it_browser("keeps a 10,000-event run under 2 MB", function()
    local dir = netfix.tmpdir()
    local r, page, ev = run_with_html(dir, { "spec/fixtures/html/many.lua", "--", server.url, "10000" })
    assert.equal(0, r.code, r.out .. r.err)
    local n = 0
    for _ in io.lines(ev) do n = n + 1 end
    assert.is_true(n >= 10000, n .. " events")
    assert.is_true(#read(page) < 2 * 1024 * 1024, #read(page) .. " bytes")
    local dom, log = browse(page)
    assert.truthy(dom:find("many calls", 1, true))
    assert.same({}, console_errors(log))
    same_from_log(dir, page, ev)
    os.execute("rm -rf " .. q(dir))
  end)

  it_browser("shows the etcd demo with its nodes ready", function()
    local dir = netfix.tmpdir()
    local r, page, ev = run_with_html(dir, { "scenarios/etcd_cluster.lua" })
    assert.equal(0, r.code, r.out .. r.err)
    local dom, log = browse(page)
    for _, name in ipairs { "etcd1", "etcd2", "etcd3" } do assert.truthy(dom:find(name, 1, true), name) end
    assert.truthy(dom:find('class="ready"', 1, true))
    assert.same({}, console_errors(log))
    same_from_log(dir, page, ev)
    os.execute("rm -rf " .. q(dir))
  end)

  it("report: bad input exits 2 with a reason", function()
    local r = cli.run { "report", "/no/such/events.ndjson", "--html", "/tmp/x.html" }
    assert.equal(2, r.code)
    assert.truthy(r.err:find("cannot read /no/such/events.ndjson", 1, true))
    local bad = os.tmpname()
    local f = assert(io.open(bad, "w"))
    f:write('{"type":"run_start","t":0}\nnot json\n')
    f:close()
    r = cli.run { "report", bad, "--html", "/tmp/x.html" }
    assert.equal(2, r.code)
    assert.truthy(r.err:find(":2: not an event", 1, true), r.err)
    r = cli.run { "report", bad }
    assert.equal(2, r.code)
    os.remove(bad)
  end)

  if not have_chromium then
    it("needs chromium", function() error("chromium is not installed: tools/install-deps.sh installs it") end)
  end
end)
