#!/usr/bin/env bash
# Stop the local environment: every component by the pid recorded when up.sh started it
# (never by process name), in reverse start order; then any pod processes the pod runner
# left behind. Removes pid files, keeps logs and data for a look afterwards.
# Safe to run when nothing is up.   Usage: localenv/down.sh [--quiet]
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"

QUIET=0
[[ ${1:-} == --quiet ]] && QUIET=1

# Pod runner first: on SIGTERM it stops its own pods. Then Kafka, whose controlled shutdown
# takes a few seconds, then the control plane from the top down to etcd.
ORDER=(hookline-podrunner kafka kube-controller-manager kube-apiserver etcd)
declare -A GRACE=([hookline-podrunner]=30 [kafka]=30)

# The nodes of a 3-broker Kafka (kafka-1..3) are stopped together: one after the other, the
# last would wait for a controller quorum that is already gone before it shuts down.
stop_kafka_cluster() {
  local name pids=()
  for name in "$@"; do
    stop_pid "$name" 30 &
    pids+=($!)
  done
  for name in "${pids[@]}"; do wait "$name" || true; done
}

# Pod processes are recorded by the pod runner as $RUN/pods/<ns>_<pod>/<container>.pid, one
# pid per file, each the leader of its own process group (children included). Like the pod
# runner's own cleanup: signal only a pid that is alive and leads its group, and only if it
# started before its pid file was written (a reused pid would have started later).
stop_leftover_pods() {
  local f pid pgrp stat mtime start_epoch btime ticks groups=()
  btime=$(awk '/^btime/ {print $2}' /proc/stat)
  ticks=$(getconf CLK_TCK)
  shopt -s nullglob
  for f in "$RUN"/pods/*/*.pid "$RUN"/pods/*/pid; do
    read -r pid <"$f" || pid=""
    mtime=$(stat -c %Y "$f")
    rm -f "$f"
    pid_alive "$pid" || continue
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    read -r -a fields <<<"$stat"
    pgrp=${fields[2]}
    start_epoch=$((btime + fields[19] / ticks))
    ((pgrp == pid)) || continue
    ((start_epoch <= mtime + 1)) || continue
    info "stopping leftover pod process group $pid (from ${f#"$RUN"/})"
    kill -TERM -- "-$pid" 2>/dev/null || true
    groups+=("$pid")
  done
  shopt -u nullglob
  ((${#groups[@]})) || return 0
  local i
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in "${groups[@]}"; do pid_alive "$pid" && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "${groups[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}

main() {
  if [[ ! -d $PIDS_DIR ]] && ! compgen -G "$RUN/pods/*/*.pid" >/dev/null; then
    ((QUIET)) || info "nothing to stop in $RUN"
    return 0
  fi
  # Components up.sh recorded, newest first, then any known name it may not have recorded.
  local names=() name
  if [[ -s $RUN/components ]]; then
    mapfile -t names < <(tac "$RUN/components")
  fi
  for name in "${ORDER[@]}"; do
    [[ " ${names[*]} " == *" $name "* ]] || names+=("$name")
  done
  local cluster=()
  for name in "${names[@]}"; do
    if [[ $name == kafka-[0-9]* ]]; then
      cluster+=("$name")
      continue
    fi
    # The Kafka nodes go where the first of them stood in the order (after the pod runner).
    if ((${#cluster[@]})); then
      stop_kafka_cluster "${cluster[@]}"
      cluster=()
    fi
    stop_pid "$name" "${GRACE[$name]:-15}"
  done
  ((${#cluster[@]} == 0)) || stop_kafka_cluster "${cluster[@]}"
  # Anything else with a pid file (a component added later that this list does not know).
  local f
  for f in "$PIDS_DIR"/*.pid; do
    [[ -e $f ]] || continue
    stop_pid "$(basename "$f" .pid)"
  done
  stop_leftover_pods
  rm -f "$RUN/components"
  rmdir "$PIDS_DIR" 2>/dev/null || true
  ((QUIET)) || ok "local environment stopped (logs kept in $LOGS_DIR)"
}

# One line, parsed whole before it runs: editing this file while it runs cannot derail it.
main "$@"; exit
