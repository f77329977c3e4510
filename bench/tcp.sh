#!/usr/bin/env bash
# bench/tcp.sh - L4 (TCP) proxying: Switchyard's tcp listener vs HAProxy `mode tcp` vs nginx
# `stream`, same job, one run.
#
#   bench/tcp.sh                                  # ~2 minutes: 3 reps x 3 peers
#   PEERS="haproxy nginx" REPS=1 bench/tcp.sh     # a quick look without switchyard
#   BULK_BYTES=67108864 DURATION=3 bench/tcp.sh   # a smoke test
#
# Everything stays on 127.0.0.1. Every load has a fixed length or count and runs under
# `timeout`. Every process this script starts is stopped by its PID (an EXIT trap covers aborts).
#
# Topology (2-core box; the same split as bench/peers.sh):
#   CPU 0 (PROXY_CPU)  : the proxy under test, one worker (switchyard `workers: 1`, haproxy
#                        nbthread 1, nginx worker_processes 1)
#   CPU 1 (CLIENT_CPU) : the load generator AND the echo backend (`examples/tcpload.rs`).
#                        There is no third core to give the echo one of its own, so the
#                        client core is usually the busier one: compare the proxy's CPU per
#                        connection / per GiB, not only conn/s and GiB/s.
#
# Proxy job (identical for every peer): listen 127.0.0.1:PROXY_PORT, forward every
# connection to one backend, the echo server on 127.0.0.1:<a free port>; round robin; no
# logging; half-close passed on (nginx needs `proxy_half_close on` for that, it is off by
# default); everything else at each proxy's defaults (buffer sizes included).
#
# Loads, per peer and repetition (a fresh proxy process each time):
#   conns  `tcpload conns`: CONCURRENCY=50 workers, each looping connect -> write 64 bytes ->
#          read 64 bytes back -> close, for DURATION=10 s (after a WARMUP=2 s run that is
#          discarded). Reports connections/s, p50/p99 of connect+echo, errors.
#   bulk   `tcpload bulk`: BULK_STREAMS=1 connection(s), each writing BULK_BYTES=1073741824
#          while reading the echo back, every byte compared, then a half-close (shutdown of
#          the client's write side) that must come back as EOF after the last byte.
# Before the first measured run of a peer, a functional check: 200 short connections and a
# 16 MiB two-stream bulk must succeed (bytes verified, EOF after the half-close).
#
# The proxy's CPU is utime+stime from /proc/PID/stat (the process and its descendants:
# nginx master + worker), read before and after each load: CPU us per connection and CPU ms
# per GiB (GiB sent by the client; each byte crosses the proxy twice, out and back).
# Clock ticks are 10 ms, so a 1 GiB bulk is resolved to a few %.
#
# Tunables (env): PEERS="switchyard haproxy nginx" REPS=3 DURATION=10 WARMUP=2
#   CONCURRENCY=50 BULK_BYTES=1073741824 BULK_STREAMS=1 PROXY_CPU=0 CLIENT_CPU=1
#   (a bulk much under 256 MiB takes a few clock ticks of proxy CPU: its CPU ms/GiB is noise)
#   PROXY_PORT=18100 REF=haproxy (ratios are to this peer, per repetition)
#   SWITCHYARD_CMD=target/release/switchyard (started as "$SWITCHYARD_CMD run --config FILE")
#   TCPLOAD=<path> (default: cargo build --release --example tcpload)
#   NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
#   OUT_MD=bench/results-tcp.md (OUT_MD= to write nothing)  KEEP_TMP=0|1
#   OTHER_CPU_MAX=7 RETRIES=2 MAX_TOTAL_RETRIES=6: a run during which other processes used
#   more than OTHER_CPU_MAX % of the two cores (a build in another session) is redone with a
#   fresh proxy, at most RETRIES times per run and MAX_TOTAL_RETRIES per script; the least
#   disturbed attempt is kept, and the table's "other CPU %" column shows what it was.
#   QUIET_WAIT=30: before each run, wait at most this many seconds for a second in which
#   both cores are less than 10 % busy.
# A peer whose binary is missing is skipped with a message; so is one that does not start
# or fails the functional check.
#
# Output: markdown on stdout (environment, table, notes), progress on stderr, the same
# markdown in OUT_MD, and per-run rows in the temp dir's runs.csv.

set -euo pipefail
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

PEERS=${PEERS:-"switchyard haproxy nginx"}
REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONCURRENCY=${CONCURRENCY:-50}
BULK_BYTES=${BULK_BYTES:-1073741824}
BULK_STREAMS=${BULK_STREAMS:-1}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PROXY_PORT=${PROXY_PORT:-18100}
REF=${REF:-haproxy}
KEEP_TMP=${KEEP_TMP:-0}
OTHER_CPU_MAX=${OTHER_CPU_MAX:-7}    # % of both cores used by other processes during a run -> redo it
RETRIES=${RETRIES:-2}                # redos per run (the least disturbed attempt is kept)
MAX_TOTAL_RETRIES=${MAX_TOTAL_RETRIES:-6}
QUIET_WAIT=${QUIET_WAIT:-30}         # before each run, wait at most this long for an idle second
NGINX_STREAM_MODULE=${NGINX_STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORIG_PWD=$PWD   # SWITCHYARD_CMD, TCPLOAD and OUT_MD are taken relative to this
SWITCHYARD_CMD=${SWITCHYARD_CMD:-$REPO/target/release/switchyard}
OUT_MD=${OUT_MD-$REPO/bench/results-tcp.md}
[[ -z $OUT_MD || $OUT_MD == /* ]] || OUT_MD=$ORIG_PWD/$OUT_MD
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------- process control
# (as in bench/peers.sh: every stop is by PID, children found through the PID tree)
ECHO_PID=""
PROXY_PID=""
LOAD_PID=""
WORK=""

descendants() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$c"
    descendants "$c"
  done
}

is_alive() { # PID exists and is not a zombie
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
  for p in $kids; do
    if is_alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n $LOAD_PID ]] && stop_tree "$LOAD_PID"
  [[ -n $PROXY_PID ]] && stop_tree "$PROXY_PID"
  [[ -n $ECHO_PID ]] && stop_tree "$ECHO_PID"
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ $KEEP_TMP == 1 || $rc != 0 ]]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
port_in_use() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

wait_port() { # $1 = port, $2 = tries (0.1 s apart), $3 = PID that must stay alive: until a TCP connect succeeds
  local i
  for ((i = 0; i < $2; i++)); do
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null && return 0
    [[ -z ${3:-} ]] || is_alive "$3" || return 1
    sleep 0.1
  done
  return 1
}

tree_ticks() { # utime+stime (clock ticks) of PID $1 and its descendants
  local p t=0 v
  for p in $1 $(descendants "$1"); do
    v=$(sed -e 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}') || v=0
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

self_ticks() { # this script plus the children it has reaped (tcpload runs, awk, ...)
  sed -e 's/^.*) //' "/proc/$$/stat" | awk '{print $12+$13+$14+$15}'
}

snapshot() { # one line of clock ticks: proxy, this script, echo, then busy and total of
  # PROXY_CPU and CLIENT_CPU from /proc/stat (busy = user+nice+system+irq+softirq)
  echo "$(tree_ticks "$PROXY_PID") $(self_ticks) $(tree_ticks "$ECHO_PID")" "$(awk -v a="cpu$PROXY_CPU" -v b="cpu$CLIENT_CPU" '
    $1 == a || $1 == b { v[$1] = ($2+$3+$4+$7+$8) " " ($2+$3+$4+$5+$6+$7+$8+$9) }
    END { print v[a], v[b] }' /proc/stat)"
}

kv() { # $1 = key, $2 = file: the value of key=value on tcpload's result line
  sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" "$2" | tail -1
}

run_load() { # $1 = output file, $2 = time limit (s), rest = tcpload arguments; pinned to CLIENT_CPU
  local out=$1 limit=$2; shift 2
  timeout -k 3 "$limit" taskset -c "$CLIENT_CPU" "$TCPLOAD" "$@" >"$out" 2>&1 &
  LOAD_PID=$!
  local rc=0
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=""
  return "$rc"
}

# ---------------------------------------------------------------- the load generator
if [[ -z ${TCPLOAD:-} ]]; then
  log "building tcpload (cargo build --release --example tcpload)..."
  (cd "$REPO" && cargo build --release --quiet --example tcpload) || die "tcpload build failed"
  TCPLOAD=${CARGO_TARGET_DIR:-$REPO/target}/release/examples/tcpload
  [[ $TCPLOAD == /* ]] || TCPLOAD=$REPO/$TCPLOAD
fi
[[ $TCPLOAD == /* ]] || TCPLOAD=$ORIG_PWD/$TCPLOAD
[[ -x $TCPLOAD ]] || die "no tcpload at $TCPLOAD"

# ---------------------------------------------------------------- which peers can run
sy_bin=${SWITCHYARD_CMD%% *}
[[ $sy_bin == /* ]] || sy_bin=$ORIG_PWD/$sy_bin
SKIPPED=()   # "peer: why", for the report
skip() { SKIPPED+=("$1: $2"); log "skipping $1: $2"; }
RUNNABLE=""
for peer in $PEERS; do
  case $peer in
    switchyard) if [[ -x $sy_bin ]]; then RUNNABLE+=" $peer"; else skip switchyard "no binary at $sy_bin (SWITCHYARD_CMD)"; fi ;;
    haproxy) if command -v haproxy >/dev/null; then RUNNABLE+=" $peer"; else skip haproxy "not installed"; fi ;;
    nginx)
      if ! command -v nginx >/dev/null; then skip nginx "not installed"
      elif [[ ! -f $NGINX_STREAM_MODULE ]]; then skip nginx "no stream module at $NGINX_STREAM_MODULE"
      else RUNNABLE+=" $peer"; fi ;;
    *) die "unknown peer $peer (switchyard, haproxy, nginx)" ;;
  esac
done
RUNNABLE=${RUNNABLE# }
[[ -n $RUNNABLE ]] || die "no peer to measure"
port_in_use "$PROXY_PORT" && die "127.0.0.1:$PROXY_PORT is already in use (PROXY_PORT)"

WORK=$(mktemp -d /tmp/switchyard-tcp.XXXXXX)
mkdir -p "$WORK"/{switchyard,haproxy,nginx,runs}
CSV=$WORK/runs.csv
echo "rep,peer,conns,errors,conn_per_s,p50_ms,p99_ms,conn_cpu_us,cpu0_busy,cpu1_busy,other_pct,gib_per_s,bulk_cpu_ms_per_gib" >"$CSV"

# ---------------------------------------------------------------- the echo backend (CPU 1)
taskset -c "$CLIENT_CPU" "$TCPLOAD" echo --bind 127.0.0.1:0 >"$WORK/echo.out" 2>"$WORK/echo.err" &
ECHO_PID=$!
for ((i = 0; i < 50; i++)); do [[ -s $WORK/echo.out ]] && break; sleep 0.1; done
ECHO_ADDR=$(head -1 "$WORK/echo.out")
ECHO_PORT=${ECHO_ADDR##*:}
[[ $ECHO_PORT =~ ^[0-9]+$ ]] || die "echo server printed no address: $(cat "$WORK/echo.err")"
wait_port "$ECHO_PORT" 50 "$ECHO_PID" || die "echo server on $ECHO_ADDR does not accept connections"
log "echo server PID $ECHO_PID on $ECHO_ADDR, CPU $CLIENT_CPU"

# ---------------------------------------------------------------- configs
cat >"$WORK/switchyard/switchyard.yaml" <<EOF
workers: 1
access_log: off
listeners:
  - name: tcp
    bind: "127.0.0.1:$PROXY_PORT"
    mode: tcp
    pool: echo
pools:
  echo:
    backends:
      - addr: "127.0.0.1:$ECHO_PORT"
EOF

cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  # haproxy raises its descriptor limit to about 2 x maxconn and refuses to start if it cannot
  maxconn 4096
  pidfile $WORK/haproxy/haproxy.pid

defaults
  mode tcp
  maxconn 4096
  timeout connect 5s
  timeout client 60s
  timeout server 60s

frontend fe
  bind 127.0.0.1:$PROXY_PORT
  default_backend echo

backend echo
  balance roundrobin
  server e1 127.0.0.1:$ECHO_PORT
EOF

cat >"$WORK/nginx/nginx.conf" <<EOF
load_module $NGINX_STREAM_MODULE;
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
stream {
  upstream echo { server 127.0.0.1:$ECHO_PORT; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    proxy_pass echo;
    # off by default: nginx would then end the whole session on the client's FIN and drop
    # the bytes still coming back (the bulk check fails without this)
    proxy_half_close on;
  }
}
EOF

# ---------------------------------------------------------------- start / check / stop a peer
start_peer() { # $1 = peer; sets PROXY_PID
  local peer=$1 d=$WORK/$1
  if port_in_use "$PROXY_PORT"; then log "127.0.0.1:$PROXY_PORT busy before starting $peer"; return 1; fi
  case $peer in
    switchyard)
      (cd "$ORIG_PWD" && RUST_LOG=${RUST_LOG:-warn} exec taskset -c "$PROXY_CPU" \
        bash -c "exec $SWITCHYARD_CMD run --config $d/switchyard.yaml") >"$d/stdout.log" 2>&1 &
      PROXY_PID=$! ;;
    haproxy)
      taskset -c "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg" >"$d/stdout.log" 2>&1 &
      PROXY_PID=$! ;;
    nginx)
      taskset -c "$PROXY_CPU" nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log" >"$d/stdout.log" 2>&1 &
      PROXY_PID=$! ;;
  esac
  if ! wait_port "$PROXY_PORT" 150 "$PROXY_PID" || ! is_alive "$PROXY_PID"; then
    log "peer $peer did not start listening on :$PROXY_PORT; last output:"
    tail -n 20 "$d/stdout.log" "$d/error.log" >&2 2>/dev/null || true
    stop_peer
    return 1
  fi
}

stop_peer() { stop_tree "$PROXY_PID"; PROXY_PID=""; }

pinned_cpus() { # CPUs the proxy's processes may run on
  local q cpus=""
  for q in $PROXY_PID $(descendants "$PROXY_PID"); do
    cpus+=" $(awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$q/status" 2>/dev/null)"
  done
  echo $cpus | tr ' ' '\n' | sort -u | paste -sd' ' -
}

declare -A CHECKED=()
check_peer() { # end to end through the proxy: short connections, and bulk with its half-close
  local peer=$1 f=$WORK/runs/check-$1 ok errors cpus
  run_load "$f.conns" 30 conns --addr "127.0.0.1:$PROXY_PORT" --concurrency 4 --duration 10 --max 200 || true
  ok=$(kv ok "$f.conns"); errors=$(kv errors "$f.conns")
  if [[ $ok != 200 || $errors != 0 ]]; then
    log "CHECK $peer: conns gave ok=${ok:-?} errors=${errors:-?} (want 200, 0): $(tail -2 "$f.conns")"
    return 1
  fi
  if ! run_load "$f.bulk" 60 bulk --addr "127.0.0.1:$PROXY_PORT" --bytes 8388608 --streams 2 --timeout 30; then
    log "CHECK $peer: bulk (2 x 8 MiB, half-close) failed: $(tail -1 "$f.bulk")"
    return 1
  fi
  cpus=$(pinned_cpus)
  [[ $cpus == "$PROXY_CPU" ]] || log "CHECK $peer: proxy processes allowed on CPUs [$cpus], expected [$PROXY_CPU]"
  log "check $peer: 200 short connections OK; 2 x 8 MiB echoed, verified, EOF after the half-close; pinned to CPU [$cpus]"
}

# ---------------------------------------------------------------- one measured repetition of a peer
ROW=""    # the last attempt's CSV row
OTHER=0   # and how much CPU other processes used meanwhile, in % of both cores

wait_quiet() { # before a run: wait (at most QUIET_WAIT s) for a second in which both cores are < 10 % busy
  local i a b
  for ((i = 0; i < QUIET_WAIT; i++)); do
    a=$(awk '$1 ~ /^cpu[0-9]/ { b += $2+$3+$4+$7+$8; t += $2+$3+$4+$5+$6+$7+$8+$9 } END { print b, t }' /proc/stat)
    sleep 1
    b=$(awk '$1 ~ /^cpu[0-9]/ { b += $2+$3+$4+$7+$8; t += $2+$3+$4+$5+$6+$7+$8+$9 } END { print b, t }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); exit !(100 * (y[1] - x[1]) < 10 * (y[2] - x[2] + 1)) }' && return 0
  done
  log "  the machine did not go quiet within ${QUIET_WAIT}s; running anyway"
}

attempt() { # $1 = rep, $2 = peer: fresh proxy, warm-up, conns, bulk -> ROW, OTHER
  local rep=$1 peer=$2 f=$WORK/runs/$2-$1
  wait_quiet
  if ! start_peer "$peer"; then
    CHECKED[$peer]=0; skip "$peer" "did not start listening ($(tail -n 1 "$WORK/$peer/stdout.log" 2>/dev/null))"; return 1
  fi
  if [[ -z ${CHECKED[$peer]:-} ]]; then
    if check_peer "$peer"; then CHECKED[$peer]=1; else CHECKED[$peer]=0; skip "$peer" "failed the functional check"; fi
  fi
  if [[ ${CHECKED[$peer]} != 1 ]]; then stop_peer; return 1; fi

  run_load "$f.warmup" $((WARMUP + 30)) conns --addr "127.0.0.1:$PROXY_PORT" \
    --concurrency "$CONCURRENCY" --duration "$WARMUP" || true

  local s0 s1 s2
  s0=$(snapshot)
  run_load "$f.conns" $((DURATION + 30)) conns --addr "127.0.0.1:$PROXY_PORT" \
    --concurrency "$CONCURRENCY" --duration "$DURATION" || log "  $peer conns exited non-zero: $(tail -1 "$f.conns")"
  s1=$(snapshot)
  local gib=NA
  if run_load "$f.bulk" 600 bulk --addr "127.0.0.1:$PROXY_PORT" --bytes "$BULK_BYTES" \
       --streams "$BULK_STREAMS" --timeout 300; then
    gib=$(kv gib_per_s "$f.bulk")
  else
    log "  $peer bulk FAILED: $(tail -1 "$f.bulk")"
  fi
  s2=$(snapshot)
  stop_peer

  local ok errors cps p50 p99 cpu_us busy0 busy1 cpu_gib
  ok=$(kv ok "$f.conns"); errors=$(kv errors "$f.conns"); cps=$(kv conn_per_s "$f.conns")
  p50=$(kv p50_ms "$f.conns"); p99=$(kv p99_ms "$f.conns")
  # conns: proxy CPU per connection and busy % per core; bulk: proxy CPU per GiB; "other" over
  # both loads: busy time of both cores not spent by the proxy, tcpload or this script
  read -r cpu_us busy0 busy1 cpu_gib OTHER < <(awk -v hz="$CLK_TCK" -v ok="${ok:-0}" -v gib="$gib" \
    -v s0="$s0" -v s1="$s1" -v s2="$s2" -v bytes="$((BULK_BYTES * BULK_STREAMS))" 'BEGIN {
      split(s0, x); split(s1, y); split(s2, z)
      # fields: 1 proxy, 2 self, 3 echo, 4 CPU0 busy, 5 CPU0 total, 6 CPU1 busy, 7 CPU1 total
      cu = ok > 0 ? sprintf("%.1f", (y[1] - x[1]) * 1e6 / hz / ok) : "NA"
      cg = gib == "NA" ? "NA" : sprintf("%.0f", (z[1] - y[1]) * 1000 / hz / (bytes / 1073741824))
      mine = (z[1] - x[1]) + (z[2] - x[2]) + (z[3] - x[3])
      tot = (z[5] - x[5]) + (z[7] - x[7]); o = tot > 0 ? 100 * ((z[4] - x[4]) + (z[6] - x[6]) - mine) / tot : 0
      printf "%s %.0f %.0f %s %.1f\n", cu, 100 * (y[4] - x[4]) / (y[5] - x[5] + 1e-9),
        100 * (y[6] - x[6]) / (y[7] - x[7] + 1e-9), cg, (o > 0 ? o : 0) }')
  log "  rep $rep $peer: ${cps:-NA} conn/s, p99 ${p99:-NA} ms, $cpu_us us CPU/conn, errors ${errors:-NA}, CPU0/1 busy $busy0/$busy1 %; bulk $gib GiB/s, $cpu_gib ms CPU/GiB; other processes $OTHER %"
  ROW="$rep,$peer,${ok:-0},${errors:-NA},${cps:-NA},${p50:-NA},${p99:-NA},$cpu_us,$busy0,$busy1,$OTHER,$gib,$cpu_gib"
}

RETRIES_USED=0
measure() { # $1 = rep, $2 = peer: an attempt, redone (fresh proxy) while other processes disturbed it
  local try best="" best_other=""
  for ((try = 0; try <= RETRIES; try++)); do
    attempt "$1" "$2" || return 1
    if [[ -z $best ]] || awk -v a="$OTHER" -v b="$best_other" 'BEGIN { exit !(a < b) }'; then
      best=$ROW; best_other=$OTHER
    fi
    awk -v a="$OTHER" -v m="$OTHER_CPU_MAX" 'BEGIN { exit !(a > m) }' || break
    ((try < RETRIES && RETRIES_USED < MAX_TOTAL_RETRIES)) || break
    RETRIES_USED=$((RETRIES_USED + 1))
    log "  other processes used $OTHER % CPU (> $OTHER_CPU_MAX %): redoing ($RETRIES_USED/$MAX_TOTAL_RETRIES retries used)"
  done
  echo "$best" >>"$CSV"
}

# ---------------------------------------------------------------- the run: peers interleaved, rotated each rep
read -ra order <<<"$RUNNABLE"
log "peers: ${order[*]}; $REPS rep(s); conns ${DURATION}s x $CONCURRENCY after ${WARMUP}s warm-up; bulk $BULK_STREAMS x $BULK_BYTES bytes"
for ((rep = 1; rep <= REPS; rep++)); do
  n=${#order[@]}
  for ((k = 0; k < n; k++)); do
    peer=${order[$(((k + rep - 1) % n))]}
    [[ ${CHECKED[$peer]:-1} == 1 ]] || continue
    measure "$rep" "$peer" || true
  done
done

# ---------------------------------------------------------------- report
median() { # $1 = peer, $2 = CSV column -> "median min max" over reps
  awk -F, -v p="$1" -v c="$2" 'NR > 1 && $2 == p && $c != "NA" && $c != "" { print $c }' "$CSV" | sort -g \
    | awk '{ x[NR] = $1 } END { if (!NR) { print "NA NA NA"; exit }
             m = (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2; print m, x[1], x[NR] }'
}

ratio() { # $1 = peer, $2 = column -> median over reps of (peer / REF in the same rep)
  awk -F, -v p="$1" -v r="$REF_PEER" -v c="$2" '
    NR > 1 && $c != "NA" && $c != "" { if ($2 == p) a[$1] = $c; if ($2 == r) b[$1] = $c }
    END { for (k in a) if ((k in b) && b[k] > 0) print a[k] / b[k] }' "$CSV" | sort -g \
    | awk '{ x[NR] = $1 } END { if (!NR) { print "NA"; exit }
             printf "%.2f", (NR % 2) ? x[(NR + 1) / 2] : (x[NR / 2] + x[NR / 2 + 1]) / 2 }'
}

measured=$(awk -F, 'NR > 1 { print $2 }' "$CSV" | awk '!seen[$0]++' | paste -sd' ' -)
[[ -n $measured ]] || die "nothing was measured"
REF_PEER=$REF
[[ " $measured " == *" $REF "* ]] || REF_PEER=${measured%% *}

report() {
  echo "## Environment"
  echo
  echo "- host: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)"
  [[ " $measured " == *" haproxy "* ]] && echo "- $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3)"
  [[ " $measured " == *" nginx "* ]] && echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //') (stream module $NGINX_STREAM_MODULE)"
  [[ " $measured " == *" switchyard "* ]] && echo "- switchyard: \`${SWITCHYARD_CMD#"$REPO"/} run --config <generated>\`"
  echo "- tcpload: examples/tcpload.rs at $(git -C "$REPO" describe --always --dirty 2>/dev/null)"
  echo
  echo "## Results ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "Median of $REPS run(s) per cell (min-max in brackets), fresh proxy process per run, peers interleaved."
  echo "Proxy pinned to CPU $PROXY_CPU with one worker; tcpload client and echo backend share CPU $CLIENT_CPU."
  echo "conns: $CONCURRENCY workers x ${DURATION}s of connect / 64 B out / 64 B back / close. bulk: $BULK_STREAMS stream(s) x $BULK_BYTES B each way."
  echo
  echo "| peer | conn/s | x $REF_PEER | p50 ms | p99 ms | CPU us/conn | x $REF_PEER | errors | CPU0/CPU1 busy % | bulk GiB/s | x $REF_PEER | CPU ms/GiB | x $REF_PEER | other CPU % |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  local peer c c0 c1 p50 p99 u u0 u1 e b0 b1 o g g0 g1 m m0 m1 _
  for peer in $measured; do
    read -r c c0 c1 < <(median "$peer" 5)
    read -r p50 _ _ < <(median "$peer" 6)
    read -r p99 _ _ < <(median "$peer" 7)
    read -r u u0 u1 < <(median "$peer" 8)
    read -r e _ _ < <(median "$peer" 4)
    read -r b0 _ _ < <(median "$peer" 9)
    read -r b1 _ _ < <(median "$peer" 10)
    read -r o _ _ < <(median "$peer" 11)
    read -r g g0 g1 < <(median "$peer" 12)
    read -r m m0 m1 < <(median "$peer" 13)
    printf '| %s | %.0f (%.0f-%.0f) | %s | %s | %s | %s (%s-%s) | %s | %s | %s/%s | %s (%s-%s) | %s | %s (%s-%s) | %s | %s |\n' \
      "$peer" "$c" "$c0" "$c1" "$(ratio "$peer" 5)" "$p50" "$p99" "$u" "$u0" "$u1" "$(ratio "$peer" 8)" "$e" \
      "$b0" "$b1" "$g" "$g0" "$g1" "$(ratio "$peer" 12)" "$m" "$m0" "$m1" "$(ratio "$peer" 13)" "$o"
  done
  echo
  echo "- x $REF_PEER = median over reps of (peer / $REF_PEER in the same rep). conn/s and GiB/s: higher is better; p99 and CPU: lower is better."
  echo "- CPU us/conn, CPU ms/GiB: the proxy's utime+stime (/proc/PID/stat, nginx master + worker) over the load; ${CLK_TCK} Hz ticks."
  local irqacct
  irqacct=$( { grep -sh '^CONFIG_IRQ_TIME_ACCOUNTING=' "/boot/config-$(uname -r)"; zcat -f /proc/config.gz 2>/dev/null | grep '^CONFIG_IRQ_TIME_ACCOUNTING='; } | head -1)
  if [[ -z $irqacct ]]; then
    echo "  This kernel does not do IRQ time accounting (CONFIG_IRQ_TIME_ACCOUNTING unset or unknown), so that includes the"
    echo "  softirq work run in the proxy's context: the loopback receive processing of what it sends."
  else
    echo "  This kernel has CONFIG_IRQ_TIME_ACCOUNTING: softirq time (loopback receive processing) is charged to no process and is NOT included."
  fi
  echo "  A GiB counts once, as sent by the client; the proxy moves it twice (out and back)."
  echo "- CPU$CLIENT_CPU runs the client and the echo backend. When it is near 100 % busy, conn/s and GiB/s are"
  echo "  limited by it as much as by the proxy: compare the proxy's CPU per connection / per GiB."
  echo "- other CPU % = busy time of both cores (/proc/stat) not used by the proxy, tcpload or this script, over conns + bulk"
  echo "  (another job on the machine). Runs above ${OTHER_CPU_MAX} % were redone (at most $RETRIES times, least disturbed kept; $RETRIES_USED redo(s) in all)."
  local sk
  for sk in "${SKIPPED[@]}"; do echo "- skipped $sk"; done
  echo "- Every run's bulk was verified byte for byte and ended with the half-close's EOF; a failed one shows NA."
}

report_text=$(report)
printf '%s\n' "$report_text"
if [[ -n $OUT_MD ]]; then printf '# TCP benchmark: bench/tcp.sh\n\n%s\n' "$report_text" >"$OUT_MD"; log "report also written to $OUT_MD"; fi
