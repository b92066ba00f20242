-- atom.http (SPEC §5 "HTTP"): requests on the curl multi handle, against
-- spec/fixtures/server.py and nginx on 127.0.0.1, both started here.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"
local cli = require "support.cli"

local py, ngx, tls, tls_dir
local BIG = 10 * 1024 * 1024

local pattern = netfix.pattern

-- Local on purpose: errors name the script frame that called atom, and
-- these specs check that it is the spec file's own line.
local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

local run = atom.run

setup(function()
  py = netfix.python()
  local port = run(function() return atom.free_port() end)
  ngx = netfix.nginx(port, { ["big.bin"] = pattern(BIG) })
  local cert, key, dir = netfix.selfsigned()
  if cert then
    tls_dir = dir
    tls = netfix.python(("--tls '%s' '%s'"):format(cert, key))
  end
  run(function() atom.wait_port("127.0.0.1", port, 5) end)
end)

teardown(function()
  if py then py.stop() end
  if ngx then ngx.stop() end
  if tls then tls.stop() end
  if tls_dir then os.execute("rm -rf '" .. tls_dir .. "'") end
end)

describe("atom.http responses", function()
  it("gives status, body, lower-case headers and duration", function()
    run(function()
      local r = atom.http.get(ngx.url .. "/q?i=7")
      assert.equal(200, r.status)
      assert.equal("7", r.body)
      assert.equal("text/plain", r.headers["content-type"])
      assert.equal("1", r.headers["content-length"])
      assert.is_nil(r.headers["Content-Type"])
      assert.is_true(r.duration > 0 and r.duration < 5)
    end)
  end)

  it("joins repeated headers with ', ' and trims values", function()
    run(function()
      local r = atom.http.get(ngx.url .. "/headers")
      assert.equal("one, two", r.headers["x-multi"])
      assert.equal("Value", r.headers["x-mixed-case"])
      r = atom.http.get(py.url .. "/headers")
      assert.equal("a=1, b=2", r.headers["set-cookie"])
      assert.equal("padded", r.headers["x-spaces"])
    end)
  end)

  it("treats any HTTP status as a response", function()
    run(function()
      local r = atom.http.get(ngx.url .. "/teapot")
      assert.equal(418, r.status)
      assert.equal("short and stout", r.body)
      assert.equal(404, atom.http.get(ngx.url .. "/nothing-here").status)
      assert.equal(503, atom.http.get(py.url .. "/status?code=503").status)
    end)
  end)

  it("does not follow redirects unless follow = true", function()
    run(function()
      local r = atom.http.get(ngx.url .. "/redirect")
      assert.equal(302, r.status)
      assert.matches("/q%?i=redirected$", r.headers.location)
      r = atom.http.get(ngx.url .. "/redirect", { follow = true })
      assert.equal(200, r.status)
      assert.equal("redirected", r.body)
      -- The headers are those of the last response.
      assert.is_nil(r.headers.location)
    end)
  end)

  it("decodes JSON bodies with resp:json() and quotes bad ones", function()
    run(function()
      local r = atom.http.post(ngx.url .. "/rpc", "{}")
      assert.same({ jsonrpc = "2.0", id = 1, result = "ok" }, r:json())
      r = atom.http.get(ngx.url .. "/teapot")
      local err = err_of(r.json, r)
      assert.equal("json", err.kind)
      assert.matches('"short and stout"', err.message, 1, true)
    end)
  end)
end)

describe("atom.http requests", function()
  it("posts a string as is and a table as JSON", function()
    run(function()
      local r = atom.http.post(py.url .. "/echo", "raw body")
      assert.equal("raw body", r.body)
      assert.equal("POST", r.headers["x-method"])
      assert.equal("", r.headers["x-content-type"])
      r = atom.http.post(py.url .. "/echo", { a = 1, list = atom.json.array({}) })
      assert.equal("application/json", r.headers["x-content-type"])
      assert.same({ a = 1, list = {} }, r:json())
    end)
  end)

  it("never asks for 100 Continue, below or above curl's threshold", function()
    run(function()
      -- Below 1 KiB atomlua leaves the "Expect:" header out (curl adds none);
      -- above, it suppresses curl's (which would wait up to 1 s for it).
      for _, n in ipairs { 10, 1023, 1024, 2 * 1024 * 1024 + 1 } do
        local body = ("x"):rep(n)
        for _, r in ipairs { atom.http.post(py.url .. "/echo", body),
                             atom.http.post(py.url .. "/echo", { s = body }) } do
          assert.equal(200, r.status)
          assert.equal("", r.headers["x-expect"], n)
          assert.truthy(tonumber(r.headers["x-length"]) >= n, n)
        end
      end
    end)
  end)

  it("keeps a content type the caller gave with json", function()
    run(function()
      local r = atom.http.request{ method = "PUT", url = py.url .. "/echo", json = { 1, 2 },
        headers = { ["Content-Type"] = "application/x-custom", ["X-Test"] = 42 } }
      assert.equal("PUT", r.headers["x-method"])
      assert.equal("application/x-custom", r.headers["x-content-type"])
      assert.equal("42", r.headers["x-header-test"])
      assert.equal("[1,2]", r.body)
    end)
  end)

  it("sends any method, with or without a body", function()
    run(function()
      for _, m in ipairs{ "GET", "DELETE", "PATCH", "PUT", "OPTIONS" } do
        local r = atom.http.request{ method = m, url = py.url .. "/echo" }
        assert.equal(m, r.headers["x-method"])
        assert.equal("0", r.headers["x-length"])
      end
      local r = atom.http.request{ method = "DELETE", url = py.url .. "/echo", body = "gone" }
      assert.equal("DELETE", r.headers["x-method"])
      assert.equal("gone", r.body)
      r = atom.http.request{ method = "HEAD", url = py.url .. "/hello" }
      assert.equal(200, r.status)
      assert.equal("", r.body)
      assert.equal("5", r.headers["content-length"])
    end)
  end)

  it("sets its own User-Agent unless given", function()
    run(function()
      local r = atom.http.get(py.url .. "/echo")
      assert.matches("^atomlua/", r.headers["x-user-agent"])
      r = atom.http.get(py.url .. "/echo", { headers = { ["User-Agent"] = "me" } })
      assert.equal("me", r.headers["x-user-agent"])
    end)
  end)

  it("moves 10 MB bodies both ways", function()
    local big = pattern(BIG)
    run(function()
      local r = atom.http.get(ngx.url .. "/files/big.bin")
      assert.equal(200, r.status)
      assert.equal(BIG, #r.body)
      assert.is_true(r.body == big)
      r = atom.http.post(py.url .. "/echo", big)
      assert.equal(tostring(BIG), r.headers["x-length"])
      assert.is_true(r.body == big)
      r = atom.http.post(ngx.url .. "/upload", big)
      assert.equal(tostring(BIG), r.body)
    end)
  end)

  it("answers 2,000 requests from 64 tasks at once, each its own", function()
    run(function()
      local fns = {}
      for w = 1, 64 do
        fns[w] = function()
          local bad = 0
          for j = 1, 2000 // 64 + 1 do
            local i = (w - 1) * 32 + j
            if i <= 2000 then
              local r = atom.http.get(ngx.url .. "/q?i=" .. i)
              if r.status ~= 200 or r.body ~= tostring(i) then bad = bad + 1 end
            end
          end
          return bad
        end
      end
      local res = atom.gather(fns)
      for w = 1, 64 do assert.equal(0, res[w]) end
    end)
  end)

  it("reuses connections", function()
    run(function()
      atom.http.post(py.url .. "/stats/reset", "")
      for _ = 1, 20 do assert.equal("hello", atom.http.get(py.url .. "/hello").body) end
      local st = atom.http.get(py.url .. "/stats"):json()
      assert.equal(1, st.connections)
      -- Four tasks at a time need no more than four connections.
      atom.http.post(py.url .. "/stats/reset", "")
      atom.gather(function() for _ = 1, 10 do atom.http.get(py.url .. "/hello") end end,
                  function() for _ = 1, 10 do atom.http.get(py.url .. "/hello") end end,
                  function() for _ = 1, 10 do atom.http.get(py.url .. "/hello") end end,
                  function() for _ = 1, 10 do atom.http.get(py.url .. "/hello") end end)
      st = atom.http.get(py.url .. "/stats"):json()
      assert.is_true(st.connections <= 4, "connections: " .. st.connections)
    end)
  end)

  it("uses a proxy only when asked (environment proxies are ignored)", function()
    run(function()
      -- server.py answers proxy-style requests for any host by their path.
      local r = atom.http.get("http://proxied.invalid/hello", { proxy = py.url })
      assert.equal("hello", r.body)
    end)
    local out = netfix.child(([[
      atom.run(function() io.write(atom.http.get(%q).body) end)
    ]]):format(ngx.url .. "/q?i=direct"), { http_proxy = "http://127.0.0.1:1", HTTP_PROXY = "http://127.0.0.1:1",
      https_proxy = "http://127.0.0.1:1", ALL_PROXY = "http://127.0.0.1:1" })
    local body = out:read("a")
    assert.is_true(out:close())
    assert.equal("direct", body)
  end)

  it("verifies TLS unless insecure = true", function()
    if not tls then return pending("openssl not available") end
    run(function()
      local url = "https://localhost:" .. tls.port .. "/hello"
      local err = err_of(atom.http.get, url)
      assert.equal("http", err.kind)
      assert.equal("tls", err.cause)
      assert.equal("hello", atom.http.get(url, { insecure = true }).body)
    end)
  end)
end)

describe("atom.http errors", function()
  it("raises http with cause refused, dns, eof and reset, naming the URL", function()
    run(function()
      local port = atom.free_port()
      local url = "http://127.0.0.1:" .. port .. "/x"
      local err = err_of(atom.http.get, url)
      assert.equal("http", err.kind)
      assert.equal("refused", err.cause)
      assert.equal(url, err.url)
      assert.equal("GET", err.method)
      assert.matches("GET " .. url, err.message, 1, true)
      assert.matches("^[^:]*http_spec.lua:%d+: ", tostring(err))
      assert.equal("main", err.task)
      err = err_of(atom.http.get, "http://no-such-host.invalid/")
      assert.equal("dns", err.cause)
      assert.equal("eof", err_of(atom.http.get, py.url .. "/close_now").cause)
      assert.equal("eof", err_of(atom.http.get, py.url .. "/eof_mid").cause)
      assert.equal("reset", err_of(atom.http.get, py.url .. "/reset_now").cause)
      assert.equal("reset", err_of(atom.http.get, py.url .. "/reset_mid").cause)
      -- Still fine afterwards.
      assert.equal("hello", atom.http.get(py.url .. "/hello").body)
    end)
  end)

  it("raises cause protocol for a reply that is not HTTP or breaks chunking", function()
    run(function()
      local err = err_of(atom.http.get, py.url .. "/malformed")
      assert.equal("http", err.kind)
      assert.equal("protocol", err.cause)
      err = err_of(atom.http.get, py.url .. "/bad_chunk")
      assert.equal("http", err.kind)
      assert.equal("protocol", err.cause)
      -- An unknown scheme stays a usage error.
      assert.equal("usage", err_of(atom.http.get, "nosuch://127.0.0.1/").kind)
    end)
  end)

  it("reports running out of descriptors as cause resources (ulimit -n 64)", function()
    local path = cli.scenario(([[
atom.test("emfile", function()
  pcall(atom.http.get, "%s/close_now") -- libcurl loaded, no connection kept
  local held = {}
  while true do -- use every descriptor
    local f = io.open("/dev/null")
    if not f then break end
    held[#held + 1] = f
  end
  local ok, err = pcall(atom.http.get, "%s/hello", 10)
  for _, f in ipairs(held) do f:close() end
  print("cause " .. tostring(not ok and err.cause))
end)
]]):format(py.url, py.url))
    local workdir = (os.getenv("TMPDIR") or "/tmp") .. "/emfile-runs" -- not in the tree
    local pf = io.popen(("ulimit -n 64 && %s run --workdir %s %s 2>&1; echo rc=$?"):format(
      cli.q(cli.bin), cli.q(workdir), cli.q(path)))
    local out = pf:read("a")
    pf:close()
    os.remove(path)
    os.execute("rm -rf " .. cli.q(workdir))
    assert.matches("cause resources", out, 1, true)
    assert.matches("rc=0", out, 1, true)
  end)

  it("raises too_large for a body over max_body, aborting the transfer early", function()
    run(function()
      -- 2 GiB announced by Content-Length: over the default 256 MiB, refused at once.
      local url = py.url .. "/huge?n=" .. (2 << 30) .. "&id=cl"
      local err = err_of(atom.http.get, url, 30)
      assert.equal("http", err.kind)
      assert.equal("too_large", err.cause)
      assert.matches("GET " .. url .. ": response body larger than 268435456 bytes", err.message, 1, true)
      -- Chunked, no length known: stopped once max_body is passed.
      url = py.url .. "/huge?n=" .. (2 << 30) .. "&id=chunked&chunked=1"
      err = err_of(atom.http.get, url, { max_body = 1 << 20, timeout = 30 })
      assert.equal("too_large", err.cause)
      assert.matches("response body larger than 1048576 bytes", err.message, 1, true)
      local sent = atom.json.decode(atom.http.get(py.url .. "/sent?id=chunked").body).sent
      assert.is_true(sent < 64 << 20, "server sent " .. sent)
      -- A body of exactly max_body passes.
      local r = atom.http.request { url = py.url .. "/huge?n=1000&chunked=1", max_body = 1000 }
      assert.equal(("x"):rep(1000), r.body)
      assert.equal("too_large", err_of(atom.http.get, py.url .. "/big?n=1001", { max_body = 1000 }).cause)
      assert.matches("field 'max_body' must be a non-negative integer",
        err_of(atom.http.get, py.url, { max_body = -1 }).message, 1, true)
    end)
  end)

  it("raises timeout naming the request", function()
    run(function()
      local url = py.url .. "/slow?secs=2"
      local t0 = atom.now()
      local err = err_of(atom.http.get, url, 0.2)
      assert.equal("timeout", err.kind)
      assert.equal("GET " .. url .. " timed out after 0.2s", err.message)
      assert.is_true(atom.now() - t0 < 1)
      err = err_of(atom.http.request, { method = "POST", url = url, timeout = 0.1 })
      assert.equal("POST " .. url .. " timed out after 0.1s", err.message)
    end)
  end)

  it("raises usage for bad arguments, naming the function", function()
    run(function()
      local e = err_of(atom.http.get, 42)
      assert.equal("usage", e.kind)
      assert.matches("bad argument #1 to 'get'", e.message, 1, true)
      e = err_of(atom.http.get, "not a url")
      assert.matches("bad argument #1 to 'get' (invalid URL", e.message, 1, true)
      e = err_of(atom.http.post, py.url, 5)
      assert.matches("bad argument #2 to 'post'", e.message, 1, true)
      e = err_of(atom.http.request, { url = py.url, body = "x", json = {} })
      assert.equal("usage", e.kind)
      e = err_of(atom.http.request, { url = py.url, header = {} })
      assert.matches("unknown field 'header'", e.message, 1, true)
      e = err_of(atom.http.request, { url = py.url, headers = { X = {} } })
      assert.matches("bad argument #1 to 'request'", e.message, 1, true)
      e = err_of(atom.http.get, py.url, -1)
      assert.equal("usage", e.kind)
    end)
  end)

  it("raises usage when called outside a task", function()
    local e = err_of(atom.http.get, py.url .. "/hello")
    assert.equal("usage", e.kind)
  end)
end)

describe("atom.http cancellation", function()
  it("closes the connection at once when the task is cancelled", function()
    run(function()
      local t = atom.go(function() atom.http.get(py.url .. "/hang?id=c1") end)
      atom.sleep(0.2)
      t:cancel()
      assert.equal("cancelled", err_of(t.join, t).kind)
      -- The server notices within 100 ms.
      local st = atom.http.get(py.url .. "/closed?id=c1&wait=0.1"):json()
      assert.is_true(st.closed)
    end)
  end)

  it("closes it on timeout too, and nothing completes into the dead task", function()
    run(function()
      local err = err_of(atom.timeout, 0.2, atom.http.get, py.url .. "/hang?id=c2")
      assert.equal("timeout", err.kind)
      assert.is_true(atom.http.get(py.url .. "/closed?id=c2&wait=0.1"):json().closed)
      -- Many aborted requests, then the multi handle still works.
      local fns = {}
      for i = 1, 20 do fns[i] = function() atom.http.get(py.url .. "/slow?secs=0.3") end end
      assert.equal("timeout", err_of(atom.timeout, 0.1, atom.gather, fns).kind)
      atom.sleep(0.4)
      assert.equal("hello", atom.http.get(py.url .. "/hello").body)
    end)
  end)
end)

describe("http events", function()
  it("reports each request with method, url, status, duration and error", function()
    local events = require "atom.events"
    local seen = {}
    events.subscribe(function(ev) if ev.type == "http" then seen[#seen + 1] = ev end end)
    local ok, err = pcall(run, function()
      atom.http.get(ngx.url .. "/teapot")
      pcall(atom.http.get, "http://127.0.0.1:" .. atom.free_port() .. "/")
    end)
    events.unsubscribe_all()
    assert(ok, tostring(err))
    assert.equal(2, #seen)
    assert.equal("GET", seen[1].method)
    assert.equal(ngx.url .. "/teapot", seen[1].url)
    assert.equal(418, seen[1].status)
    assert.is_true(seen[1].duration > 0)
    assert.is_nil(seen[1].error)
    assert.is_nil(seen[2].status)
    assert.equal("http", seen[2].error.kind)
    assert.equal("refused", seen[2].error.cause)
  end)
end)
