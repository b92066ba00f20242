-- wrk -s script for W5's limit: the same JSON-RPC POST the clients send.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"status"}'
