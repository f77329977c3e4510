#!/usr/bin/env bash
# bench/peers.sh - Switchyard vs nginx vs HAProxy (vs Caddy when installed), same job.
#
# Copied from the team's shared peers.sh and adapted to this repository: switchyard is a
# peer by default (built with `cargo build --release` when the binary is missing or older
# than the sources), its config is bench/switchyard-bench.yaml (TLS session resumption off
# like the other peers, so load d measures full handshakes), Caddy is only used when
# installed, and the report also lands in bench/results.md. Run from anywhere:
#
#   bench/peers.sh                      # ~8 minutes: 3 reps x 5 loads x 3 peers + ceiling
#   REPS=1 LOADS="a e" bench/peers.sh   # a quick look
#
# Everything stays on 127.0.0.1. Every load run has a fixed length. Every process this
# script starts is stopped by its PID (an EXIT/INT/TERM trap covers aborts).
#
# Topology (2-core box):
#   CPU 0 (PROXY_CPU)  : the proxy under test, 1 worker (nginx worker_processes 1,
#                        haproxy nbthread 1, caddy GOMAXPROCS=1)
#   CPU 1 (CLIENT_CPU) : load generator (wrk / h2load) + backend (one nginx, 1 worker,
#                        listening on 127.0.0.1:19001-19006, returns a fixed 100-byte body)
#   "no-proxy" ceiling : wrk on CPU 1 straight at the backend, backend moved to CPU 0.
#
# Proxy job (identical for every peer):
#   listen 127.0.0.1:18080 (HTTP/1.1) and 127.0.0.1:18443 (TLS, self-signed ECDSA P-256,
#   ALPN h2,http/1.1); pools payment(19001,19002) product(19003,19004) user(19005,19006);
#   route by path prefix /api/payments /api/products /api/users, anything else -> 404;
#   round robin; keep-alive to upstreams, at most UPSTREAM_IDLE=64 idle connections kept
#   per pool (nginx: upstream keepalive 64; HAProxy: http-reuse always + pool-max-conn 32
#   per server; Caddy: max_idle_conns_per_host 32); access logs off;
#   unlimited requests per client keep-alive connection; TLS 1.2+1.3;
#   TLS session resumption OFF by default (so load d measures full handshakes).
#
# Loads (each: WARMUP s discarded run, then DURATION s measured run):
#   a  wrk HTTP/1.1 keep-alive, 64 conns, 1 thread       GET /api/products/1 on :18080
#   b  same, 256 conns
#   c  wrk HTTPS keep-alive, 64 conns                     on :18443
#   d  wrk HTTPS, 64 conns, "Connection: close" -> one new TLS connection per request
#   e  h2load HTTP/2 over TLS, -c 32 -m 10 (only if the peer negotiates h2)
#   f  wrk HTTP/1.1 keep-alive POST, 1 KiB JSON body, 64 conns  POST /api/payments/charge (opt-in)
#   g  wrk HTTP/1.1 keep-alive GET, 16 KiB JSON response, 64 conns  GET /api/products/page (opt-in)
#   h  load a with a valid sticky cookie on every request, to a sticky pool     GET /api/carts/1 (opt-in)
#      pool cart (19003,19004): switchyard `sticky: {cookie: sy}`, HAProxy `cookie SY insert indirect
#      nocache`, nginx `hash $cookie_sy consistent`, Caddy `cookie` policy. Before each run the
#      harness makes one request and takes the cookie the proxy sets (nginx sets none: sy=bench-user-1);
#      wrk sends it with -H "Cookie: ...". Compare h with a: the price of stickiness per request.
#   r  load a while the proxy reloads its config every RELOAD_EVERY=1 s (SIGHUP; Switchyard only,
#      the other peers' rows say n/a). Compare r with a: the price of reloading under load.
#
# Usage:
#   bench/peers.sh                   # markdown table on stdout, progress on stderr
#   SWITCHYARD_CMD='target/release/switchyard --config {config}' bench/peers.sh
#       {config} is replaced with the rendered bench/switchyard-bench.yaml (placeholders
#       @CERT@ @KEY@ @WORKDIR@ filled in); without {config}, " --config <file>" is appended.
#       The rendered path is also exported as SWITCHYARD_BENCH_CONFIG.
#
# Tunables (env): REPS=3 DURATION=5 WARMUP=2 LOADS="a b c d e" PEERS="nginx haproxy caddy"
#   CEILING=1 (no-proxy reference for loads a,b)  PROXY_CPU=0 CLIENT_CPU=1
#   TLS_RESUMPTION=off|on  UPSTREAM_IDLE=64  OUT_MD=file  OUT_CSV=file  KEEP_TMP=0|1
#   SWITCHYARD_NAME=switchyard  SWITCHYARD_TEMPLATE=<dir of this script>/switchyard-bench.yaml
#   SWITCHYARD_ALT_CMD='...' SWITCHYARD_ALT_NAME=switchyard-alt: a second Switchyard peer on the same
#     config (another build, e.g. without the request metrics), measured in the same run
#   OTHER_CPU_MAX=7 RETRIES=2 MAX_TOTAL_RETRIES=8: a run during which processes outside the
#   benchmark used more than OTHER_CPU_MAX % of the two cores (e.g. a build in another
#   session) is redone with a fresh proxy, at most RETRIES times per run and
#   MAX_TOTAL_RETRIES per script; the least disturbed attempt is kept (note "noisy" if all were).
# Default run: 3 reps x (5 loads x 3 peers + 2 ceiling loads) = 51 runs x ~7.4 s = ~6.3 min,
# plus at most 8 redone runs (~1.4 min) on a busy machine. With SWITCHYARD_CMD: 66 runs, ~8.2 min
# (+ redos); DURATION=4 or PEERS="nginx haproxy" brings that back under 8 min.
#
# Output: markdown on stdout (environment, table, notes); per-run progress on stderr; raw CSV in
# the temp dir (OUT_CSV=file keeps it). Columns: median req/s, per-rep paired ratio vs nginx,
# min-max spread, p50/p99, proxy CPU us per request, per-core busy %, new TCP connections per
# request (upstream churn), RSS/HWM of the proxy after the run, errors + non-2xx.

set -euo pipefail
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
LOADS=${LOADS:-"a b c d e"}
if command -v caddy >/dev/null; then PEERS=${PEERS:-"nginx haproxy caddy"}; else PEERS=${PEERS:-"nginx haproxy"}; fi
CEILING=${CEILING:-1}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
TLS_RESUMPTION=${TLS_RESUMPTION:-off}
UPSTREAM_IDLE=${UPSTREAM_IDLE:-64}   # idle keep-alive connections kept per pool (nginx "keepalive 64")
OTHER_CPU_MAX=${OTHER_CPU_MAX:-7}    # % of both cores used by foreign processes during a run -> redo it
RETRIES=${RETRIES:-2}                # redos per run
MAX_TOTAL_RETRIES=${MAX_TOTAL_RETRIES:-8}
KEEP_TMP=${KEEP_TMP:-0}
OUT_MD=${OUT_MD:-}
OUT_CSV=${OUT_CSV:-}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${SWITCHYARD_CMD:-} ]]; then
  if [[ ! -x $REPO/target/release/switchyard ]] \
     || [[ -n $(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$REPO/target/release/switchyard" -print -quit) ]]; then
    printf 'building switchyard (cargo build --release)...\n' >&2
    (cd "$REPO" && cargo build --release --quiet) || { echo "build failed" >&2; exit 1; }
  fi
  SWITCHYARD_CMD="$REPO/target/release/switchyard --config {config}"
fi
OUT_MD=${OUT_MD:-$REPO/bench/results.md}
SWITCHYARD_NAME=${SWITCHYARD_NAME:-switchyard}
SWITCHYARD_ALT_CMD=${SWITCHYARD_ALT_CMD:-}
SWITCHYARD_ALT_NAME=${SWITCHYARD_ALT_NAME:-switchyard-alt}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ORIG_PWD=$PWD   # SWITCHYARD_CMD, OUT_MD and OUT_CSV are taken relative to this
[[ -z $OUT_MD || $OUT_MD == /* ]] || OUT_MD=$ORIG_PWD/$OUT_MD
[[ -z $OUT_CSV || $OUT_CSV == /* ]] || OUT_CSV=$ORIG_PWD/$OUT_CSV
SWITCHYARD_TEMPLATE=${SWITCHYARD_TEMPLATE:-$SCRIPT_DIR/switchyard-bench.yaml}

HTTP_PORT=18080
TLS_PORT=18443
BACKEND_PORTS=(19001 19002 19003 19004 19005 19006)
BODY_LEN=100
PATH_UNDER_TEST=/api/products/1
STICKY_PATH=/api/carts/1          # load h: pool cart, sticky
STICKY_COOKIE=""                  # load h: the cookie wrk sends, minted per proxy process
RELOAD_EVERY=${RELOAD_EVERY:-1}   # load r: seconds between SIGHUPs

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------- process control
BACKEND_PID=""
PROXY_PID=""
LOAD_PID=""
WORK=""

descendants() { # all descendant PIDs of $1 (children first listed after parent)
  local c
  for c in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$c"
    descendants "$c"
  done
}

is_alive() { # true if PID exists and is not a zombie
  local st
  st=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z ]]
}

stop_tree() { # stop PID $1 and everything below it, by PID only
  local pid=$1 kids p i
  [[ -n $pid ]] || return 0
  if ! is_alive "$pid"; then wait "$pid" 2>/dev/null || true; return 0; fi
  kids=$(descendants "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do is_alive "$pid" || break; sleep 0.1; done
  if is_alive "$pid"; then
    log "PID $pid ignored SIGTERM for 5s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  for i in $(seq 1 20); do
    local left=""
    for p in $kids; do is_alive "$p" && left+=" $p"; done
    [[ -z $left ]] && break
    sleep 0.1
  done
  for p in $kids; do
    if is_alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $LOAD_PID ]] && stop_tree "$LOAD_PID"
  [[ -n $PROXY_PID ]] && stop_tree "$PROXY_PID"
  [[ -n $BACKEND_PID ]] && stop_tree "$BACKEND_PID"
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- dependencies
ensure_deps() {
  local missing=() pkgs=()
  command -v nginx >/dev/null || pkgs+=(nginx)
  command -v haproxy >/dev/null || pkgs+=(haproxy)
  command -v wrk >/dev/null || pkgs+=(wrk)
  command -v h2load >/dev/null || pkgs+=(nghttp2-client)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  command -v pgrep >/dev/null || pkgs+=(procps)
  command -v ss >/dev/null || pkgs+=(iproute2)
  command -v timeout >/dev/null || pkgs+=(coreutils)
  if [[ " $PEERS " == *" caddy "* ]] && ! command -v caddy >/dev/null; then pkgs+=(caddy); fi
  ((${#pkgs[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing packages (${pkgs[*]}) and not root"
  log "installing: ${pkgs[*]}"
  # keep apt from starting the packaged system services
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || log "apt-get update failed"
  local p
  for p in "${pkgs[@]}"; do
    if ! apt-get install -y -qq --no-install-recommends "$p" >&2; then
      if [[ $p == caddy ]]; then log "caddy not installable: skipping caddy"; else missing+=("$p"); fi
    fi
  done
  [[ $made_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  # the Debian packages enable their system services on install; this harness never uses them
  local svc
  for svc in nginx haproxy caddy; do
    [[ " ${pkgs[*]} " == *" $svc "* ]] || continue
    systemctl disable "$svc" >/dev/null 2>&1 || rm -f "/etc/systemd/system/multi-user.target.wants/$svc.service"
  done
  ((${#missing[@]} == 0)) || die "could not install: ${missing[*]}"
}

# ---------------------------------------------------------------- configs
port_in_use() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

make_body() { # fixed-length JSON body, $server_port is filled in by nginx (always 5 digits)
  local head='{"backend":"127.0.0.1:$server_port","ok":true,"pad":"' tail='"}' var='$server_port'
  local rendered_len=$(( ${#head} - ${#var} + 5 + ${#tail} ))
  local pad_len=$(( BODY_LEN - rendered_len ))
  local pad; pad=$(printf '%*s' "$pad_len" '' | tr ' ' 'x')
  printf '%s%s%s' "$head" "$pad" "$tail"
}

nginx_temp_paths() { # $1 = dir
  cat <<EOF
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
EOF
}

write_configs() {
  local d p
  mkdir -p "$WORK"/{backend,nginx,haproxy,caddy/xdg,switchyard,runs}

  # --- TLS: self-signed ECDSA P-256
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
  cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/haproxy/cert+key.pem"
  CERT=$WORK/cert.pem KEY=$WORK/key.pem

  # --- loads f and g: a 1 KiB JSON request body, a 16 KiB JSON response
  python3 - "$WORK/backend/page.json" "$WORK/post.lua" <<'PYEOF'
import json, sys
def sized(obj, n):  # JSON text of exactly n bytes: obj plus a padding field
    obj["pad"] = ""
    obj["pad"] = "x" * (n - len(json.dumps(obj)))
    return json.dumps(obj)
items = [{"id": i, "name": "product %05d" % i, "price": 1999} for i in range(250)]
open(sys.argv[1], "w").write(sized({"items": items}, 16384))
body = sized({"order": "o-1", "amount": 1999, "currency": "EUR"}, 1024)
open(sys.argv[2], "w").write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[%s]]\n' % body)
PYEOF
  chmod a+rx "$WORK" "$WORK/backend"; chmod a+r "$WORK/backend/page.json"   # nginx workers run as nobody

  # --- backend: one nginx, 1 worker, 6 ports
  d=$WORK/backend
  {
    echo "worker_processes 1;"
    echo "daemon off;"
    echo "pid $d/nginx.pid;"
    echo "error_log $d/error.log warn;"
    echo "worker_rlimit_nofile $NOFILE;"
    echo "events { worker_connections $WCONN; }"
    echo "http {"
    nginx_temp_paths "$d"
    echo "  access_log off;"
    echo "  keepalive_requests 100000000;"
    echo "  keepalive_timeout 300s;"
    echo "  default_type application/json;"
    echo "  server {"
    for p in "${BACKEND_PORTS[@]}"; do echo "    listen 127.0.0.1:$p;"; done
    echo "    location = /api/products/page { alias $d/page.json; }"
    echo "    location / { return 200 '$(make_body)'; }"
    echo "  }"
    echo "}"
  } >"$d/nginx.conf"

  # --- nginx as the proxy under test
  local ng_res
  if [[ $TLS_RESUMPTION == on ]]; then
    ng_res="ssl_session_cache shared:SSL:10m; ssl_session_tickets on;"
  else
    ng_res="ssl_session_cache off; ssl_session_tickets off;"
  fi
  d=$WORK/nginx
  cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $WCONN; }
http {
$(nginx_temp_paths "$d")
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  upstream payment { server 127.0.0.1:19001; server 127.0.0.1:19002; keepalive $UPSTREAM_IDLE; keepalive_requests 100000000; keepalive_timeout 300s; }
  upstream product { server 127.0.0.1:19003; server 127.0.0.1:19004; keepalive $UPSTREAM_IDLE; keepalive_requests 100000000; keepalive_timeout 300s; }
  upstream user    { server 127.0.0.1:19005; server 127.0.0.1:19006; keepalive $UPSTREAM_IDLE; keepalive_requests 100000000; keepalive_timeout 300s; }
  upstream cart    { hash \$cookie_sy consistent; server 127.0.0.1:19003; server 127.0.0.1:19004; keepalive $UPSTREAM_IDLE; keepalive_requests 100000000; keepalive_timeout 300s; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {
    listen 127.0.0.1:$HTTP_PORT;
    listen 127.0.0.1:$TLS_PORT ssl http2;
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    $ng_res
    location /api/payments { proxy_pass http://payment; }
    location /api/products { proxy_pass http://product; }
    location /api/users    { proxy_pass http://user; }
    location /api/carts    { proxy_pass http://cart; }
    location / { return 404; }
  }
}
EOF

  # --- HAProxy
  local hp_res hp_cache
  if [[ $TLS_RESUMPTION == on ]]; then hp_res=""; hp_cache=""; else hp_res=" no-tls-tickets"; hp_cache="  tune.ssl.cachesize 0"; fi
  d=$WORK/haproxy
  cat >"$d/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $HAPROXY_MAXCONN
  pidfile $d/haproxy.pid
  ssl-default-bind-options ssl-min-ver TLSv1.2
$hp_cache

defaults
  mode http
  maxconn $HAPROXY_MAXCONN
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  timeout http-request 30s
  default-server pool-max-conn $(( (UPSTREAM_IDLE + 1) / 2 ))

frontend fe
  bind 127.0.0.1:$HTTP_PORT
  bind 127.0.0.1:$TLS_PORT ssl crt $d/cert+key.pem alpn h2,http/1.1$hp_res
  use_backend payment if { path_beg /api/payments }
  use_backend product if { path_beg /api/products }
  use_backend user    if { path_beg /api/users }
  use_backend cart    if { path_beg /api/carts }
  default_backend notfound

backend payment
  balance roundrobin
  http-reuse always
  server s1 127.0.0.1:19001
  server s2 127.0.0.1:19002

backend product
  balance roundrobin
  http-reuse always
  server s1 127.0.0.1:19003
  server s2 127.0.0.1:19004

backend user
  balance roundrobin
  http-reuse always
  server s1 127.0.0.1:19005
  server s2 127.0.0.1:19006

backend cart
  # load h sends every request to one server (one cookie): it may keep the pool's whole idle cap
  balance roundrobin
  cookie SY insert indirect nocache
  http-reuse always
  server s1 127.0.0.1:19003 cookie s1 pool-max-conn $UPSTREAM_IDLE
  server s2 127.0.0.1:19004 cookie s2 pool-max-conn $UPSTREAM_IDLE

backend notfound
  http-request return status 404
EOF

  # --- Caddy (native JSON; no admin endpoint, no automatic HTTPS, no access log)
  d=$WORK/caddy
  local routes="" pool pfx
  for pool in "payments 19001 19002" "products 19003 19004" "users 19005 19006"; do
    set -- $pool
    routes+='{"match":[{"path":["/api/'$1'*"]}],"terminal":true,"handle":[{"handler":"reverse_proxy",'
    routes+='"upstreams":[{"dial":"127.0.0.1:'$2'"},{"dial":"127.0.0.1:'$3'"}],'
    routes+='"load_balancing":{"selection_policy":{"policy":"round_robin"}},'
    routes+='"transport":{"protocol":"http","keep_alive":{"idle_timeout":300000000000,"max_idle_conns_per_host":'$(( (UPSTREAM_IDLE + 1) / 2 ))'}}}]},'
  done
  routes+='{"match":[{"path":["/api/carts*"]}],"terminal":true,"handle":[{"handler":"reverse_proxy",'
  routes+='"upstreams":[{"dial":"127.0.0.1:19003"},{"dial":"127.0.0.1:19004"}],'
  routes+='"load_balancing":{"selection_policy":{"policy":"cookie","name":"sy"}},'
  routes+='"transport":{"protocol":"http","keep_alive":{"idle_timeout":300000000000,"max_idle_conns_per_host":'$UPSTREAM_IDLE'}}}]},'
  routes+='{"terminal":true,"handle":[{"handler":"static_response","status_code":404}]}'
  local tickets=true; [[ $TLS_RESUMPTION == on ]] && tickets=false
  cat >"$d/caddy.json" <<EOF
{
  "admin": {"disabled": true, "config": {"persist": false}},
  "logging": {"logs": {"default": {"level": "WARN"}}},
  "apps": {
    "tls": {
      "certificates": {"load_files": [{"certificate": "$CERT", "key": "$KEY", "tags": ["bench"]}]},
      "session_tickets": {"disabled": $tickets}
    },
    "http": {
      "servers": {
        "plain": {"listen": ["127.0.0.1:$HTTP_PORT"], "automatic_https": {"disable": true}, "routes": [$routes]},
        "tls": {"listen": ["127.0.0.1:$TLS_PORT"], "automatic_https": {"disable": true},
                "protocols": ["h1", "h2"],
                "tls_connection_policies": [{"certificate_selection": {"any_tag": ["bench"]}}],
                "routes": [$routes]}
      }
    }
  }
}
EOF

  # --- extra proxy under test (template rendered with our paths)
  if [[ -n $SWITCHYARD_CMD ]]; then
    [[ -f $SWITCHYARD_TEMPLATE ]] || die "SWITCHYARD_CMD set but template $SWITCHYARD_TEMPLATE not found"
    sed -e "s|@CERT@|$CERT|g" -e "s|@KEY@|$KEY|g" -e "s|@WORKDIR@|$WORK/switchyard|g" \
      "$SWITCHYARD_TEMPLATE" >"$WORK/switchyard/switchyard-bench.yaml"
    export SWITCHYARD_BENCH_CONFIG=$WORK/switchyard/switchyard-bench.yaml
  fi
}

# ---------------------------------------------------------------- start / stop peers
wait_ready() { # $1=url, $2=seconds
  local i code
  for i in $(seq 1 $(( $2 * 10 ))); do
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}

start_backend() {
  nginx -p "$WORK/backend/" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -t >/dev/null 2>&1 \
    || { nginx -p "$WORK/backend/" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -t; die "backend config"; }
  taskset -c "$CLIENT_CPU" nginx -p "$WORK/backend/" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" \
    >"$WORK/backend/stdout.log" 2>&1 &
  BACKEND_PID=$!
  local p
  for p in "${BACKEND_PORTS[@]}"; do
    wait_ready "http://127.0.0.1:$p/" 10 || die "backend port $p not ready: $(tail -5 "$WORK/backend/error.log")"
  done
  local body; body=$(curl -s "http://127.0.0.1:19003/x")
  [[ ${#body} == "$BODY_LEN" ]] || die "backend body is ${#body} bytes, expected $BODY_LEN: $body"
  log "backend nginx PID $BACKEND_PID (allowed CPUs: $(awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$BACKEND_PID/status")), ports ${BACKEND_PORTS[0]}-${BACKEND_PORTS[5]}, body $BODY_LEN B"
}

pin_backend() { # move backend master+worker to CPU $1
  local p
  for p in $BACKEND_PID $(descendants "$BACKEND_PID"); do taskset -a -p -c "$1" "$p" >/dev/null; done
}

start_peer() { # $1 = peer name; sets PROXY_PID
  local peer=$1 d=$WORK/$1 port
  for port in $HTTP_PORT $TLS_PORT; do # a leftover or foreign listener would be measured instead of the peer
    if port_in_use "$port"; then log "127.0.0.1:$port is busy before starting $peer: $(ss -Htlnp "sport = :$port" | head -1)"; return 1; fi
  done
  case $peer in
    nginx)
      taskset -c "$PROXY_CPU" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log" >"$d/stdout.log" 2>&1 &
      PROXY_PID=$! ;;
    haproxy)
      taskset -c "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg" >"$d/stdout.log" 2>&1 &
      PROXY_PID=$! ;;
    caddy)
      HOME=$d/xdg XDG_DATA_HOME=$d/xdg XDG_CONFIG_HOME=$d/xdg GOMAXPROCS=1 \
        taskset -c "$PROXY_CPU" caddy run --config "$d/caddy.json" >"$d/stdout.log" 2>&1 &
      PROXY_PID=$! ;;
    "$SWITCHYARD_NAME"|"$SWITCHYARD_ALT_NAME")
      d=$WORK/switchyard
      local cmd=$SWITCHYARD_CMD
      [[ $peer == "$SWITCHYARD_ALT_NAME" ]] && cmd=$SWITCHYARD_ALT_CMD
      if [[ $cmd == *"{config}"* ]]; then cmd=${cmd//\{config\}/$SWITCHYARD_BENCH_CONFIG}
      else cmd+=" --config $SWITCHYARD_BENCH_CONFIG"; fi
      (cd "$ORIG_PWD" && RUST_LOG=${RUST_LOG:-warn} exec taskset -c "$PROXY_CPU" bash -c "exec $cmd") >"$d/stdout.log" 2>&1 &
      PROXY_PID=$! ;;
    *) die "unknown peer $peer" ;;
  esac
  if ! wait_ready "http://127.0.0.1:$HTTP_PORT$PATH_UNDER_TEST" 15 \
     || ! wait_ready "https://127.0.0.1:$TLS_PORT$PATH_UNDER_TEST" 5; then
    log "peer $peer did not become ready; last output:"
    tail -n 20 "$d/stdout.log" "$d/error.log" 2>/dev/null >&2 || true
    stop_tree "$PROXY_PID"; PROXY_PID=""
    return 1
  fi
}

stop_peer() { stop_tree "$PROXY_PID"; PROXY_PID=""; }

# ---------------------------------------------------------------- functional checks
declare -A H2_OK=() CHECKED=() RESUMES=()
check_peer() { # routing / round robin / 404 / TLS / h2 / resumption, once per peer
  local peer=$1 ok=1 spec pfx want got i b code v
  for spec in "payments 19001,19002" "products 19003,19004" "users 19005,19006"; do
    set -- $spec; pfx=$1; want=$2
    got=$(for i in 1 2 3 4; do curl -s "http://127.0.0.1:$HTTP_PORT/api/$pfx/$i"; echo; done \
          | sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' | sort -u | paste -sd, -)
    [[ $got == "$want" ]] || { log "CHECK $peer: /api/$pfx hit backends [$got], want [$want]"; ok=0; }
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/nope")
  [[ $code == 404 ]] || { log "CHECK $peer: /nope returned $code, want 404"; ok=0; }
  b=$(curl -sk "https://127.0.0.1:$TLS_PORT/api/users/1")
  [[ ${#b} == "$BODY_LEN" ]] || { log "CHECK $peer: https body '${b:0:60}' (${#b} B)"; ok=0; }
  v=$(curl -sk --http2 -o /dev/null -w '%{http_version}' "https://127.0.0.1:$TLS_PORT/api/users/1" || true)
  if [[ $v == 2 ]]; then H2_OK[$peer]=1; else H2_OK[$peer]=0; log "CHECK $peer: no h2 via ALPN (got HTTP/$v)"; fi
  # TLS session resumption actually on/off?
  local s=$WORK/runs/$peer.sess r
  rm -f "$s"
  printf 'GET /api/users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' \
    | timeout 5 openssl s_client -connect "127.0.0.1:$TLS_PORT" -sess_out "$s" -ign_eof >/dev/null 2>&1 || true
  if [[ -s $s ]]; then
    r=$(printf 'GET /api/users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' \
        | timeout 5 openssl s_client -connect "127.0.0.1:$TLS_PORT" -sess_in "$s" -ign_eof 2>/dev/null \
        | grep -E '^(Reused|New),' | head -1 | cut -d, -f1 || true)
  else r=New; fi
  RESUMES[$peer]=${r:-?}
  if [[ $TLS_RESUMPTION == off && ${RESUMES[$peer]} == Reused ]]; then
    log "CHECK $peer: TLS session was resumed although TLS_RESUMPTION=off (load d is then not full handshakes)"
  fi
  if [[ " $LOADS " == *" h "* ]]; then check_sticky "$peer" || ok=0; fi
  local cpus="" q
  for q in $PROXY_PID $(descendants "$PROXY_PID"); do
    cpus+=" $(awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$q/status" 2>/dev/null)"
  done
  cpus=$(echo $cpus | tr ' ' '\n' | sort -u | paste -sd' ' -)
  [[ $cpus == "$PROXY_CPU" ]] || log "CHECK $peer: proxy processes allowed on CPUs [$cpus], expected [$PROXY_CPU]"
  log "check $peer: routing/round-robin/404/tls $([[ $ok == 1 ]] && echo OK || echo FAILED), h2=${H2_OK[$peer]}, 2nd TLS handshake=${RESUMES[$peer]}, pinned to CPU [$cpus]"
  CHECKED[$peer]=$ok
}

# Load h: the sticky cookie the running proxy gives a new user of pool cart, as "name=value";
# nginx's `hash $cookie_sy` sets none, and any value is valid for it.
mint_cookie() {
  local c
  c=$(curl -s -D - -o /dev/null "http://127.0.0.1:$HTTP_PORT$STICKY_PATH" | tr -d '\r' \
      | sed -n 's/^[Ss]et-[Cc]ookie: *\(\(sy\|SY\)=[^;]*\).*/\1/p' | head -1)
  echo "${c:-sy=bench-user-1}"
}

check_sticky() { # $1 = peer: with the minted cookie, /api/carts always reaches one backend and gets no new cookie
  local peer=$1 c i got set
  c=$(mint_cookie)
  got=$(for i in 1 2 3 4; do curl -s -H "Cookie: $c" "http://127.0.0.1:$HTTP_PORT/api/carts/$i"; echo; done \
        | sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' | sort -u | paste -sd, -)
  set=$(curl -s -D - -o /dev/null -H "Cookie: $c" "http://127.0.0.1:$HTTP_PORT$STICKY_PATH" | tr -d '\r' | grep -ci '^set-cookie:' || true)
  if [[ $got != 1900[34] || $set != 0 ]]; then
    log "CHECK $peer: sticky /api/carts with '$c' hit backends [$got] (want one of 19003,19004), $set Set-Cookie (want 0)"
    return 1
  fi
  log "check $peer: sticky cookie '${c:0:24}...' keeps /api/carts on $got, no new Set-Cookie"
}

# ---------------------------------------------------------------- measurement helpers
cpu_snapshot() { # "cpu0busy cpu0total cpu1busy cpu1total stealsum"
  awk -v a="cpu$PROXY_CPU" -v b="cpu$CLIENT_CPU" '
    $1==a || $1==b { busy=$2+$3+$4+$7+$8; tot=$2+$3+$4+$5+$6+$7+$8+$9; st+=$9
                     if ($1==a) {ab=busy; at=tot} else {bb=busy; bt=tot} }
    END { print ab, at, bb, bt, st }' /proc/stat
}

self_ticks() { # CPU ticks of this script and all children it has reaped (wrk, curl, awk, ...)
  sed -e 's/^.*) //' "/proc/$$/stat" | awk '{print $12+$13+$14+$15}'
}

tcp_active_opens() { awk '$1=="Tcp:" && $6 ~ /^[0-9]+$/ {print $6}' /proc/net/snmp; }

tree_ticks() { # utime+stime (clock ticks) of PID $1 and its descendants
  local p t=0 v
  for p in $1 $(descendants "$1"); do
    v=$(sed -e 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}') || v=0
    t=$(( t + ${v:-0} ))
  done
  echo "$t"
}

tree_mem() { # "rss_kb hwm_kb" summed over PID $1 and its descendants
  local p r=0 h=0 a b
  for p in $1 $(descendants "$1"); do
    read -r a b < <(awk '/^VmRSS:/{r=$2} /^VmHWM:/{h=$2} END{print r+0, h+0}' "/proc/$p/status" 2>/dev/null || echo "0 0")
    r=$((r + a)); h=$((h + b))
  done
  echo "$r $h"
}

run_client() { # $1 = output file, rest = command; bounded by timeout, pinned to CLIENT_CPU
  local out=$1; shift
  timeout -k 3 $((DURATION + WARMUP + 30)) taskset -c "$CLIENT_CPU" "$@" >"$out" 2>&1 &
  LOAD_PID=$!
  wait "$LOAD_PID" || true
  LOAD_PID=""
}

parse_wrk() { # -> "rps p50ms p99ms requests errors non2xx"
  awk '
    function ms(v) { if (v ~ /us$/) return substr(v,1,length(v)-2)/1000
                     if (v ~ /ms$/) return substr(v,1,length(v)-2)+0
                     if (v ~ /m$/)  return substr(v,1,length(v)-1)*60000
                     if (v ~ /s$/)  return substr(v,1,length(v)-1)*1000
                     return v+0 }
    $1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)}
    /requests in/ {req=$1}
    /Socket errors/ {gsub(",",""); err=$4+$6+$8+$10}
    /Non-2xx/ {non=$NF}
    /^Requests\/sec/ {rps=$2}
    END { if (rps=="") rps="NA"; if (p50=="") p50="NA"; if (p99=="") p99="NA"
          printf "%s %s %s %d %d %d\n", rps, p50, p99, req, err, non }' "$1"
}

parse_h2load() { # $1 = output, $2 = per-request log -> "rps p50ms p99ms requests errors non2xx"
  local rps req err non p50 p99
  read -r rps req err non < <(awk '
    /^finished in/ {rps=$4}
    /^requests:/ {gsub(",",""); for (i=3;i<=NF;i++) { if ($i=="succeeded") req=$(i-1); if ($i=="failed"||$i=="errored"||$i=="timeout") err+=$(i-1) } }
    /^status codes:/ {gsub(",",""); non=$5+$7+$9}
    END { if (rps=="") rps="NA"; printf "%s %d %d %d\n", rps, req, err, non }' "$1")
  if [[ -s $2 ]]; then
    read -r p50 p99 < <(awk '{print $3}' "$2" | sort -n | awk '{v[NR]=$1}
      END { i50=int(NR*0.50); if (i50<NR*0.50) i50++; i99=int(NR*0.99); if (i99<NR*0.99) i99++
            if (NR==0) print "NA NA"; else printf "%.3f %.3f\n", v[i50]/1000, v[i99]/1000 }')
  else p50=NA p99=NA; fi
  echo "$rps $p50 $p99 $req $err $non"
}

CLIENT_ARGS=()
client_cmd() { # sets CLIENT_ARGS; $1 = load, $2 = duration (s), $3 = http base URL, $4 = https base URL, $5 = h2 log
  local load=$1 dur=$2 http=$3 https=$4
  case $load in
    a|r) CLIENT_ARGS=(wrk -t1 -c64 "-d${dur}s" --latency "$http$PATH_UNDER_TEST") ;;
    b) CLIENT_ARGS=(wrk -t1 -c256 "-d${dur}s" --latency "$http$PATH_UNDER_TEST") ;;
    c) CLIENT_ARGS=(wrk -t1 -c64 "-d${dur}s" --latency "$https$PATH_UNDER_TEST") ;;
    d) CLIENT_ARGS=(wrk -t1 -c64 "-d${dur}s" --latency -H "Connection: close" "$https$PATH_UNDER_TEST") ;;
    f) CLIENT_ARGS=(wrk -t1 -c64 "-d${dur}s" --latency -s "$WORK/post.lua" "${http}/api/payments/charge") ;;
    g) CLIENT_ARGS=(wrk -t1 -c64 "-d${dur}s" --latency "${http}/api/products/page") ;;
    h) CLIENT_ARGS=(wrk -t1 -c64 "-d${dur}s" --latency -H "Cookie: $STICKY_COOKIE" "$http$STICKY_PATH") ;;
    e) CLIENT_ARGS=(h2load -t1 -c32 -m10 -D "$dur")
       [[ -n ${5:-} ]] && CLIENT_ARGS+=("--log-file=$5")
       CLIENT_ARGS+=("$https$PATH_UNDER_TEST") ;;
  esac
}

CSV=""
RESULT_LINE="" RESULT_OTHER=0 RETRIES_USED=0
measure() { # $1 = rep, $2 = load, $3 = peer; redoes a run (fresh process) if other processes ate CPU meanwhile
  local try best_line="" best_other=1000000 worse
  for ((try = 0; try <= RETRIES; try++)); do
    measure_once "$@" "$try"
    worse=$(awk -v a="$RESULT_OTHER" -v b="$best_other" 'BEGIN { if (a + 0 < b + 0) print 0; else print 1 }')
    if [[ $worse == 0 ]]; then best_line=$RESULT_LINE; best_other=$RESULT_OTHER; fi
    awk -v o="$RESULT_OTHER" -v m="$OTHER_CPU_MAX" 'BEGIN { exit !(o + 0 > m + 0) }' || break
    if ((try == RETRIES || RETRIES_USED >= MAX_TOTAL_RETRIES)); then
      best_line=${best_line/,ok,/,noisy,}; break
    fi
    RETRIES_USED=$((RETRIES_USED + 1))
    log "  other processes used ${RESULT_OTHER}% CPU (> ${OTHER_CPU_MAX}%): redoing this run in 3s ($RETRIES_USED/$MAX_TOTAL_RETRIES retries used)"
    sleep 3
  done
  echo "$best_line" >>"$CSV"
}

measure_once() { # $1 = rep, $2 = load, $3 = peer ("no-proxy" = straight at the backend), $4 = attempt
  local rep=$1 load=$2 peer=$3 target_pid http https tag out h2log
  tag="r$rep-$load-$peer-$4"; out=$WORK/runs/$tag.out; h2log=""
  RESULT_OTHER=0
  if [[ $peer == no-proxy ]]; then
    pin_backend "$PROXY_CPU"
    target_pid=$BACKEND_PID
    http="http://127.0.0.1:19003"; https=""
  else
    if ! start_peer "$peer"; then
      RESULT_LINE="$rep,$load,$peer,NA,NA,NA,0,0,0,0,0,NA,NA,NA,NA,start-failed,NA,NA,NA"; return 0
    fi
    [[ -n ${CHECKED[$peer]:-} ]] || check_peer "$peer"
    if [[ $load == r && $peer != "$SWITCHYARD_NAME" ]]; then
      stop_peer; RESULT_LINE="$rep,$load,$peer,NA,NA,NA,0,0,0,0,0,NA,NA,NA,NA,reload-switchyard-only,NA,NA,NA"; return 0
    fi
    if [[ $load == e && ${H2_OK[$peer]} != 1 ]]; then
      stop_peer; RESULT_LINE="$rep,$load,$peer,NA,NA,NA,0,0,0,0,0,NA,NA,NA,NA,no-h2,NA,NA,NA"; return 0
    fi
    target_pid=$PROXY_PID
    http="http://127.0.0.1:$HTTP_PORT"; https="https://127.0.0.1:$TLS_PORT"
  fi
  [[ $load == e ]] && h2log=$WORK/runs/$tag.h2log
  [[ $load == h ]] && STICKY_COOKIE=$(mint_cookie)   # this process's cookie, before the warm-up

  # warm-up (discarded)
  local tw; tw=$(awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "tw") print $(i + 1) }' /proc/net/sockstat)
  client_cmd "$load" "$WARMUP" "$http" "$https" ""
  run_client "$WORK/runs/$tag.warmup" "${CLIENT_ARGS[@]}"
  # measured run
  local c0 t0 c1 t1 rss hwm o0 o1 k0=0 k1=0 s0 s1
  client_cmd "$load" "$DURATION" "$http" "$https" "$h2log"
  read -r -a c0 < <(cpu_snapshot); t0=$(tree_ticks "$target_pid"); o0=$(tcp_active_opens)
  [[ $target_pid != "$BACKEND_PID" ]] && k0=$(tree_ticks "$BACKEND_PID")
  s0=$(self_ticks)
  local reloader=""
  if [[ $load == r ]]; then   # bounded: at most one SIGHUP per second of the run, then it ends
    (for ((i = 0; i < DURATION; i++)); do sleep "$RELOAD_EVERY"; kill -HUP "$PROXY_PID" 2>/dev/null || break; done) &
    reloader=$!
  fi
  run_client "$out" "${CLIENT_ARGS[@]}"
  if [[ -n $reloader ]]; then kill "$reloader" 2>/dev/null || true; wait "$reloader" 2>/dev/null || true; fi
  read -r -a c1 < <(cpu_snapshot); t1=$(tree_ticks "$target_pid"); o1=$(tcp_active_opens)
  [[ $target_pid != "$BACKEND_PID" ]] && k1=$(tree_ticks "$BACKEND_PID")
  s1=$(self_ticks)
  read -r rss hwm < <(tree_mem "$target_pid")

  local rps p50 p99 req err non
  if [[ $load == e ]]; then read -r rps p50 p99 req err non < <(parse_h2load "$out" "$h2log"); rm -f "$h2log"
  else read -r rps p50 p99 req err non < <(parse_wrk "$out"); fi

  local hz cpu0 cpu1 steal usreq connsreq other
  hz=$(getconf CLK_TCK)
  read -r cpu0 cpu1 steal usreq connsreq other < <(awk -v a="${c0[*]}" -v b="${c1[*]}" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v req="$req" -v o0="$o0" -v o1="$o1" \
      -v k="$((k1 - k0))" -v me="$((s1 - s0))" '
    BEGIN { split(a,x," "); split(b,y," ")
            # CPU time on both cores not used by proxy, backend, load generator or this script
            ot = 0; if (y[2] + y[4] - x[2] - x[4] > 0)
              ot = 100 * ((y[1] + y[3] - x[1] - x[3]) - (t1 - t0) - k - me) / (y[2] + y[4] - x[2] - x[4])
            cr = "NA"; if (req + 0 > 0) cr = sprintf("%.4f", (o1 - o0) / req)
            d0=y[2]-x[2]; d1=y[4]-x[4]; ds=d0+d1
            u = "NA"; if (req + 0 > 0) u = sprintf("%.1f", (t1 - t0) * 1e6 / hz / req)
            c0 = 0; if (d0) c0 = 100 * (y[1] - x[1]) / d0
            c1 = 0; if (d1) c1 = 100 * (y[3] - x[3]) / d1
            st = 0; if (ds) st = 100 * (y[5] - x[5]) / ds
            printf "%.0f %.0f %.1f %s %s %.1f\n", c0, c1, st, u, cr, ot }')

  if [[ $peer == no-proxy ]]; then pin_backend "$CLIENT_CPU"; else stop_peer; fi
  local note=ok
  ((err > 0 || non > 0)) && note="errors"
  [[ $rps == NA ]] && note="no-result"
  [[ $peer != no-proxy && ${CHECKED[$peer]:-1} == 0 ]] && note="check-failed"
  RESULT_LINE="$rep,$load,$peer,$rps,$p50,$p99,$req,$err,$non,$rss,$hwm,$cpu0,$cpu1,$steal,$usreq,$note,$connsreq,$other,$tw"
  RESULT_OTHER=$other
  log "rep $rep load $load $(printf '%-10s' "$peer") $(printf '%9s' "$rps") req/s  p50 ${p50}ms p99 ${p99}ms  cpu$PROXY_CPU ${cpu0}% cpu$CLIENT_CPU ${cpu1}% steal ${steal}%  proxy ${usreq}us/req  conns/req $connsreq  other-cpu ${other}%  tw-at-start $tw  rss $((rss/1024))MiB  err $err non2xx $non"
}

# ---------------------------------------------------------------- report
median() { sort -g | awk '{v[NR]=$1} END { if (!NR) print "NA"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }
col() { # $1 load, $2 peer, $3 column number -> values (numeric only)
  awk -F, -v l="$1" -v p="$2" -v c="$3" '$2==l && $3==p && $c!="NA" && $c!="" {print $c}' "$CSV"
}
fmt() { awk -v v="$1" -v f="$2" -v d="${3:-1}" 'BEGIN { if (v=="NA"||v=="") print "n/a"; else printf f, v/d }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="NA"||b=="NA"||a==""||b==""||b==0) print "n/a"; else printf "%.2f", a/b }'; }

paired() { # $1 load, $2 peer, $3 CSV column -> "median min max" of per-rep ratios peer/nginx
  awk -F, -v l="$1" -v p="$2" -v c="$3" '
    NR > 1 && $2 == l && $c != "NA" && $c != "" { if ($3 == "nginx") n[$1] = $c; if ($3 == p) v[$1] = $c }
    END { for (r in v) if ((r in n) && n[r] > 0) print v[r] / n[r] }' "$CSV" \
  | sort -g | awk '{ x[NR] = $1 }
      END { if (!NR) { print "NA NA NA"; exit }
            m = (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2
            print m, x[1], x[NR] }'
}

across() { # $1 peer, $2 CSV column, $3 load (default h) -> "median min max" of per-rep ratios load $3 / load a of that peer
  awk -F, -v p="$1" -v c="$2" -v l="${3:-h}" '
    NR > 1 && $3 == p && $c != "NA" && $c != "" { if ($2 == "a") a[$1] = $c; if ($2 == l) h[$1] = $c }
    END { for (r in h) if ((r in a) && a[r] > 0) print h[r] / a[r] }' "$CSV" \
  | sort -g | awk '{ x[NR] = $1 }
      END { if (!NR) { print "NA NA NA"; exit }
            m = (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2
            print m, x[1], x[NR] }'
}

load_desc() {
  case $1 in
    a) echo "HTTP/1.1 keep-alive, wrk -t1 -c64, :$HTTP_PORT" ;;
    b) echo "HTTP/1.1 keep-alive, wrk -t1 -c256, :$HTTP_PORT" ;;
    c) echo "HTTPS (HTTP/1.1) keep-alive, wrk -t1 -c64, :$TLS_PORT" ;;
    d) echo "HTTPS, new TLS connection per request (wrk -t1 -c64 -H 'Connection: close'), :$TLS_PORT" ;;
    e) echo "HTTP/2 over TLS, h2load -t1 -c32 -m10, :$TLS_PORT" ;;
    f) echo "HTTP/1.1 keep-alive POST with a 1 KiB JSON body (Content-Length), wrk -t1 -c64, :$HTTP_PORT/api/payments/charge" ;;
    g) echo "HTTP/1.1 keep-alive GET of a 16 KiB JSON response, wrk -t1 -c64, :$HTTP_PORT/api/products/page" ;;
    r) echo "load a while $SWITCHYARD_NAME reloads its config (SIGHUP) every ${RELOAD_EVERY}s; other peers n/a" ;;
    h) echo "load a with a valid sticky cookie on every request (wrk -H 'Cookie: ...', minted per proxy process), sticky pool cart, :$HTTP_PORT$STICKY_PATH" ;;
  esac
}

report() {
  local load peer lo hi med spread p50 p99 us c0 c1 rss hwm err n cr all_peers busy star=0 rr rr_lo rr_hi pr ur ur_lo ur_hi
  echo "## Results ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "Median of $REPS runs per cell, each ${DURATION}s measured after a ${WARMUP}s warm-up, fresh proxy process per run;"
  echo "peers interleaved within each load (A B C, then B C A, ...). Proxy pinned to CPU $PROXY_CPU with 1 worker;"
  echo "wrk/h2load + backend nginx pinned to CPU $CLIENT_CPU. TLS session resumption: $TLS_RESUMPTION. Upstream idle keep-alive cap:"
  echo "$UPSTREAM_IDLE connections per pool. Path: GET $PATH_UNDER_TEST (pool product)."
  echo
  echo "Loads:"
  for load in $LOADS; do echo "- **$load**: $(load_desc "$load")"; done
  echo "- **no-proxy** row = wrk on CPU $CLIENT_CPU straight at a backend port (backend moved to CPU $PROXY_CPU): ceiling of this box."
  echo
  echo "| load | peer | req/s | req/s x nginx (range) | min-max req/s (spread) | p50 ms | p99 ms | p99 x nginx | proxy CPU us/req | CPU/req x nginx (range) | CPU$PROXY_CPU/CPU$CLIENT_CPU busy % | new TCP conns/req | RSS MiB | HWM MiB | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for load in $LOADS; do
    all_peers="$PEERS"
    [[ $CEILING == 1 && ($load == a || $load == b) ]] && all_peers="no-proxy $PEERS"
    for peer in $all_peers; do
      n=$(col "$load" "$peer" 4 | wc -l)
      if ((n == 0)); then
        local why; why=$(awk -F, -v l="$load" -v p="$peer" '$2==l && $3==p {print $16}' "$CSV" | sort -u | paste -sd/ -)
        echo "| $load | $peer | n/a (${why:-not run}) | | | | | | | | | | | | |"
        continue
      fi
      med=$(col "$load" "$peer" 4 | median)
      lo=$(col "$load" "$peer" 4 | sort -g | head -1); hi=$(col "$load" "$peer" 4 | sort -g | tail -1)
      spread=$(awk -v a="$lo" -v b="$hi" -v m="$med" 'BEGIN { s = 0; if (m) s = 100 * (b - a) / m; printf "%.1f%%", s }')
      p50=$(col "$load" "$peer" 5 | median); p99=$(col "$load" "$peer" 6 | median)
      us=$(col "$load" "$peer" 15 | median)
      c0=$(col "$load" "$peer" 12 | median); c1=$(col "$load" "$peer" 13 | median)
      cr=$(col "$load" "$peer" 17 | median)
      rss=$(col "$load" "$peer" 10 | median); hwm=$(col "$load" "$peer" 11 | sort -g | tail -1)
      err=$(awk -F, -v l="$load" -v p="$peer" '$2==l && $3==p {e+=$8+$9} END{print e+0}' "$CSV")
      busy="$(fmt "$c0" '%.0f')/$(fmt "$c1" '%.0f')"
      if [[ $peer != no-proxy ]] && awk -v c="$c1" 'BEGIN { exit !(c != "NA" && c >= 95) }'; then busy+="*"; star=1; fi
      local pname=$peer; [[ $peer == no-proxy ]] && pname="no-proxy (backend CPU)"
      if awk -F, -v l="$load" -v p="$peer" '$2 == l && $3 == p && $16 == "check-failed" {f = 1} END {exit !f}' "$CSV"; then
        pname+=" (FAILED routing check)"
      fi
      read -r rr rr_lo rr_hi < <(paired "$load" "$peer" 4)
      read -r pr _ _ < <(paired "$load" "$peer" 6)
      read -r ur ur_lo ur_hi < <(paired "$load" "$peer" 15)
      echo "| $load | $pname | $(fmt "$med" '%.0f') | $(fmt "$rr" '%.2f') ($(fmt "$rr_lo" '%.2f')-$(fmt "$rr_hi" '%.2f')) | $(fmt "$lo" '%.0f')-$(fmt "$hi" '%.0f') ($spread) | $(fmt "$p50" '%.2f') | $(fmt "$p99" '%.2f') | $(fmt "$pr" '%.2f') | $(fmt "$us" '%.1f') | $(fmt "$ur" '%.2f') ($(fmt "$ur_lo" '%.2f')-$(fmt "$ur_hi" '%.2f')) | $busy | $(fmt "$cr" '%.3f') | $(fmt "$rss" '%.0f' 1024) | $(fmt "$hwm" '%.0f' 1024) | $err |"
    done
  done
  echo
  local st stmax
  st=$(awk -F, 'NR > 1 && $14 != "NA" && $14 != "" {print $14}' "$CSV" | median)
  stmax=$(awk -F, 'NR > 1 && $14 != "NA" && $14 != "" {print $14}' "$CSV" | sort -g | tail -1)
  ((star)) && echo "\\* client core (CPU $CLIENT_CPU: load generator + backend) was >=95% busy: the proxy is not the only bottleneck in that cell, so req/s understates the proxy; compare *proxy CPU us/req* instead."
  echo "- x nginx = median over reps of (this peer / nginx in the same rep), range = min-max over reps; pairing runs that were"
  echo "  seconds apart cancels most of the machine's drift (req/s: higher is better; p99 and CPU/req: lower is better)."
  echo "- proxy CPU us/req = (user+sys) CPU time of the proxy's processes during the measured run / requests completed (clock-tick resolution, ~1%)."
  echo "- new TCP conns/req = kernel TCP ActiveOpens during the run / requests (client->proxy plus proxy->backend connects; ~0 means full keep-alive, ~1 in load d = one client connection per request, anything above that is upstream churn)."
  echo "- RSS = VmRSS right after the measured run, HWM = VmHWM (peak), both summed over the proxy's processes (nginx: master + worker)."
  echo "- Latency: wrk --latency percentiles; h2load per-request log for load e. In load d, wrk starts the clock when the request is written, so the TLS handshake is not in p50/p99."
  if [[ " $LOADS " == *" a "* && " $LOADS " == *" h "* ]]; then
    local hr hr_lo hr_hi hu hu_lo hu_hi line=""
    for peer in $PEERS; do
      read -r hr hr_lo hr_hi < <(across "$peer" 4)
      read -r hu hu_lo hu_hi < <(across "$peer" 15)
      line+=" $peer req/s $(fmt "$hr" '%.2f') ($(fmt "$hr_lo" '%.2f')-$(fmt "$hr_hi" '%.2f')), CPU/req $(fmt "$hu" '%.2f') ($(fmt "$hu_lo" '%.2f')-$(fmt "$hu_hi" '%.2f'));"
    done
    echo "- Stickiness (load h / load a of the same peer, median over reps (range)):${line%;}."
  fi
  if [[ " $LOADS " == *" a "* && " $LOADS " == *" r "* ]]; then
    local rr_ rr_lo_ rr_hi_ ru ru_lo ru_hi
    read -r rr_ rr_lo_ rr_hi_ < <(across "$SWITCHYARD_NAME" 4 r)
    read -r ru ru_lo ru_hi < <(across "$SWITCHYARD_NAME" 15 r)
    echo "- Reloading (load r / load a of $SWITCHYARD_NAME, a SIGHUP every ${RELOAD_EVERY}s, median over reps (range)): req/s $(fmt "$rr_" '%.2f') ($(fmt "$rr_lo_" '%.2f')-$(fmt "$rr_hi_" '%.2f')), CPU/req $(fmt "$ru" '%.2f') ($(fmt "$ru_lo" '%.2f')-$(fmt "$ru_hi" '%.2f'))."
  fi
  local ot otmax
  ot=$(awk -F, 'NR > 1 && $18 != "NA" && $18 != "" {print $18}' "$CSV" | median)
  otmax=$(awk -F, 'NR > 1 && $18 != "NA" && $18 != "" {print $18}' "$CSV" | sort -g | tail -1)
  echo "- CPU steal during measured runs: median ${st}%, max ${stmax}%. CPU used by anything other than proxy, backend and"
  echo "  load generator (estimate, +-5%): median ${ot}%, max ${otmax}% of both cores; $RETRIES_USED run(s) were redone because it exceeded ${OTHER_CPU_MAX}%,"
  echo "  $(awk -F, 'NR > 1 && $16 == "noisy"' "$CSV" | wc -l) kept run(s) are still above it (note=noisy in the raw CSV)$(awk -v m="$otmax" 'BEGIN { if (m != "" && m != "NA" && m > 10) print " - WARNING: something else was running during some runs (see raw CSV other_cpu_pct)" }')."
}

env_header() {
  echo "## Environment"
  echo
  echo "- host: $(nproc) CPUs, $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
  echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //')"
  echo "- $(haproxy -v 2>/dev/null | head -1 | sed 's/ - https.*//')"
  command -v caddy >/dev/null && echo "- caddy $(caddy version 2>/dev/null | head -1)"
  echo "- $(wrk -v 2>&1 | head -1 | sed 's/ Copyright.*//')"
  echo "- $(h2load --version 2>&1 | head -1)"
  echo "- $(openssl version)"
  [[ -n $SWITCHYARD_CMD ]] && echo "- $SWITCHYARD_NAME $(git -C "$REPO" describe --always --dirty 2>/dev/null): \`${SWITCHYARD_CMD#"$REPO"/}\`"
  [[ -n $SWITCHYARD_ALT_CMD ]] && echo "- $SWITCHYARD_ALT_NAME: \`${SWITCHYARD_ALT_CMD#"$REPO"/}\`"
  echo
}

# ---------------------------------------------------------------- main
main() {
  ensure_deps
  local p
  local peers_ok=""
  for p in $PEERS; do
    if [[ $p == caddy ]] && ! command -v caddy >/dev/null; then log "caddy missing: skipped"; continue; fi
    peers_ok+="$p "
  done
  [[ -n $SWITCHYARD_CMD ]] && peers_ok+="$SWITCHYARD_NAME "
  [[ -n $SWITCHYARD_ALT_CMD ]] && peers_ok+="$SWITCHYARD_ALT_NAME "
  PEERS=${peers_ok% }
  [[ " $PEERS " == *" nginx "* ]] || log "note: nginx not in PEERS, ratio columns will be n/a"

  for p in $HTTP_PORT $TLS_PORT "${BACKEND_PORTS[@]}"; do
    port_in_use "$p" && die "127.0.0.1:$p is already in use"
  done
  # as many fds as we may have (the hard limit may be low and not raisable, e.g. 20000 in containers)
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  NOFILE=$(ulimit -n); [[ $NOFILE == unlimited ]] && NOFILE=65536
  WCONN=$(( NOFILE / 2 )); ((WCONN > 16384)) && WCONN=16384
  HAPROXY_MAXCONN=$(( (NOFILE - 100) / 2 )); ((HAPROXY_MAXCONN > 16384)) && HAPROXY_MAXCONN=16384
  ((HAPROXY_MAXCONN >= 1024)) || die "open-file limit $NOFILE too low"

  WORK=$(mktemp -d /tmp/peers-bench.XXXXXX)
  cd "$WORK"   # anything written with a relative path lands in the temp dir
  CSV=$WORK/results.csv
  echo "rep,load,peer,rps,p50_ms,p99_ms,requests,errors,non2xx,rss_kb,hwm_kb,cpu_proxy_pct,cpu_client_pct,steal_pct,proxy_cpu_us_per_req,note,new_tcp_conns_per_req,other_cpu_pct,time_wait_at_start" >"$CSV"
  log "work dir $WORK; peers: $PEERS; loads: $LOADS; reps $REPS; ${WARMUP}s+${DURATION}s per run"
  write_configs
  nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -t 2>/dev/null || die "nginx proxy config invalid"
  haproxy -c -q -f "$WORK/haproxy/haproxy.cfg" || die "haproxy config invalid"
  start_backend

  local rep load i n
  local -a arr order
  for rep in $(seq 1 "$REPS"); do
    for load in $LOADS; do
      read -r -a arr <<<"$PEERS"; n=${#arr[@]}; order=()
      for ((i = 0; i < n; i++)); do order+=("${arr[$(( (i + rep - 1) % n ))]}"); done
      if [[ $CEILING == 1 && ($load == a || $load == b) ]]; then
        if ((rep % 2)); then order=(no-proxy "${order[@]}"); else order+=(no-proxy); fi
      fi
      for p in "${order[@]}"; do measure "$rep" "$load" "$p"; done
    done
  done

  stop_tree "$BACKEND_PID"; BACKEND_PID=""
  local md=$WORK/report.md
  { env_header; report; } >"$md"
  cat "$md"
  [[ -n $OUT_MD ]] && cp "$md" "$OUT_MD"
  [[ -n $OUT_CSV ]] && cp "$CSV" "$OUT_CSV"
  log "raw CSV: ${OUT_CSV:-$CSV (deleted on exit unless KEEP_TMP=1)}"
}

main "$@"
