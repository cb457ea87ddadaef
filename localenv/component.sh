#!/usr/bin/env bash
# Stop and start ONE component of the running local environment, on the same ports, data and
# log, for the tests of outages (tests/tests/restarts): a broker that goes away and comes back,
# an API server and etcd that do.
#
#   localenv/component.sh stop NAME...     SIGTERM (as a clean shutdown), in the order given
#   localenv/component.sh kill NAME...     SIGKILL, in the order given
#   localenv/component.sh start NAME...    start again, in the order given, each waited for
#                                          until healthy (etcd 30 s, apiserver 120 s, ...)
#   localenv/component.sh freeze NAME...   SIGSTOP: the process stays, its connections hang
#   localenv/component.sh thaw NAME...     SIGCONT, then waited for until healthy
#   localenv/component.sh state NAME       prints running / frozen / stopped / dead
#
# NAME: etcd, kube-apiserver (or apiserver), kube-controller-manager, kafka, hookline-podrunner,
# or any other name up.sh recorded in $RUN/components. Stop the API server before etcd and
# start etcd before the API server, as a real control plane would go down and up.
#
# How: `stop`/`kill` read the process's own argv, environment, working directory and log file
# from /proc before signalling it, and keep them in $RUN/stopped/NAME/; `start` runs exactly
# that again with start_bg (a new pid file; the name stays in $RUN/components), so nothing here
# repeats up.sh's command lines and a component added to up.sh later is covered too. Kafka is
# not formatted again and etcd keeps its data dir, so topics, offsets and objects survive.
# Takes $RUN/up.lock like up.sh, so the two never act on one environment at once.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"

STOPPED_DIR=$RUN/stopped

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

canonical() {
  case $1 in
    apiserver) echo kube-apiserver ;;
    controller-manager | kcm) echo kube-controller-manager ;;
    podrunner) echo hookline-podrunner ;;
    *) echo "$1" ;;
  esac
}

# healthy NAME: the component's own check, as up.sh waits for it.
healthy() {
  case $1 in
    etcd) etcd_healthy ;;
    kube-apiserver) apiserver_ready ;;
    kube-controller-manager) kcm_healthy ;;
    kafka) kafka_ready "$KAFKA_PORT" ;;
    *) component_alive "$1" ;;
  esac
}

deadline() {
  case $1 in
    etcd) echo 30 ;;
    kube-apiserver) echo 120 ;;
    kafka) echo 150 ;;
    *) echo 60 ;;
  esac
}

# save NAME PID: keep what it takes to start the process again.
save() {
  local name=$1 pid=$2 dir=$STOPPED_DIR/$1 log
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "/proc/$pid/cmdline" "$dir/cmdline" || die "cannot read /proc/$pid/cmdline of $name" "is it still running? localenv/status.sh"
  cp "/proc/$pid/environ" "$dir/environ"
  readlink "/proc/$pid/cwd" >"$dir/cwd"
  log=$(readlink "/proc/$pid/fd/1" 2>/dev/null || true)
  [[ $log == /* && -f $log ]] || log=$(log_file "$name")
  printf '%s\n' "$log" >"$dir/log"
}

stop_one() { # stop_one NAME SIGNAL
  local name=$1 sig=$2 pid start
  if ! read -r pid start < <(read_pid "$name") || ! pid_alive "$pid" "$start"; then
    [[ -d $STOPPED_DIR/$name ]] && { info "$name is already stopped"; return 0; }
    die "$name is not running and was not stopped by this script" "localenv/status.sh shows the environment; localenv/up.sh starts it"
  fi
  save "$name" "$pid"
  if [[ $sig == KILL ]]; then
    info "killing $name (pid $pid, SIGKILL)"
    kill -KILL "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      pid_alive "$pid" "$start" || break
      sleep 0.1
    done
    rm -f "$(pid_file "$name")"
  else
    stop_pid "$name" 30
  fi
  ok "$name stopped"
}

start_one() { # start_one NAME
  local name=$1 dir=$STOPPED_DIR/$1 t0
  if component_alive "$name"; then
    info "$name is already running"
    return 0
  fi
  [[ -s $dir/cmdline ]] || die "$name was not stopped by localenv/component.sh, so how to start it is unknown" "restart the whole environment: localenv/down.sh && localenv/up.sh"
  local argv=() envv=() cwd log
  mapfile -d '' -t argv <"$dir/cmdline"
  mapfile -d '' -t envv <"$dir/environ"
  cwd=$(<"$dir/cwd")
  log=$(<"$dir/log")
  t0=$(date +%s)
  info "starting $name again: ${argv[0]}"
  (cd "$cwd" && start_bg "$name" "$log" env -i "${envv[@]}" "${argv[@]}")
  wait_for "$name" "$name to be healthy" "$(deadline "$name")" healthy "$name"
  rm -rf "$dir"
  ok "$name ready again in $(elapsed "$t0")"
}

# signal_one NAME SIGNAL: send SIGSTOP/SIGCONT to the running component.
signal_one() {
  local name=$1 sig=$2 pid start
  read -r pid start < <(read_pid "$name") && pid_alive "$pid" "$start" ||
    die "$name is not running" "localenv/status.sh shows the environment"
  info "sending SIG$sig to $name (pid $pid)"
  kill "-$sig" "$pid"
  if [[ $sig == CONT ]]; then
    wait_for "$name" "$name to be healthy" "$(deadline "$name")" healthy "$name"
    ok "$name answers again"
  fi
}

state() {
  local name=$1 pid start stat
  if component_alive "$name"; then
    read -r pid start < <(read_pid "$name")
    stat=$(cat "/proc/$pid/stat")
    stat=${stat##*) }
    if [[ ${stat%% *} == T ]]; then echo frozen; else echo running; fi
  elif [[ -d $STOPPED_DIR/$name ]]; then
    echo stopped
  else
    echo dead
  fi
}

main() {
  (($# >= 2)) || usage
  local action=$1 name
  shift
  load_ports || die "no local environment in $RUN" "start one: localenv/up.sh"
  mkdir -p "$RUN"
  exec 8>"$RUN/up.lock"
  flock -w 300 8 || die "localenv/up.sh (or another component.sh) holds $RUN/up.lock" "wait for it, then try again"
  local names=()
  for name in "$@"; do
    name=$(canonical "$name")
    grep -qx "$name" "$RUN/components" 2>/dev/null || die "no component '$name' in $RUN/components" "one of: $(tr '\n' ' ' <"$RUN/components")"
    names+=("$name")
  done
  for name in "${names[@]}"; do
    case $action in
      stop) stop_one "$name" TERM ;;
      kill) stop_one "$name" KILL ;;
      start) start_one "$name" ;;
      freeze) signal_one "$name" STOP ;;
      thaw) signal_one "$name" CONT ;;
      state) state "$name" ;;
      *) usage ;;
    esac
  done
}

# One line, parsed whole before it runs: editing this file while it runs cannot derail it.
main "$@"; exit
