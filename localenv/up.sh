#!/usr/bin/env bash
# Start the local environment on loopback, in order, each component on a free 127.0.0.1 port
# and waited for until healthy:
#
#   etcd -> kube-apiserver (+ CRDs from crds/manifests) -> kube-controller-manager
#        -> Kafka (KRaft, one node; or three) -> hookline-podrunner (the stand-in kubelet)
#
# Writes $RUN/kubeconfig (admin) and $RUN/env.sh (source it). Each `up` starts from empty
# state (etcd data, Kafka logs, pods, certs); logs of the previous run move to $RUN/logs.prev.
#
# Environment knobs:
#   HOOKLINE_CACHE, HOOKLINE_RUN_DIR   cache and run directory (default ~/.cache/hookline{,/run})
#   HOOKLINE_POD_IP_BASE               loopback /16 the pod runner gives Pods IPs from (default 127.1);
#                                      a second environment beside the first needs another (e.g. 127.2)
#   HOOKLINE_SKIP_PODRUNNER=1          do not build/start the pod runner
#   HOOKLINE_BIN_DIR                   where the pod runner finds ghcr.io/hookline/* binaries
#                                      (default $CARGO_TARGET_DIR/debug)
#   HOOKLINE_LOCALENV_KAFKA_BROKERS=3  a 3-node Kafka cluster (components kafka-1..3, every
#                                      internal topic replicated 3, min.insync.replicas=2)
#                                      instead of the single broker `kafka` (default 1). Not
#                                      HOOKLINE_KAFKA_*: the binaries read those as Kafka settings.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=SCRIPTDIR/certs.sh
source "$LOCALENV_DIR/certs.sh"

T0=$(date +%s)
NODE_NAME=hookline-local
# Kafka nodes wanted; KAFKA_BROKERS (lib.sh's helpers, ports.env) is set from it once the run
# directory is fresh, as a previous environment's ports.env may say otherwise.
KAFKA_WANT=${HOOKLINE_LOCALENV_KAFKA_BROKERS:-1}

preflight() {
  need_cmd java "install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
  need_cmd openssl "install openssl (e.g. apt-get install openssl)"
  need_cmd python3 "install python3 (used to pick free ports and to probe Kafka)"
  need_cmd curl "install curl (used for health checks)"
  local f
  for f in "$ETCD_BIN_DIR/etcd" "$K8S_BIN_DIR/kube-apiserver" "$K8S_BIN_DIR/kube-controller-manager" "$KUBECTL"; do
    [[ -x $f ]] || die "$f is missing" "build the tools first: make tools (or localenv/tools.sh)"
  done
  [[ -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] || die "Kafka $KAFKA_VERSION is not in $KAFKA_LIBS" "fetch it first: make tools (or localenv/tools.sh kafka)"
  [[ $KAFKA_WANT == 1 || $KAFKA_WANT == 3 ]] ||
    die "HOOKLINE_LOCALENV_KAFKA_BROKERS=$KAFKA_WANT: only 1 (the default) or 3 brokers are supported" "unset it, or set it to 3"
}

# ---------------------------------------------------------------------------------------------
# Cleanup: a failed or interrupted `up` stops everything it (or a previous half-run) started.

UP_DONE=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
on_exit() {
  local rc=$?
  if ((UP_DONE == 0)); then
    ((rc != 0)) || rc=1
    if ((rc == 130 || rc == 143)); then
      warn "interrupted; stopping what was started (logs stay in $LOGS_DIR)"
    else
      warn "start-up failed; stopping what was started (logs stay in $LOGS_DIR)"
    fi
    "$LOCALENV_DIR/down.sh" --quiet || true
  fi
  exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Fresh run directory

fresh_run_dir() {
  mkdir -p "$RUN"
  # Keep the previous run's logs for one more round: they explain what happened last time.
  if [[ -d $LOGS_DIR ]]; then
    rm -rf "$RUN/logs.prev"
    mv "$LOGS_DIR" "$RUN/logs.prev"
  fi
  rm -rf "$RUN/etcd" "$RUN/kafka" "$RUN/pods" "$RUN/users" "$PIDS_DIR" \
    "$RUN/components" "$RUN/ports.env" "$RUN/env.sh" "$RUN/kubeconfig"
  mkdir -p "$LOGS_DIR" "$PIDS_DIR"
}

allocate_ports() {
  local ports
  mapfile -t ports < <(free_ports 6)
  cat >"$RUN/ports.env" <<EOF
ETCD_PORT=${ports[0]}
ETCD_PEER_PORT=${ports[1]}
APISERVER_PORT=${ports[2]}
KCM_PORT=${ports[3]}
KAFKA_PORT=${ports[4]}
KAFKA_CONTROLLER_PORT=${ports[5]}
EOF
  allocate_kafka_cluster_ports
  load_ports
}

# check_port_free NAME PORT: refuse to start NAME on a port someone else grabbed meanwhile.
check_port_free() {
  if port_open "$2"; then
    die "port 127.0.0.1:$2 for $1 is already in use by another process" "rerun 'make env-up' (it picks new free ports); 'ss -ltnp | grep :$2' shows who holds it"
  fi
}

# ---------------------------------------------------------------------------------------------
# Components

start_etcd() {
  check_port_free etcd "$ETCD_PORT"
  check_port_free etcd "$ETCD_PEER_PORT"
  info "starting etcd $ETCD_VERSION on 127.0.0.1:$ETCD_PORT"
  # --unsafe-no-fsync: throwaway data, and fsync latency dominates on shared 2-core machines.
  start_bg etcd "$(log_file etcd)" "$ETCD_BIN_DIR/etcd" \
    --name hookline-local \
    --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "hookline-local=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --quota-backend-bytes 4294967296 \
    --log-level warn
  wait_for etcd "etcd /health" 30 etcd_healthy
  ok "etcd ready"
}

start_apiserver() {
  check_port_free kube-apiserver "$APISERVER_PORT"
  info "starting kube-apiserver $K8S_VERSION on https://127.0.0.1:$APISERVER_PORT"
  # TaintNodesByCondition is off: it taints every new Node not-ready, and only the
  # node-lifecycle controller (not run here: no kubelets) would ever remove that taint.
  start_bg kube-apiserver "$(log_file kube-apiserver)" "$K8S_BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --secure-port "$APISERVER_PORT" \
    --cert-dir "$RUN/pki/apiserver" \
    --tls-cert-file "$RUN/pki/apiserver.crt" \
    --tls-private-key-file "$RUN/pki/apiserver.key" \
    --client-ca-file "$RUN/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$RUN/pki/sa.pub" \
    --service-account-signing-key-file "$RUN/pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode RBAC \
    --allow-privileged=true \
    --disable-admission-plugins TaintNodesByCondition \
    --profiling=false
  wait_for kube-apiserver "kube-apiserver /readyz" 120 apiserver_ready
  write_kubeconfig "$RUN/kubeconfig" "https://127.0.0.1:$APISERVER_PORT" hookline-admin "$RUN/pki/admin.crt" "$RUN/pki/admin.key"
  ok "kube-apiserver ready"
}

# Controllers the Deployments need (deployment -> replicaset -> pods), plus namespace deletion,
# owner-reference garbage collection, default ServiceAccounts and their legacy token secrets,
# aggregated ClusterRoles (admin/edit/view), and the kube-root-ca.crt ConfigMap that
# projected ServiceAccount volumes refer to. Names as in cmd/kube-controller-manager/names.
KCM_CONTROLLERS=deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,clusterrole-aggregation-controller,root-ca-certificate-publisher-controller

# --use-service-account-credentials=true: each controller acts as its own ServiceAccount in
# kube-system (system:serviceaccount:kube-system:deployment-controller, …), which is what the
# bootstrap RBAC policy grants rights to. With =false every controller would act as
# system:kube-controller-manager, which RBAC does not let create ReplicaSets or Pods.
start_controller_manager() {
  check_port_free kube-controller-manager "$KCM_PORT"
  local kc=$RUN/pki/kube-controller-manager.kubeconfig
  write_kubeconfig "$kc" "https://127.0.0.1:$APISERVER_PORT" system:kube-controller-manager \
    "$RUN/pki/kube-controller-manager.crt" "$RUN/pki/kube-controller-manager.key"
  info "starting kube-controller-manager $K8S_VERSION (controllers: $KCM_CONTROLLERS)"
  start_bg kube-controller-manager "$(log_file kube-controller-manager)" "$K8S_BIN_DIR/kube-controller-manager" \
    --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" \
    --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 \
    --secure-port "$KCM_PORT" \
    --cert-dir "$RUN/pki/kube-controller-manager" \
    --leader-elect=false \
    --controllers "$KCM_CONTROLLERS" \
    --root-ca-file "$RUN/pki/ca.crt" \
    --service-account-private-key-file "$RUN/pki/sa.key" \
    --use-service-account-credentials=true \
    --cluster-name hookline-local \
    --profiling=false
  wait_for kube-controller-manager "kube-controller-manager /healthz" 60 kcm_healthy
  ok "kube-controller-manager ready"
}

# CRDs are generated from the Rust types into crds/manifests (make crds); apply them when present.
apply_crds() {
  local dir=$REPO_ROOT/crds/manifests
  if ! compgen -G "$dir/*.yaml" >/dev/null; then
    warn "no CRD manifests in $dir yet; skipping (generate them with 'make crds')"
    return
  fi
  info "applying CRDs from $dir"
  local out
  out=$("$KUBECTL" --kubeconfig "$RUN/kubeconfig" apply --server-side --force-conflicts -f "$dir" 2>&1) ||
    die "applying the CRDs in $dir failed: $out" "fix the manifests (regenerate with 'make crds') and rerun"
  "$KUBECTL" --kubeconfig "$RUN/kubeconfig" wait --for condition=Established --timeout 60s -f "$dir" >/dev/null 2>&1 ||
    die "the CRDs in $dir did not become Established within 60s" "look at 'kubectl get crd -o yaml' for the NamesAccepted/Established conditions"
  ok "CRDs established ($(compgen -G "$dir/*.yaml" | wc -l) manifests)"
}

# Kafka 4 in KRaft mode: each process is both controller and broker. By default one node
# (component `kafka`, config and data in $RUN/kafka, ports KAFKA_PORT/KAFKA_CONTROLLER_PORT).
# With HOOKLINE_LOCALENV_KAFKA_BROKERS=3, three nodes (components kafka-1..3, $RUN/kafka/N,
# ports KAFKA_N_PORT/KAFKA_N_CONTROLLER_PORT; node 1's are also KAFKA_PORT/KAFKA_CONTROLLER_PORT)
# forming one static controller quorum: any one node may die (kill -9) and the other two keep
# both the quorum and every partition's in-sync replicas (replication 3, min ISR 2).

# Node 1 of a cluster reuses the single-node ports; nodes 2..N get two more ports each. A
# single node's ports.env stays as it always was (no KAFKA_BROKERS line: 1).
allocate_kafka_cluster_ports() {
  KAFKA_BROKERS=$KAFKA_WANT
  ((KAFKA_BROKERS > 1)) || return 0
  local ports n i=0
  # shellcheck source=/dev/null
  source "$RUN/ports.env"
  mapfile -t ports < <(free_ports $((2 * (KAFKA_BROKERS - 1))))
  {
    echo "KAFKA_BROKERS=$KAFKA_BROKERS"
    echo "KAFKA_1_PORT=$KAFKA_PORT"
    echo "KAFKA_1_CONTROLLER_PORT=$KAFKA_CONTROLLER_PORT"
    for ((n = 2; n <= KAFKA_BROKERS; n++)); do
      echo "KAFKA_${n}_PORT=${ports[i]}"
      echo "KAFKA_${n}_CONTROLLER_PORT=${ports[i + 1]}"
      i=$((i + 2))
    done
  } >>"$RUN/ports.env"
}

# The bootstrap list of all nodes, as env.sh exports it.
kafka_bootstrap() {
  local n list=()
  for ((n = 1; n <= KAFKA_BROKERS; n++)); do list+=("127.0.0.1:$(kafka_node_port "$n")"); done
  (
    IFS=,
    echo "${list[*]}"
  )
}

# write_kafka_config N: server.properties and log4j2.properties of node N.
write_kafka_config() {
  local node=$1 dir name port cport voters="" n
  dir=$(kafka_node_dir "$node")
  name=$(kafka_node_name "$node")
  port=$(kafka_node_port "$node")
  cport=$(kafka_node_port "$node" CONTROLLER)
  for ((n = 1; n <= KAFKA_BROKERS; n++)); do
    voters+="${voters:+,}$n@127.0.0.1:$(kafka_node_port "$n" CONTROLLER)"
  done
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
# Generated by localenv/up.sh; regenerated (with new ports and an empty log dir) on every up.
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# Topics are created explicitly (Hookline's controller does it with the admin API).
auto.create.topics.enable=false
num.partitions=1
EOF
  if ((KAFKA_BROKERS == 1)); then
    cat >>"$dir/server.properties" <<EOF
default.replication.factor=1
min.insync.replicas=1
# One broker: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
  else
    cat >>"$dir/server.properties" <<EOF
default.replication.factor=3
min.insync.replicas=2
# Three brokers: every internal topic (consumer offsets, transactions, share groups) has three
# replicas and takes an acks=all write with two of them, so any one broker may be lost.
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
EOF
  fi
  cat >>"$dir/server.properties" <<EOF
# Fewer internal partitions and no rebalance delay: faster consumer-group starts in tests.
offsets.topic.num.partitions=10
group.initial.rebalance.delay.ms=0
EOF
  # Broker logs go to a file; stdout only gets JVM-level output.
  cat >"$dir/log4j2.properties" <<EOF
status = warn
name = hookline-localenv-$name
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $(log_file "$name")
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# Per-request and per-partition chatter.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

kafka_java() { # kafka_java DIR MAIN-CLASS ARGS...: a JVM with the broker's classpath and DIR's logging.
  local dir=$1
  shift
  java -Xmx512m -Xms128m -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

# A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (what
# `kafka-storage random-uuid` prints), never starting with '-' (it would look like a flag).
kafka_cluster_id() {
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    if not s.startswith("-"):
        print(s)
        break'
}

# format_kafka_node ID N: format node N's storage for cluster ID (a JVM run of ~2 s).
format_kafka_node() {
  local dir out
  dir=$(kafka_node_dir "$2")
  out=$(kafka_java "$dir" kafka.tools.StorageTool format -t "$1" -c "$dir/server.properties" 2>&1) ||
    die "formatting Kafka storage of node $2 failed: $out" "check $dir/server.properties"
}

start_kafka() {
  local n id dir name pids=()
  for ((n = 1; n <= KAFKA_BROKERS; n++)); do
    check_port_free "$(kafka_node_name "$n")" "$(kafka_node_port "$n")"
    check_port_free "$(kafka_node_name "$n")" "$(kafka_node_port "$n" CONTROLLER)"
    write_kafka_config "$n"
  done
  id=$(kafka_cluster_id)
  info "formatting Kafka storage (cluster id $id, $KAFKA_BROKERS node(s))"
  # One JVM start per node, in parallel: the nodes are independent until they run.
  for ((n = 1; n <= KAFKA_BROKERS; n++)); do
    format_kafka_node "$id" "$n" &
    pids+=($!)
  done
  for n in "${pids[@]}"; do wait "$n" || die "formatting the Kafka storage failed (the cause is above)"; done
  info "starting Kafka $KAFKA_VERSION (KRaft) on $(kafka_bootstrap)"
  for ((n = 1; n <= KAFKA_BROKERS; n++)); do
    dir=$(kafka_node_dir "$n")
    name=$(kafka_node_name "$n")
    # The JVM options Kafka's own scripts start a broker with: kafka-server-start.sh's heap
    # (1 GiB, fixed) and kafka-run-class.sh's G1 settings (20 ms pause goal). With 512 MiB the
    # old generation sat at 82-93 % under the publishing benchmark, with a young pause of
    # ~16 ms every second or two (jstat -gcutil, 2026-12-02).
    start_bg "$name" "$LOGS_DIR/$name.stdout.log" java -Xmx1g -Xms1g -XX:+ExitOnOutOfMemoryError \
      -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
  done
  for ((n = 1; n <= KAFKA_BROKERS; n++)); do
    name=$(kafka_node_name "$n")
    wait_for "$name" "$name to accept connections" 90 port_open "$(kafka_node_port "$n")"
  done
  # Every node answers and lists all brokers: the quorum has formed and each has registered.
  for ((n = 1; n <= KAFKA_BROKERS; n++)); do
    name=$(kafka_node_name "$n")
    wait_for "$name" "$name to answer metadata requests listing $KAFKA_BROKERS broker(s)" 60 \
      kafka_ready "$(kafka_node_port "$n")" "$KAFKA_BROKERS"
  done
  ok "Kafka ready ($KAFKA_BROKERS node(s))"
}

# The pod runner is another engineer's crate; until it has a real main, say so loudly and go on.
podrunner_wanted() {
  if [[ ${HOOKLINE_SKIP_PODRUNNER:-0} == 1 ]]; then
    warn "HOOKLINE_SKIP_PODRUNNER=1: not starting the pod runner; Pods stay Pending"
    return 1
  fi
  local main=$REPO_ROOT/localenv/podrunner/src/main.rs
  if [[ ! -f $main ]] || ! grep -q 'fn main' "$main" || grep -qE 'todo!|unimplemented!' "$main"; then
    warn "**************************************************************************"
    warn "localenv/podrunner has no real main yet: NOT starting the pod runner."
    warn "Pods of Deployments stay Pending until it exists."
    warn "**************************************************************************"
    return 1
  fi
}

# shellcheck disable=SC2317  # invoked through wait_for
node_ready() {
  [[ $("$KUBECTL" --kubeconfig "$RUN/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

start_podrunner() {
  podrunner_wanted || return 0
  need_cmd cargo "install Rust (https://rustup.rs); or set HOOKLINE_SKIP_PODRUNNER=1"
  info "building hookline-podrunner (cargo build -q -p hookline-podrunner; target dir $CARGO_TARGET_DIR)"
  local t0 out
  t0=$(date +%s)
  out=$(cd "$REPO_ROOT" && cargo build -q -p hookline-podrunner 2>&1) ||
    die "building hookline-podrunner failed:
$out" "fix the build, or set HOOKLINE_SKIP_PODRUNNER=1 to start without it"
  info "pod runner built in $(elapsed "$t0")"
  local bin=$CARGO_TARGET_DIR/debug/hookline-podrunner
  [[ -x $bin ]] || die "$bin is missing after the build" "check CARGO_TARGET_DIR ($CARGO_TARGET_DIR)"
  info "starting hookline-podrunner (node $NODE_NAME)"
  start_bg hookline-podrunner "$(log_file hookline-podrunner)" "$bin" \
    --kubeconfig "$RUN/kubeconfig" \
    --node-name "$NODE_NAME" \
    --state-dir "$RUN/pods" \
    --image-map "ghcr.io/hookline/=${HOOKLINE_BIN_DIR:-$CARGO_TARGET_DIR/debug}" \
    --host-image hookline.test/ \
    --pod-ip-base "${HOOKLINE_POD_IP_BASE:-127.1}"
  wait_for hookline-podrunner "node $NODE_NAME to be Ready" 60 node_ready
  ok "pod runner ready (node $NODE_NAME Ready)"
}

# ---------------------------------------------------------------------------------------------

write_env_sh() {
  local helm=$HELM_BIN_DIR/helm
  [[ -x $helm ]] || helm=""
  cat >"$RUN/env.sh" <<EOF
# Generated by localenv/up.sh at $(date -Is). Source it: . $RUN/env.sh
export KUBECONFIG=$RUN/kubeconfig
export HOOKLINE_RUN_DIR=$RUN
export HOOKLINE_KAFKA_BOOTSTRAP=$(kafka_bootstrap)
export HOOKLINE_LOCALENV_KAFKA_BROKERS=$KAFKA_BROKERS
export HOOKLINE_KUBECTL=$KUBECTL
export HOOKLINE_HELM=$helm
export HOOKLINE_LOCALENV_KAFKA_LIBS=$KAFKA_LIBS
export HOOKLINE_APISERVER=https://127.0.0.1:$APISERVER_PORT
export HOOKLINE_ETCD_ENDPOINT=http://127.0.0.1:$ETCD_PORT
export PATH=$K8S_BIN_DIR:$HELM_BIN_DIR:\$PATH
EOF
}

print_summary() {
  printf '\n'
  ok "local environment up in $(elapsed "$T0")"
  cat >&2 <<EOF
  kube-apiserver  https://127.0.0.1:$APISERVER_PORT   (etcd http://127.0.0.1:$ETCD_PORT)
  Kafka           $(kafka_bootstrap)
  kubeconfig      $RUN/kubeconfig
  logs            $LOGS_DIR/
  use it:         source $RUN/env.sh
  stop it:        make env-down
EOF
}

main() {
  preflight
  # One up.sh per run directory at a time. start_bg closes fd 8 in the components, so the
  # lock ends with this script.
  mkdir -p "$RUN"
  exec 8>"$RUN/up.lock"
  flock -n 8 || die "another localenv/up.sh is already starting the environment in $RUN" "wait for it to finish, then 'make env-status'"
  if env_healthy; then
    ((${KAFKA_BROKERS:-1} == KAFKA_WANT)) ||
      die "the environment in $RUN is up with ${KAFKA_BROKERS:-1} Kafka broker(s), not the $KAFKA_WANT that HOOKLINE_LOCALENV_KAFKA_BROKERS asks for" \
        "stop it first (HOOKLINE_RUN_DIR=$RUN localenv/down.sh), or use another HOOKLINE_RUN_DIR"
    ok "the local environment in $RUN is already up and healthy; nothing to do"
    printf '  kubeconfig: %s\n  use it:     source %s\n' "$RUN/kubeconfig" "$RUN/env.sh" >&2
    exit 0
  fi
  if [[ -s $RUN/components ]] || compgen -G "$PIDS_DIR/*.pid" >/dev/null || compgen -G "$RUN/pods/*/*.pid" >/dev/null; then
    warn "found a stopped or half-started environment in $RUN; stopping what is left of it (by recorded pids)"
    "$LOCALENV_DIR/down.sh" --quiet
  fi

  trap on_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  fresh_run_dir
  allocate_ports
  info "generating certificates in $RUN/pki"
  make_pki
  start_etcd
  start_apiserver
  apply_crds
  start_controller_manager
  start_kafka
  start_podrunner
  write_env_sh
  UP_DONE=1
  print_summary
}

# One line, parsed whole before it runs: editing this file while it runs cannot derail it.
main "$@"; exit
