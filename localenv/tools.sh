#!/usr/bin/env bash
# Build or fetch every tool the local environment needs, into $HOOKLINE_CACHE (~/.cache/hookline):
#
#   etcd                                  go.etcd.io/etcd/server/v3  (Go module proxy)
#   kube-apiserver, kube-controller-manager, kubectl
#                                         k8s.io/kubernetes          (Go module proxy)
#   helm                                  helm.sh/helm/v3            (Go module proxy)
#   Kafka broker jars                     org.apache.kafka:kafka_2.13 (Maven Central)
#
# Usage: localenv/tools.sh [etcd] [k8s] [helm] [kafka]     (no argument: all, in that order)
#
# Idempotent: each finished step writes a stamp under $CACHE/stamps, so a warm run takes
# seconds. A binary already on PATH is reused only if its version matches exactly.
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "$0")/lib.sh"

STAMPS=$CACHE/stamps
TOOLS_LOGS=$CACHE/logs
mkdir -p "$STAMPS" "$TOOLS_LOGS"

# Both cores by default; set HOOKLINE_GO_PARALLEL=1 to leave one free for cargo.
GO_PARALLEL=${HOOKLINE_GO_PARALLEL:-$(nproc)}

stamp_ok() { [[ -f $STAMPS/$1 ]]; }
stamp_write() { printf 'built %s in %s\n' "$(date -Is)" "$2" >"$STAMPS/$1"; }

# Go settings for every build: caches under $CACHE, pure-Go static binaries, no toolchain
# download (the module's minimum Go version is checked instead, with a clear message).
go_env() {
  need_cmd go "install Go 1.25 or newer (https://go.dev/dl/) and put it on PATH"
  export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build
  export GOTOOLCHAIN=local CGO_ENABLED=0
  # -mod=mod: the wrapper modules start without go.sum; go fills it in from the proxy.
  export GOFLAGS="-mod=mod -buildvcs=false"
}

# go_at_least VERSION: the local Go toolchain is at least VERSION (e.g. 1.25.0).
go_at_least() {
  local have want=$1
  have=$(go env GOVERSION)
  have=${have#go}
  [[ $(printf '%s\n%s\n' "$want" "$have" | sort -V | sed -n 1p) == "$want" ]]
}

# mod_gomod MODULE@VERSION: download the module and print the path of its go.mod in the cache.
mod_gomod() {
  (cd "$CACHE" && go mod download -json "$1") | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])'
}

# on_path_with_version CMD WANT VERSION-CMD...: print CMD's path if it is on PATH (outside our
# cache) and VERSION-CMD's output contains WANT exactly as a word.
on_path_with_version() {
  local cmd=$1 want=$2 path
  shift 2
  path=$(command -v "$cmd" 2>/dev/null) || return 1
  [[ $(readlink -f "$path") != "$CACHE"/* ]] || return 1
  # Capture first: `grep -q` exiting early would SIGPIPE the producer and trip pipefail.
  local out
  out=$("$path" "$@" 2>/dev/null) || return 1
  grep -qw -- "$want" <<<"$out" || return 1
  printf '%s\n' "$path"
}

# go_build_logged NAME CMD...: run a go command with output to a log; on failure show its tail.
go_build_logged() {
  local name=$1 log=$TOOLS_LOGS/build-$1.log
  shift
  if ! "$@" >"$log" 2>&1; then
    printf '\n----- last 40 lines of %s -----\n' "$log" >&2
    tail -n 40 "$log" >&2
    die "building $name failed" "read the log above (full log: $log); if a download failed, check that proxy.golang.org is reachable and rerun"
  fi
}

# ---------------------------------------------------------------------------------------------
# etcd: the go.etcd.io/etcd/v3 root module uses local replace directives, so it cannot be
# built with `go install`. A wrapper module whose main calls etcdmain.Main builds the same
# server from the published go.etcd.io/etcd/server/v3 module.
build_etcd() {
  local out=$ETCD_BIN_DIR/etcd stamp=etcd-$ETCD_VERSION existing
  if stamp_ok "$stamp" && [[ -x $out ]]; then
    info "etcd $ETCD_VERSION: cached ($out)"
    return
  fi
  mkdir -p "$ETCD_BIN_DIR"
  if existing=$(on_path_with_version etcd "${ETCD_VERSION#v}" --version); then
    info "etcd $ETCD_VERSION: using $existing from PATH"
    ln -sf "$existing" "$out"
    stamp_write "$stamp" 0s
    return
  fi
  go_env
  local t0 src=$CACHE/src/etcd-$ETCD_VERSION
  t0=$(date +%s)
  info "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3 (cold: ~1-2 min on 2 cores)…"
  rm -rf "$src" && mkdir -p "$src"
  cat >"$src/go.mod" <<EOF
module hookline.local/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  cat >"$src/main.go" <<'EOF'
// Command etcd is the etcd server, built from the published go.etcd.io/etcd/server/v3 module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$src" && go_build_logged etcd go mod tidy)
  (cd "$src" && go_build_logged etcd go build -p "$GO_PARALLEL" -trimpath -ldflags "-s -w" -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  local reported
  # Whole output first: `| head` exiting early would SIGPIPE etcd and trip pipefail.
  reported=$("$out" --version)
  reported=${reported%%$'\n'*}
  grep -qw "${ETCD_VERSION#v}" <<<"$reported" || die "built etcd reports '$reported', expected $ETCD_VERSION" "delete $src and $out and rerun"
  stamp_write "$stamp" "$(elapsed "$t0")"
  ok "etcd $ETCD_VERSION built in $(elapsed "$t0") -> $out"
}

# ---------------------------------------------------------------------------------------------
# Kubernetes: k8s.io/kubernetes replaces every k8s.io/* staging module with ./staging/src/...,
# so `go install k8s.io/kubernetes/cmd/...@v` is refused. A wrapper module requires the release
# and replaces each `k8s.io/NAME v0.0.0` of the release's own go.mod with the published
# k8s.io/NAME v0.MINOR.PATCH, so the list always matches the release.
K8S_CMDS=(kube-apiserver kube-controller-manager kubectl)

k8s_binary_version() { # print "vX.Y.Z" reported by one of our k8s binaries
  case $1 in
    kubectl) "$2" version --client 2>/dev/null | sed -n 's/^Client Version: //p' ;;
    *) "$2" --version 2>/dev/null | sed -n 's/^Kubernetes //p' ;;
  esac
}

build_k8s() {
  local stamp=k8s-$K8S_VERSION cmd missing=0
  for cmd in "${K8S_CMDS[@]}"; do [[ -x $K8S_BIN_DIR/$cmd ]] || missing=1; done
  if stamp_ok "$stamp" && ((missing == 0)); then
    info "kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION: cached ($K8S_BIN_DIR)"
    return
  fi
  mkdir -p "$K8S_BIN_DIR"

  # Reuse binaries from PATH only if all three are exactly this release (e.g. /usr/bin/kubectl
  # v1.32 is not: kubectl is only supported within one minor version of the server).
  local found=() path
  for cmd in "${K8S_CMDS[@]}"; do
    path=$(command -v "$cmd" 2>/dev/null) || break
    [[ $(readlink -f "$path") != "$CACHE"/* ]] || break
    [[ $(k8s_binary_version "$cmd" "$path") == "$K8S_VERSION" ]] || break
    found+=("$path")
  done
  if ((${#found[@]} == ${#K8S_CMDS[@]})); then
    info "kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION: using ${found[*]} from PATH"
    for path in "${found[@]}"; do ln -sf "$path" "$K8S_BIN_DIR/$(basename "$path")"; done
    stamp_write "$stamp" 0s
    return
  fi

  go_env
  local t0 src=$CACHE/src/k8s-$K8S_VERSION gomod staging minor patch
  t0=$(date +%s)
  info "downloading k8s.io/kubernetes $K8S_VERSION and its modules (cold: a few hundred MB)…"
  gomod=$(mod_gomod "k8s.io/kubernetes@$K8S_VERSION") || die "could not download k8s.io/kubernetes@$K8S_VERSION" "check that proxy.golang.org is reachable (GOPROXY=$(go env GOPROXY))"

  local want_go
  want_go=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
  go_at_least "$want_go" || die "Kubernetes $K8S_VERSION needs Go >= $want_go, found $(go env GOVERSION)" "install a newer Go (https://go.dev/dl/)"

  # v1.35.4 -> v0.35.4: the version of the published staging modules of this release.
  minor=$(cut -d. -f2 <<<"${K8S_VERSION#v}")
  patch=$(cut -d. -f3 <<<"${K8S_VERSION#v}")
  staging=v0.$minor.$patch

  rm -rf "$src" && mkdir -p "$src"
  {
    echo "module hookline.local/k8s-build"
    echo
    echo "go $want_go"
    # godebug defaults only apply in the main module: carry the release's over.
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    sed -nE 's#^[[:space:]]+(k8s\.io/[A-Za-z0-9._-]+) v0\.0\.0$#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } >"$src/go.mod"
  local nrepl
  nrepl=$(grep -c ' => ' "$src/go.mod")
  ((nrepl > 10)) || die "found only $nrepl k8s.io/* v0.0.0 lines in $gomod" "the release's go.mod layout changed; adjust build_k8s in localenv/tools.sh"
  info "wrapper module $src/go.mod: k8s.io/kubernetes $K8S_VERSION + $nrepl staging replaces ($staging)"

  local ldflags pkg=k8s.io/component-base/version cgo=k8s.io/client-go/pkg/version
  local date_
  date_=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ldflags="-s -w"
  for p in "$pkg" "$cgo"; do
    ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date_"
  done

  info "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION in one go build (cold: ~6 min on 2 idle cores, 15+ on busy ones; log: $TOOLS_LOGS/build-k8s.log)…"
  local tmp=$K8S_BIN_DIR/.tmp
  rm -rf "$tmp" && mkdir -p "$tmp"
  (cd "$src" && go_build_logged k8s go build -p "$GO_PARALLEL" -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
  for cmd in "${K8S_CMDS[@]}"; do
    [[ $(k8s_binary_version "$cmd" "$tmp/$cmd") == "$K8S_VERSION" ]] || die "built $cmd does not report $K8S_VERSION" "delete $K8S_BIN_DIR and rerun"
    mv -f "$tmp/$cmd" "$K8S_BIN_DIR/$cmd"
  done
  rmdir "$tmp"
  stamp_write "$stamp" "$(elapsed "$t0")"
  ok "kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION built in $(elapsed "$t0") -> $K8S_BIN_DIR"
}

# ---------------------------------------------------------------------------------------------
# Helm 3 for the chart (`helm lint`, `helm template`, `helm install` into the local cluster).
build_helm() {
  local out=$HELM_BIN_DIR/helm stamp=helm-$HELM_VERSION existing
  if stamp_ok "$stamp" && [[ -x $out ]]; then
    info "helm $HELM_VERSION: cached ($out)"
    return
  fi
  mkdir -p "$HELM_BIN_DIR"
  if existing=$(on_path_with_version helm "$HELM_VERSION" version --template '{{.Version}}'); then
    info "helm $HELM_VERSION: using $existing from PATH"
    ln -sf "$existing" "$out"
    stamp_write "$stamp" 0s
    return
  fi
  go_env
  local t0 src=$CACHE/src/helm-$HELM_VERSION gomod want_go
  t0=$(date +%s)
  info "building helm $HELM_VERSION from helm.sh/helm/v3 (cold: ~1.5 min on 2 cores)…"
  gomod=$(mod_gomod "helm.sh/helm/v3@$HELM_VERSION") || die "could not download helm.sh/helm/v3@$HELM_VERSION" "check that proxy.golang.org is reachable"
  want_go=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
  go_at_least "$want_go" || die "helm $HELM_VERSION needs Go >= $want_go, found $(go env GOVERSION)" "install a newer Go"
  rm -rf "$src" && mkdir -p "$src"
  {
    printf 'module hookline.local/helm-build\n\ngo %s\n\nrequire helm.sh/helm/v3 %s\n' "$want_go" "$HELM_VERSION"
    # helm's own replace directives (if any) would be ignored in a dependency; copy them.
    sed -n '/^replace /p' "$gomod"
  } >"$src/go.mod"
  # As helm's Makefile does: its version, and the Kubernetes version `helm template` and
  # `helm lint` assume (.Capabilities.KubeVersion), derived from its k8s.io/client-go.
  local v=helm.sh/helm/v3/internal/version cgo kmaj kmin ldflags
  cgo=$(sed -nE 's#^[[:space:]]+k8s\.io/client-go v0\.([0-9]+)\..*#\1#p' "$gomod" | sed -n 1p)
  kmaj=1 kmin=${cgo:-20}
  ldflags="-s -w -X $v.version=$HELM_VERSION -X $v.gitTreeState=clean"
  for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $p.k8sVersionMajor=$kmaj -X $p.k8sVersionMinor=$kmin"
  done
  (cd "$src" && go_build_logged helm go build -p "$GO_PARALLEL" -trimpath -ldflags "$ldflags" -o "$out.tmp" helm.sh/helm/v3/cmd/helm)
  mv -f "$out.tmp" "$out"
  [[ $("$out" version --template '{{.Version}}') == "$HELM_VERSION" ]] || die "built helm does not report $HELM_VERSION" "delete $HELM_BIN_DIR and rerun"
  stamp_write "$stamp" "$(elapsed "$t0")"
  ok "helm $HELM_VERSION built in $(elapsed "$t0") -> $out"
}

# ---------------------------------------------------------------------------------------------
# Kafka: kafka_2.13 and its runtime dependencies are a complete broker; copy the jars into
# one libs dir (run with `java -cp "$KAFKA_LIBS/*" kafka.Kafka server.properties`).
fetch_kafka() {
  local stamp=kafka-$KAFKA_VERSION-log4j-$LOG4J2_VERSION
  if stamp_ok "$stamp" && compgen -G "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
    info "Kafka $KAFKA_VERSION: cached ($KAFKA_LIBS)"
    return
  fi
  need_cmd java "install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
  need_cmd mvn "install Maven 3 (e.g. apt-get install maven)"
  local t0 log=$TOOLS_LOGS/fetch-kafka.log tmp=$KAFKA_HOME/.libs.tmp
  t0=$(date +%s)
  info "fetching Kafka $KAFKA_VERSION + log4j2 $LOG4J2_VERSION from Maven Central (cold: ~5-30 s)…"
  rm -rf "$tmp" && mkdir -p "$tmp"
  if ! mvn -B -q -f "$LOCALENV_DIR/kafka/pom.xml" \
    -Dmaven.repo.local="$CACHE/m2" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j2.version="$LOG4J2_VERSION" -Dslf4j.version="$SLF4J_VERSION" \
    -DoutputDirectory="$tmp" \
    dependency:copy-dependencies >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "fetching Kafka $KAFKA_VERSION from Maven Central failed" "read the log above (full log: $log); check that repo.maven.apache.org is reachable"
  fi
  [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after the fetch" "see $log"
  rm -rf "$KAFKA_LIBS" && mv "$tmp" "$KAFKA_LIBS"
  stamp_write "$stamp" "$(elapsed "$t0")"
  ok "Kafka $KAFKA_VERSION fetched in $(elapsed "$t0"): $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $KAFKA_LIBS"
}

main() {
  local steps=("$@") t0
  ((${#steps[@]})) || steps=(etcd k8s helm kafka)
  need_cmd python3 "install python3 (used to parse go's JSON and to pick free ports)"
  # One tools.sh at a time per cache (`make test` and `make env-up` may race): the second waits.
  exec 9>"$CACHE/tools.lock"
  if ! flock -n 9; then
    info "another tools.sh is running on $CACHE; waiting for it to finish…"
    flock 9
  fi
  t0=$(date +%s)
  for s in "${steps[@]}"; do
    case $s in
      etcd) build_etcd ;;
      k8s) build_k8s ;;
      helm) build_helm ;;
      kafka) fetch_kafka ;;
      *) die "unknown step '$s'" "use any of: etcd k8s helm kafka" ;;
    esac
  done
  info "tools ready in $(elapsed "$t0")"
}

# One line, parsed whole before it runs: editing this file while it runs cannot derail it.
main "$@"; exit
