#!/usr/bin/env bash
# bench/callgrind.sh - CPU instructions per proxied request, switchyard vs nginx.
#
# Wall-clock numbers on a shared 2-core machine drift; instruction counts under
# `valgrind --tool=callgrind` do not, so this is the yardstick for hot-path work. Each
# proxy runs under callgrind twice, for N1 and N2 keep-alive requests (h2load --h1, 16
# connections, GET /api/products/1 through the same routes as bench/peers.sh); the
# difference over N2-N1 requests is instructions per request, start-up excluded. Counts
# are user space only (the proxy plus libc); the kernel's share is not in them.
#
#   bench/callgrind.sh                 # both proxies, about a minute
#   PEERS=switchyard bench/callgrind.sh
#   LOADS="a h" PEERS=switchyard bench/callgrind.sh   # h: every request carries a sticky cookie
#   CG_KEEP=/tmp/cg bench/callgrind.sh                  # keep the profiles for callgrind_annotate
# Loads as in bench/peers.sh: a = GET /api/products/1 (pool product); h = GET /api/carts/1
# (pool cart, sticky by cookie `sy`; nginx: hash $cookie_sy consistent) with a cookie the
# proxy under test minted.
# Needs valgrind, h2load (nghttp2-client), nginx, curl. Everything on 127.0.0.1; every
# process it starts is stopped by PID.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N1=${N1:-2000}
N2=${N2:-12000}
PEERS=${PEERS:-"switchyard nginx"}
LOADS=${LOADS:-a}
BIN=$REPO/target/release/switchyard
[[ -x $BIN ]] || (cd "$REPO" && cargo build --release --quiet)
for tool in valgrind h2load curl; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }; done

WORK=$(mktemp -d /tmp/sy-callgrind.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Backends: the shipped echo backend on the six ports of the bench config.
for port in 19001 19002 19003 19004 19005 19006; do
  "$BIN" echo --listen "127.0.0.1:$port" --name "b$port" 2>/dev/null &
  PIDS+=($!)
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$WORK/key.pem" \
  -out "$WORK/cert.pem" -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
sed -e "s|@CERT@|$WORK/cert.pem|; s|@KEY@|$WORK/key.pem|; s|@WORKDIR@|$WORK|" \
  "$REPO/bench/switchyard-bench.yaml" >"$WORK/switchyard.yaml"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes 1; master_process off; daemon off; pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;
  access_log off; keepalive_requests 100000000;
  upstream product { server 127.0.0.1:19003; server 127.0.0.1:19004; keepalive 64; }
  upstream cart { hash \$cookie_sy consistent; server 127.0.0.1:19003; server 127.0.0.1:19004; keepalive 64; }
  proxy_http_version 1.1; proxy_set_header Connection "";
  server { listen 127.0.0.1:18080; location /api/products { proxy_pass http://product; } location /api/carts { proxy_pass http://cart; } location / { return 404; } }
}
NGINX

run() { # $1 peer, $2 requests, $3 load -> total instructions
  rm -f "$WORK"/cg.out.*
  case $1 in
    switchyard) RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out.%p" \
                  "$BIN" --config "$WORK/switchyard.yaml" >/dev/null 2>"$WORK/vg.err" & ;;
    nginx) valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out.%p" \
             nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >/dev/null 2>"$WORK/vg.err" & ;;
  esac
  local pid=$!
  for _ in $(seq 1 300); do curl -s -o /dev/null http://127.0.0.1:18080/api/products/1 && break; sleep 0.1; done
  local url=http://127.0.0.1:18080/api/products/1 args=()
  if [[ $3 == h ]]; then
    url=http://127.0.0.1:18080/api/carts/1
    local c; c=$(curl -s -D - -o /dev/null "$url" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: *\(sy=[^;]*\).*/\1/p' | head -1)
    args=(-H "Cookie: ${c:-sy=bench-user-1}")
  fi
  h2load --h1 -n "$2" -c 16 "${args[@]}" "$url" >"$WORK/h2load.out" 2>&1
  grep -q "$2 succeeded" "$WORK/h2load.out" || { cat "$WORK/h2load.out" >&2; exit 1; }
  case $1 in switchyard) kill -INT "$pid" ;; nginx) kill -QUIT "$pid" ;; esac
  wait "$pid" 2>/dev/null || true
  [[ -n ${CG_KEEP:-} ]] && { mkdir -p "$CG_KEEP"; cat "$WORK"/cg.out.* >"$CG_KEEP/callgrind.$1.$3.$2"; }
  awk '/^totals:/ {s += $2} END {print s}' "$WORK"/cg.out.*
}

echo "| load | proxy | instructions per request (user space) |"
echo "|---|---|---:|"
for load in $LOADS; do
  for peer in $PEERS; do
    a=$(run "$peer" "$N1" "$load"); b=$(run "$peer" "$N2" "$load")
    echo "| $load | $peer | $(( (b - a) / (N2 - N1) )) |"
  done
done
