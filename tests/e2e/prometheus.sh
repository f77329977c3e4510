#!/usr/bin/env bash
# End-to-end: a real Prometheus scrapes a real Switchyard.
# Starts an echo backend and the proxy (with its admin listener) on free loopback ports,
# sends a known number of requests with curl, runs `promtool check metrics` on a live
# scrape, then starts Prometheus (Debian's `prometheus`, on loopback, scraping the admin
# listener every second, storage in a temp dir) and asserts through its HTTP API that `up`
# is 1, that the request counter equals what was sent, and that a p99 query over the
# duration histogram returns a number. Bounded: every wait has a deadline, every process
# started here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${SWITCHYARD_BIN:-target/debug/switchyard}
[[ -x $BIN ]] || cargo build --quiet
for tool in prometheus promtool curl python3; do
  command -v $tool >/dev/null || { echo "e2e prometheus: needs $tool" >&2; exit 1; }
done
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
  echo "e2e prometheus: FAIL: $*" >&2
  for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done
  exit 1
}
# Free loopback ports: bound and released by the kernel's choice.
read -r BACKEND PROXY ADMIN PROM < <(python3 -c '
import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
wait_for() { # $1 = url, $2 = what
  for _ in $(seq 1 100); do
    curl -fsS -m 1 -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "$2 not up at $1 after 10s"
}

"$BIN" echo --listen "127.0.0.1:$BACKEND" --name b1 >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/routes.yaml" <<YAML
listeners: [{name: web, bind: "127.0.0.1:$PROXY"}]
admin: {bind: "127.0.0.1:$ADMIN"}
access_log: off
pools:
  shop: {backends: [{addr: "127.0.0.1:$BACKEND"}]}
routes:
  - {name: api, match: {prefix: /api}, pool: shop}
YAML
"$BIN" --config "$WORK/routes.yaml" --workers 2 >"$WORK/proxy.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$ADMIN/ready" "switchyard"

SENT=57
for i in $(seq 1 $SENT); do
  [[ $(curl -sS -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROXY/api/items/$i") == 200 ]] \
    || fail "request $i"
done
curl -sS -m 5 "http://127.0.0.1:$ADMIN/metrics" >"$WORK/scrape.txt"
promtool check metrics <"$WORK/scrape.txt" >"$WORK/promtool.log" 2>&1 || fail "promtool check metrics: $(cat "$WORK/promtool.log")"

cat >"$WORK/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: switchyard
    static_configs: [{targets: ["127.0.0.1:$ADMIN"]}]
YAML
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$PROM/-/ready" "prometheus"

query() { # $1 = PromQL -> the first result's value, or empty
  curl -sS -m 5 -G "http://127.0.0.1:$PROM/api/v1/query" --data-urlencode "query=$1" \
    | python3 -c 'import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "")'
}
until_value() { # $1 = PromQL, $2 = expected (or "number"), $3 = what
  local v=""
  for _ in $(seq 1 60); do
    v=$(query "$1")
    if [[ $2 == number ]]; then
      python3 -c "import math, sys; v = float(sys.argv[1]); sys.exit(0 if not math.isnan(v) else 1)" "$v" 2>/dev/null && return 0
    elif [[ $v == "$2" ]]; then return 0; fi
    sleep 0.5
  done
  fail "$3: $1 is '$v', expected $2"
}
until_value 'up{job="switchyard"}' 1 "the scrape"
until_value 'sum(switchyard_http_requests_total{route="api",pool="shop",status="200"})' "$SENT" "the request count"
# Two scrapes at least, then traffic in between, so rate() over the histogram has points.
for i in $(seq 1 20); do curl -sS -m 5 -o /dev/null "http://127.0.0.1:$PROXY/api/again/$i"; sleep 0.1; done
until_value 'histogram_quantile(0.99, sum by (le) (rate(switchyard_http_request_duration_seconds_bucket{route="api"}[30s])))' number "p99"
until_value 'switchyard_backend_up{pool="shop"}' 1 "backend_up"
echo "e2e prometheus: ok"
