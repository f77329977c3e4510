#!/usr/bin/env bash
# End-to-end: the demo from the README, driven by a real curl.
# Starts `switchyard demo` (the embedded routes.yaml: 127.0.0.1:8080, TLS on :8443 with a
# generated certificate, the L4 edge :7000 in front of the L7 inner :8081, admin :9901, echo
# backends on :9001-9007), checks routing,
# balancing, errors, HTTPS and HTTP/2, then stops it with SIGTERM and expects a clean exit.
# Bounded: every curl has a timeout; the whole run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${SWITCHYARD_BIN:-target/debug/switchyard}
[[ -x $BIN ]] || cargo build --quiet
LOG=$(mktemp -d)
"$BIN" demo >"$LOG/stdout" 2>"$LOG/stderr" &
PID=$!
cleanup() {
  if kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -rf "$LOG"
}
trap cleanup EXIT
fail() { echo "e2e demo: FAIL: $*" >&2; echo "--- stderr" >&2; cat "$LOG/stderr" >&2; exit 1; }

ready=0
for _ in $(seq 1 100); do
  if curl -fsS -m 1 http://127.0.0.1:9901/ready >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$PID" 2>/dev/null || fail "demo exited early"
  sleep 0.1
done
((ready)) || fail "demo not ready after 10s"

c() { curl -sS -m 5 "$@"; }
backend() { c -o /dev/null -D - "$@" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-backend" {print $2}'; }

seen=""
# The split cookie forces the product pool (it is a 90/10 canary split), then round robin.
for _ in 1 2 3 4; do seen+="$(backend -b sy_ab_products=product http://127.0.0.1:8080/api/products/1) "; done
[[ $seen == *product-1* && $seen == *product-2* ]] || fail "round robin over product: $seen"
[[ $(backend -b sy_ab_products=product_v2 http://127.0.0.1:8080/api/products/1) == product_v2-1 ]] || fail "forced canary"
# Stickiness from a real cookie jar: the second request goes where the first went, no new cookie.
jar=$(mktemp)
first=$(backend -c "$jar" -b "$jar" http://127.0.0.1:8080/api/payments/7)
grep -q sy_payment "$jar" || fail "no sticky cookie in the jar"
for _ in 1 2 3; do
  [[ $(backend -c "$jar" -b "$jar" http://127.0.0.1:8080/api/payments/7) == "$first" ]] || fail "sticky: left $first"
done
c -o /dev/null -D - -b "$jar" http://127.0.0.1:8080/api/payments/7 | grep -qi '^set-cookie' && fail "a valid token got a new cookie"
rm -f "$jar"
[[ $(backend http://127.0.0.1:8080/api/payments/7) == payment-* ]] || fail "payments route"
[[ $(backend http://127.0.0.1:8080/api/users/7) == user-* ]] || fail "users route"
[[ $(c -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/nope) == 404 ]] || fail "404"
[[ $(c -o /dev/null -w '%{http_code}' --path-as-is http://127.0.0.1:8080/api/../../x) == 400 ]] || fail "400"
body=$(c -H 'X-Forwarded-For: 10.1.1.1' http://127.0.0.1:8080/api/users/9?q=1)
[[ $body == *'"x-forwarded-for":"10.1.1.1, 127.0.0.1"'* ]] || fail "x-forwarded-for: $body"
[[ $body == *'"path":"/api/users/9?q=1"'* ]] || fail "path: $body"
# HTTP/1.0 and h2c prior knowledge from a real client
[[ $(c -0 -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/api/users/1) == 200 ]] || fail "HTTP/1.0"
[[ $(c --http2-prior-knowledge -o /dev/null -w '%{http_version} %{http_code}' http://127.0.0.1:8080/api/users/1) == "2 200" ]] || fail "h2c"
# TLS with the generated certificate: verified against it, HTTP/2 by ALPN, and HTTP/1.1
[[ -s certs/localhost.crt ]] || fail "demo did not generate certs/localhost.crt"
v=$(c --cacert certs/localhost.crt --http2 -o /dev/null -w '%{http_version} %{http_code}' https://localhost:8443/api/products/1)
[[ $v == "2 200" ]] || fail "https + h2: $v"
v=$(c --cacert certs/localhost.crt --http1.1 -o /dev/null -w '%{http_version} %{http_code}' https://localhost:8443/api/products/1)
[[ $v == "1.1 200" ]] || fail "https + http/1.1: $v"
body=$(c -k https://127.0.0.1:8443/api/users/1)
[[ $body == *'"x-forwarded-proto":"https"'* ]] || fail "x-forwarded-proto over TLS: $body"
grep -q '"route":"products"' "$LOG/stdout" || fail "no JSON access log line on stdout"
# The two tiers: L4 edge (:7000, PROXY v2 out) -> L7 inner (:8081, accept_proxy) -> pool user.
# The client connects from 127.0.0.2; that is the address the backend hears of.
body=$(c --interface 127.0.0.2 http://127.0.0.1:7000/api/users/1)
[[ $body == *'"x-forwarded-for":"127.0.0.2"'* ]] || fail "L4 -> L7 client address: $body"
[[ $(backend --interface 127.0.0.2 http://127.0.0.1:7000/api/users/1) == user-* ]] || fail "L4 -> L7 -> user pool"
# inner takes only connections that start with a PROXY header: curl's own is one (v1).
body=$(c --haproxy-protocol http://127.0.0.1:8081/api/users/1)
[[ $body == *'"x-forwarded-for":"127.0.0.1"'* ]] || fail "curl --haproxy-protocol to inner: $body"
c -o /dev/null http://127.0.0.1:8081/api/users/1 2>/dev/null && fail "inner answered without a PROXY header"

kill -TERM "$PID"
for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null && fail "still running 10s after SIGTERM"
wait "$PID" || fail "exit code $? after SIGTERM"
echo "e2e demo: ok"
