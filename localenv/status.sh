#!/usr/bin/env bash
# Show the local environment: each component, its pid, whether it runs and answers, its port.
#   localenv/status.sh           table; exit 0 when everything is up and healthy, else 1
#   localenv/status.sh --quiet   no output, same exit code (used by localenv/test.sh)
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"

if [[ ${1:-} == --quiet ]]; then
  env_healthy
  exit
fi

# Kafka is `kafka`, or kafka-1..3 in a 3-broker environment (set in main, from ports.env).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kafka hookline-podrunner)

# health NAME: "healthy" / "not answering" for a running component, from its own check.
health() {
  case $1 in
    etcd) etcd_healthy ;;
    kube-apiserver) apiserver_ready ;;
    kube-controller-manager) kcm_healthy ;;
    kafka) kafka_ready "$KAFKA_PORT" ;;
    kafka-*) kafka_ready "$(kafka_node_port "${1#kafka-}")" ;;
    hookline-podrunner)
      [[ $("$KUBECTL" --kubeconfig "$RUN/kubeconfig" get node hookline-local \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
      ;;
  esac >/dev/null 2>&1
}

endpoint() {
  case $1 in
    etcd) echo "http://127.0.0.1:$ETCD_PORT" ;;
    kube-apiserver) echo "https://127.0.0.1:$APISERVER_PORT" ;;
    kube-controller-manager) echo "https://127.0.0.1:$KCM_PORT" ;;
    kafka) echo "127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)" ;;
    kafka-*) echo "127.0.0.1:$(kafka_node_port "${1#kafka-}") (controller $(kafka_node_port "${1#kafka-}" CONTROLLER))" ;;
    hookline-podrunner) echo "node hookline-local" ;;
  esac
}

main() {
  if ! load_ports; then
    echo "no local environment in $RUN (start one with: make env-up)"
    exit 1
  fi
  local name pid start state all_ok=1 n
  if (($(kafka_brokers) > 1)); then
    COMPONENTS=(etcd kube-apiserver kube-controller-manager)
    for ((n = 1; n <= $(kafka_brokers); n++)); do COMPONENTS+=("kafka-$n"); done
    COMPONENTS+=(hookline-podrunner)
  fi
  printf '%-24s %-8s %-14s %s\n' COMPONENT PID STATE ENDPOINT
  for name in "${COMPONENTS[@]}"; do
    if ! read -r pid start < <(read_pid "$name"); then
      if [[ $name == hookline-podrunner ]] && ! grep -qx "$name" "$RUN/components" 2>/dev/null; then
        state="not started"
      else
        state="stopped"
        all_ok=0
      fi
      pid=-
    elif ! pid_alive "$pid" "$start"; then
      state="dead"
      all_ok=0
    elif health "$name"; then
      state="healthy"
    else
      state="unhealthy"
      all_ok=0
    fi
    printf '%-24s %-8s %-14s %s\n' "$name" "$pid" "$state" "$(endpoint "$name")"
  done
  local pods=0
  pods=$(compgen -G "$RUN/pods/*/*.pid" | wc -l || true)
  printf '\npod processes: %s   logs: %s   env: source %s\n' "$pods" "$LOGS_DIR" "$RUN/env.sh"
  ((all_ok))
}

# One line, parsed whole before it runs: editing this file while it runs cannot derail it.
main "$@"; exit
