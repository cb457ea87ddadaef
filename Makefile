# Hookline — the two commands a newcomer needs are `make demo` and `make test`.
# Everything downloaded or built (Go binaries, Kafka, cargo target dir) is cached under
# $(HOOKLINE_CACHE), outside the checkout, so later runs are fast.

SHELL := /bin/bash
HOOKLINE_CACHE ?= $(HOME)/.cache/hookline
export HOOKLINE_CACHE
export CARGO_TARGET_DIR ?= $(HOOKLINE_CACHE)/target
CARGO ?= cargo
KEEP ?= 0

.PHONY: help tools build crds openapi env-up env-down env-status test demo image clean bench install-plugin

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

tools: ## build/download etcd, kube-apiserver, kube-controller-manager, kubectl and Kafka into the cache
	localenv/tools.sh

build: ## build every Hookline binary (debug)
	$(CARGO) build --workspace --bins

crds: ## regenerate the CRD YAML (crds/manifests and the chart's copy) from the Rust types
	$(CARGO) run -q -p hookline-crds --bin crdgen -- --out-dir crds/manifests
	$(CARGO) run -q -p hookline-crds --bin crdgen -- --out-dir charts/hookline/crds

env-up: tools ## start etcd, kube-apiserver, kube-controller-manager, Kafka and the pod runner on loopback
	localenv/up.sh

env-down: ## stop the local environment (by recorded pids)
	localenv/down.sh

env-status: ## show what is running
	localenv/status.sh

demo: ## Hookline end to end: environment, helm install, fraud-decisions example (KEEP=1 keeps it running)
	KEEP=$(KEEP) localenv/demo.sh

test: ## everything: tools, fmt, clippy, unit tests, environment, integration tests; stops the environment after
	localenv/test.sh

bench: ## benchmarks (release build, ~65 min with the memory point, publishing, replay and fail-over; QUICK=1 for a ~15 min subset, BENCH_ARGS for more flags); see BENCHMARKS.md
	bench/run.sh $(if $(filter 1,$(QUICK)),--quick) $(BENCH_ARGS)

install-plugin: ## build kubectl-hookline (release) into PREFIX (default ~/.local/bin), for `kubectl hookline`
	$(CARGO) build --release --locked -p hookline-kubectl
	install -d "$${PREFIX:-$$HOME/.local/bin}"
	install -m 0755 "$(CARGO_TARGET_DIR)/release/kubectl-hookline" "$${PREFIX:-$$HOME/.local/bin}/kubectl-hookline"
	@echo "installed $${PREFIX:-$$HOME/.local/bin}/kubectl-hookline; kubectl finds it when that directory is on PATH"

image: ## the container image (buildah, FROM scratch, static binaries) and a check that its binaries start
	localenv/image.sh

clean: ## remove the run directory (not the caches)
	localenv/down.sh || true
	rm -rf $(HOOKLINE_CACHE)/run

openapi: ## regenerate api/openapi.json from the Rust types (a unit test fails when it is stale)
	$(CARGO) run -q -p hookline-api -- --kafka-bootstrap unused --print-openapi > api/openapi.json
