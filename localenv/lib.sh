# shellcheck shell=bash
# shellcheck disable=SC2034  # variables here are used by the scripts that source this file
# Shared helpers for the local environment scripts (tools.sh, up.sh, down.sh, status.sh).
# Sourced, never run. Everything here is plain bash + coreutils + python3 (for free ports).
set -euo pipefail

LOCALENV_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LOCALENV_DIR/.." && pwd)
# shellcheck source=SCRIPTDIR/versions.env
source "$LOCALENV_DIR/versions.env"

# Caches live outside the checkout so `git clean` and fresh worktrees keep them.
CACHE=${HOOKLINE_CACHE:-$HOME/.cache/hookline}
# Everything of one running environment: pid files, logs, certs, data dirs, env.sh.
RUN=${HOOKLINE_RUN_DIR:-$CACHE/run}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

# Where tools.sh puts each tool; versioned so a version bump never reuses a stale binary.
K8S_BIN_DIR=$CACHE/bin/k8s-$K8S_VERSION
ETCD_BIN_DIR=$CACHE/bin/etcd-$ETCD_VERSION
HELM_BIN_DIR=$CACHE/bin/helm-$HELM_VERSION
KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
KUBECTL=$K8S_BIN_DIR/kubectl

PIDS_DIR=$RUN/pids
LOGS_DIR=$RUN/logs

# ---------------------------------------------------------------------------------------------
# Logging

_ts() { date +%H:%M:%S; }
info() { printf '\033[1;34m[%s]\033[0m %s\n' "$(_ts)" "$*" >&2; }
ok() { printf '\033[1;32m[%s]\033[0m %s\n' "$(_ts)" "$*" >&2; }
warn() { printf '\033[1;33m[%s] WARNING:\033[0m %s\n' "$(_ts)" "$*" >&2; }

# die CAUSE [WHAT-TO-DO]: print what went wrong and how to fix it, then exit 1
# (an EXIT trap, if the caller set one, cleans up).
die() {
  printf '\033[1;31m[%s] ERROR:\033[0m %s\n' "$(_ts)" "$1" >&2
  if [[ $# -gt 1 ]]; then printf '  what to do: %s\n' "$2" >&2; fi
  exit 1
}

# need_cmd CMD HINT: fail early, naming the missing toolchain and how to get it.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH" "$2"
}

# ---------------------------------------------------------------------------------------------
# Ports

# free_ports N: print N distinct free TCP ports on 127.0.0.1, one per line. The kernel picks
# them (bind to port 0); all N sockets are held open together so the ports are distinct.
# Another process could still take one before we bind it; up.sh then fails with a clear
# "port in use" message and a rerun picks new ports.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}
free_port() { free_ports 1; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# Processes. A pid file holds "PID STARTTIME" (STARTTIME = field 22 of /proc/PID/stat), so a
# pid that the kernel reused for an unrelated process is never signalled.

_proc_starttime() {
  # The comm field (2) may contain spaces; everything after the last ')' is fixed-width.
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # After ')' the fields start at field 3 (state); starttime is field 22 -> index 19.
  read -r -a f <<<"$stat"
  printf '%s\n' "${f[19]}"
}

# pid_alive PID [STARTTIME]: running (zombies count as dead) and, if given, the same process.
pid_alive() {
  local pid=$1 want=${2:-} stat state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  state=${stat##*) }
  state=${state%% *}
  [[ $state != Z && $state != X ]] || return 1
  [[ -z $want ]] || [[ $(_proc_starttime "$pid") == "$want" ]]
}

pid_file() { printf '%s/%s.pid\n' "$PIDS_DIR" "$1"; }

# read_pid NAME: print "PID STARTTIME" from NAME's pid file (fails if there is none).
read_pid() {
  local f
  f=$(pid_file "$1")
  [[ -s $f ]] || return 1
  head -n1 "$f"
}

# component_alive NAME: its recorded process is still the one we started.
component_alive() {
  local pid start
  read -r pid start < <(read_pid "$1") || return 1
  pid_alive "$pid" "$start"
}

# start_bg NAME LOGFILE CMD...: start CMD detached (own session, stdin closed, output appended
# to LOGFILE) and record its pid in $RUN/pids/NAME.pid. setsid execs without forking here
# (a non-interactive shell's background job is not a process-group leader), so $! is the
# process itself; a Ctrl-C in the terminal later does not reach it.
start_bg() {
  local name=$1 log=$2
  shift 2
  mkdir -p "$PIDS_DIR" "$(dirname "$log")"
  printf '\n===== %s starting at %s: %s\n' "$name" "$(date -Is)" "$*" >>"$log"
  # 8>&- 9>&-: do not hand the up.sh/tools.sh lock descriptors to long-lived processes.
  setsid "$@" >>"$log" 2>&1 </dev/null 8>&- 9>&- &
  local pid=$!
  local start
  start=$(_proc_starttime "$pid") || start=""
  printf '%s %s\n' "$pid" "$start" >"$(pid_file "$name")"
  # Keep the start order so down.sh/status.sh can go through components in reverse/forward.
  grep -qx "$name" "$RUN/components" 2>/dev/null || echo "$name" >>"$RUN/components"
}

# stop_process PID [STARTTIME] [GRACE_SECONDS]: TERM, wait, then KILL. Only that pid.
stop_process() {
  local pid=$1 start=${2:-} grace=${3:-15} i
  pid_alive "$pid" "$start" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    pid_alive "$pid" "$start" || return 0
    sleep 0.1
  done
  warn "pid $pid did not exit ${grace}s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_alive "$pid" "$start" || return 0
    sleep 0.1
  done
}

# stop_pid NAME [GRACE_SECONDS]: stop the process recorded in NAME's pid file and remove it.
stop_pid() {
  local name=$1 grace=${2:-15} pid start f
  f=$(pid_file "$name")
  [[ -f $f ]] || return 0
  read -r pid start <"$f" || true
  if pid_alive "${pid:-}" "${start:-}"; then
    info "stopping $name (pid $pid)"
    stop_process "$pid" "$start" "$grace"
  fi
  rm -f "$f"
}

log_file() { printf '%s/%s.log\n' "$LOGS_DIR" "$1"; }

# fail_with_log NAME [LINES]: show the end of NAME's log(s) so the cause is on screen.
fail_with_log() {
  local name=$1 lines=${2:-40} f
  for f in "$LOGS_DIR/$name.log" "$LOGS_DIR/$name.stdout.log"; do
    [[ -s $f ]] || continue
    printf '\n----- last %s lines of %s -----\n' "$lines" "$f" >&2
    tail -n "$lines" "$f" >&2
    printf -- '----- end of %s -----\n\n' "$f" >&2
  done
}

# wait_for NAME DESCRIPTION DEADLINE_SECONDS CMD...: poll CMD until it succeeds. Fails fast
# (with NAME's log tail) if NAME's process dies, and after the deadline.
wait_for() {
  local name=$1 what=$2 deadline=$(($(date +%s) + $3))
  shift 3
  while ! "$@" >/dev/null 2>&1; do
    if [[ -f $(pid_file "$name") ]] && ! component_alive "$name"; then
      fail_with_log "$name"
      die "$name exited while waiting for $what" "read its log above (full log: $(log_file "$name"))"
    fi
    if (($(date +%s) >= deadline)); then
      fail_with_log "$name"
      die "timed out waiting for $what" "read $name's log above (full log: $(log_file "$name")); the machine may be overloaded, rerun with a longer deadline"
    fi
    sleep 0.5
  done
}

# elapsed START_EPOCH: "123s" since START.
elapsed() { printf '%ss' "$(($(date +%s) - $1))"; }

# ---------------------------------------------------------------------------------------------
# Health checks shared by up.sh and status.sh. Ports come from $RUN/ports.env (written by up.sh).

load_ports() {
  [[ -f $RUN/ports.env ]] || return 1
  # shellcheck source=/dev/null
  source "$RUN/ports.env"
}

etcd_healthy() {
  local out
  out=$(curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health") && [[ $out == *'"health":"true"'* ]]
}

# apiserver_get PATH: GET PATH from the apiserver as the admin user.
apiserver_get() {
  curl -fsS --max-time 5 --cacert "$RUN/pki/ca.crt" --cert "$RUN/pki/admin.crt" --key "$RUN/pki/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT$1"
}
apiserver_ready() { [[ $(apiserver_get /readyz) == ok ]]; }

# /healthz is on the controller manager's always-allowed paths; its serving cert is self-signed.
kcm_healthy() { [[ $(curl -ksS --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz") == ok ]]; }

# kafka_ready PORT [BROKERS]: the broker answers an ApiVersions and a Metadata request listing
# itself (or at least BROKERS brokers: a cluster whose nodes have all registered), spoken
# directly in the Kafka wire protocol (no JVM start: ~0.1 s instead of ~3 s).
kafka_ready() {
  python3 - "$1" "${2:-1}" <<'PY'
import socket, struct, sys

def call(sock, api_key, version, corr, body):
    client = b"hookline-localenv"
    msg = struct.pack(">hhih", api_key, version, corr, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed by the broker")
            buf += chunk
        return buf
    (size,) = struct.unpack(">i", read(4))
    data = read(size)
    assert struct.unpack(">i", data[:4])[0] == corr, "correlation id mismatch"
    return data[4:]

sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
sock.settimeout(3)
# ApiVersions v0 (empty body) -> error_code int16 first.
(err,) = struct.unpack(">h", call(sock, 18, 0, 1, b"")[:2])
if err:
    sys.exit(f"ApiVersions error code {err}")
# Metadata v4, no topics, no auto-creation -> throttle_time_ms, brokers[node_id, host, port, rack].
r = call(sock, 3, 4, 2, struct.pack(">i", 0) + b"\x00")
(brokers,) = struct.unpack(">i", r[4:8])
if brokers < int(sys.argv[2]):
    sys.exit(f"the broker lists {brokers} of {sys.argv[2]} brokers in its metadata yet")
PY
}

# Kafka nodes: one (component `kafka`, port KAFKA_PORT), or with HOOKLINE_LOCALENV_KAFKA_BROKERS=3
# a cluster (ports.env: KAFKA_BROKERS=3; components kafka-1..3, ports KAFKA_N_PORT and
# KAFKA_N_CONTROLLER_PORT; node 1's equal KAFKA_PORT/KAFKA_CONTROLLER_PORT).
kafka_brokers() { echo "${KAFKA_BROKERS:-1}"; }
# kafka_node_name N: the component name of node N (`kafka` when there is one).
kafka_node_name() { if (($(kafka_brokers) == 1)); then echo kafka; else echo "kafka-$1"; fi; }
# kafka_node_dir N: its config and data directory.
kafka_node_dir() { if (($(kafka_brokers) == 1)); then echo "$RUN/kafka"; else echo "$RUN/kafka/$1"; fi; }
# kafka_node_port N [CONTROLLER]: its PLAINTEXT (or CONTROLLER) port.
kafka_node_port() {
  local var=KAFKA_${1}_PORT
  (($(kafka_brokers) > 1)) || var=KAFKA_PORT
  [[ ${2:-} == CONTROLLER ]] && var=${var%_PORT}_CONTROLLER_PORT
  printf '%s\n' "${!var}"
}

# env_healthy: every component up.sh started is still running and answering.
env_healthy() {
  local name
  [[ -s $RUN/components ]] && load_ports || return 1
  while read -r name; do
    component_alive "$name" || return 1
  done <"$RUN/components"
  etcd_healthy && apiserver_ready && kcm_healthy && kafka_ready "$KAFKA_PORT" "$(kafka_brokers)" >/dev/null 2>&1
}
