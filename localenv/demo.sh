#!/usr/bin/env bash
# `make demo`: Hookline end to end on the local environment, as a new user would meet it.
#   build → local Kubernetes + Kafka → helm install hookline (controller and tenant API) → the
#   fraud-decisions example (3 Webhooks, a verifying receiver, a producer) → kubectl get
#   webhooks -A, and the address of the tenant API (HOOKLINE_API=http://<pod IP>:8080).
# Leaves nothing running unless KEEP=1 (then `make env-down` stops everything).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export HOOKLINE_CACHE="${HOOKLINE_CACHE:-$HOME/.cache/hookline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOOKLINE_CACHE/target}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
KEEP="${KEEP:-0}"
NS=acme-fraud
EX=examples/fraud-decisions
start=$(date +%s)
step() { printf '\n\033[1m==> [%4ss] %s\033[0m\n' "$(( $(date +%s) - start ))" "$*"; }

step "1/8 tools: etcd, kube-apiserver, kube-controller-manager, kubectl, helm, Kafka (first run: ~15-25 min of Go builds on 2 cores; cached after)"
localenv/tools.sh

step "2/8 build Hookline (first run: ~5 min; incremental after)"
cargo build --workspace --bins 2>&1 | grep -E '^(error|warning: unused)|Compiling hookline|Finished' || true
for b in hookline-controller hookline-dispatcher hookline-api; do
  test -x "$CARGO_TARGET_DIR/debug/$b" || { echo "build failed ($b is missing): run 'cargo build --workspace --bins' to see why" >&2; exit 1; }
done

started_env=0
rx_pid=""
cleanup() {
  [[ -n $rx_pid ]] && kill "$rx_pid" 2>/dev/null || true
  if [[ $KEEP != 1 && $started_env == 1 ]]; then
    step "stop the local environment (KEEP=1 keeps it running)"
    localenv/down.sh
  fi
}
trap cleanup EXIT

step "3/8 local environment (etcd, kube-apiserver, kube-controller-manager, Kafka, pod runner)"
if localenv/status.sh --quiet; then echo "already up; leaving it running afterwards"; else started_env=1; localenv/up.sh; fi
# shellcheck disable=SC1091
source "${HOOKLINE_RUN_DIR:-$HOOKLINE_CACHE/run}/env.sh"

step "4/8 Python packages for the example (standardwebhooks, confluent-kafka) into $HOOKLINE_CACHE/venv"
if [[ ! -x $HOOKLINE_CACHE/venv/bin/python ]]; then python3 -m venv "$HOOKLINE_CACHE/venv"; fi
"$HOOKLINE_CACHE/venv/bin/pip" install -q -r "$EX/requirements.txt"
PY="$HOOKLINE_CACHE/venv/bin/python"

step "5/8 helm install hookline (receivers here are on loopback, so the demo allows http and 127.0.0.0/8)"
kubectl apply --server-side --force-conflicts -f charts/hookline/crds/ >/dev/null
helm upgrade --install hookline charts/hookline --namespace hookline-system --create-namespace \
  --set kafka.bootstrapServers="$HOOKLINE_KAFKA_BOOTSTRAP" --set image.tag=dev \
  --set delivery.allowHttp=true --set 'delivery.allowCidrs={127.0.0.0/8}' \
  --set kafka.topics.partitions=3 --set kafka.topics.replicationFactor=1
kubectl -n hookline-system rollout status deployment/hookline-controller --timeout=120s
kubectl -n hookline-system rollout status deployment/hookline-api --timeout=120s
# The pod runner gives every Pod its own loopback IP (status.podIP) and Services get no
# endpoints on loopback, so the API is reached on its Pod's IP. A Pod still terminating from
# an earlier install has a deletionTimestamp: skip it.
api_ip=$(kubectl -n hookline-system get pod -l app.kubernetes.io/name=hookline-api \
  -o jsonpath='{range .items[*]}{.metadata.deletionTimestamp}{" "}{.status.podIP}{"\n"}{end}' | awk 'NF == 1 {print $1; exit}')
[[ -n $api_ip ]] || { echo "demo: hookline-api has no running Pod; see kubectl -n hookline-system describe pods" >&2; exit 1; }
HOOKLINE_API="http://$api_ip:8080"

step "6/8 the fraud-decisions tenant: 3 Webhooks (all decisions, rejections only, reviews only)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
kubectl apply -f "$EX/namespace.yaml"
sed "s#RECEIVER#http://127.0.0.1:$port#" "$EX/webhooks.yaml" | kubectl apply -f -
work=$(mktemp -d)
for pair in all=all-decisions rejected=rejections review=reviews; do
  path=${pair%%=*}; wh=${pair#*=}
  for _ in $(seq 60); do
    kubectl -n $NS get secret "$wh-signing" >/dev/null 2>&1 && break; sleep 1
  done
  kubectl -n $NS get secret "$wh-signing" -o jsonpath='{.data.secret}' | base64 -d > "$work/$path.secret"
done
"$PY" "$EX/receiver.py" --port "$port" --log "$work/received.jsonl" \
  --secret-file all="$work/all.secret" --secret-file rejected="$work/rejected.secret" --secret-file review="$work/review.secret" &
rx_pid=$!
kubectl -n $NS wait --for=condition=Ready webhook --all --timeout=180s
kubectl -n $NS get webhooks

step "7/8 produce decisions to Kafka topic hookline.$NS.events (keyed by transaction id)"
out=$("$PY" "$EX/producer.py" --bootstrap "$HOOKLINE_KAFKA_BOOTSTRAP" --namespace $NS --count 60 --rate 40 --seed 7)
echo "$out"
sent=$(sed -n 's/^producer: \([0-9]*\) events.*/\1/p' <<<"$out")
for _ in $(seq 120); do
  got=$(grep -c '"path": "all"' "$work/received.jsonl" 2>/dev/null || true)
  [[ ${got:-0} -ge $sent ]] && break; sleep 1
done
echo "receiver verified ${got:-0} of $sent events on /all"
[[ ${got:-0} -ge $sent ]] || { echo "demo: not every event arrived; see kubectl -n $NS describe webhooks and $HOOKLINE_CACHE/run/pods/" >&2; exit 1; }
sleep 3 # let the dispatcher write its status counters

step "8/8 what Kubernetes says, and what the tenant API says"
kubectl get webhooks -A
# The customer's side: a ServiceAccount of the tenant bound to hookline-tenant-edit; its own
# token is all the API needs (TokenReview, then every call runs as that identity).
kubectl -n $NS create serviceaccount console --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n $NS create rolebinding console-edit --clusterrole=hookline-tenant-edit --serviceaccount=$NS:console \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
TOKEN=$(kubectl -n $NS create token console)
api() { curl -sS --max-time 10 -H "Authorization: Bearer $TOKEN" "$HOOKLINE_API/api/v1/tenants/$NS/$1"; }
logged=0
for _ in $(seq 60); do
  logged=$(api "stats?window=1h&webhook=all-decisions" | python3 -c 'import json,sys; t=json.load(sys.stdin)["total"]; print(t["delivered"])' 2>/dev/null || echo 0)
  [[ ${logged:-0} -ge $sent ]] && break; sleep 1
done
echo "delivery log (GET $HOOKLINE_API/api/v1/tenants/$NS/stats): ${logged:-0} of $sent deliveries to all-decisions recorded as delivered"
[[ ${logged:-0} -ge $sent ]] || { echo "demo: the delivery log did not catch up; see $HOOKLINE_CACHE/run/pods/hookline-system_hookline-api-*/" >&2; exit 1; }
event=$(api "deliveries?webhook=all-decisions&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["eventId"])')
echo "what became of event $event (GET …/deliveries/$event):"
api "deliveries/$event" | python3 -m json.tool

# Publishing over HTTP, twice with one Idempotency-Key: 202 both times, delivered once.
kubectl -n $NS create serviceaccount decisions --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n $NS create rolebinding decisions-publish --clusterrole=hookline-publisher --serviceaccount=$NS:decisions \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
PUB=$(kubectl -n $NS create token decisions)
idem="demo-$(date +%s)"
for copy in 1 2; do
  printf 'POST …/events (copy %s, Idempotency-Key %s): ' "$copy" "$idem"
  curl -sS --max-time 10 -H "Authorization: Bearer $PUB" -H 'content-type: application/json' -H "Idempotency-Key: $idem" \
    "$HOOKLINE_API/api/v1/tenants/$NS/events" \
    -d '{"type":"transaction.approved","key":"tx_demo","data":{"transactionId":"tx_demo","decision":"APPROVE"}}'
  echo
done
fate=""
for _ in $(seq 60); do
  fate=$(api "deliveries/$idem" | python3 -c 'import json,sys; d=[x for x in json.load(sys.stdin)["deliveries"] if x["webhook"]=="all-decisions"][0]; print(d["status"], d["duplicates"])' 2>/dev/null || true)
  [[ $fate == "delivered 1" ]] && break; sleep 1
done
echo "delivery log for $idem at all-decisions: ${fate:-nothing} (status, duplicates suppressed)"
[[ $fate == "delivered 1" ]] || { echo "demo: the published event was not delivered once with one duplicate suppressed" >&2; exit 1; }

cat <<EOF

The tenant API (hookline-api): callers authenticate with their own Kubernetes token and RBAC decides.
  export HOOKLINE_API=$HOOKLINE_API TOKEN=\$(kubectl -n $NS create token console)
  curl -s -H "Authorization: Bearer \$TOKEN" \$HOOKLINE_API/api/v1/tenants/$NS/webhooks
  (more in the README, "The tenant API")

What to try next:
  kubectl -n $NS describe webhook all-decisions                 # conditions, events, delivery status
  kubectl -n $NS annotate webhook reviews hookline.dev/test=\$(date +%s) --overwrite   # a signed test send; see status.lastTest
  kubectl -n $NS patch webhook rejections --type merge -p '{"spec":{"paused":true}}'  # pause deliveries
  kubectl -n $NS annotate webhook all-decisions hookline.dev/rotate-secret=\$(date +%s) # rotate the signing key
  curl -s http://\$(kubectl -n hookline-system get pod -l app.kubernetes.io/name=hookline-dispatcher -o jsonpath='{.items[0].status.podIP}'):9090/metrics | grep hookline_
EOF
if [[ $KEEP == 1 ]]; then
  echo "The environment keeps running (KEEP=1): source $HOOKLINE_CACHE/run/env.sh; make env-down when done."
else
  echo "Run 'make demo KEEP=1' to keep the environment running and try these."
fi
step "done in $(( $(date +%s) - start ))s"
