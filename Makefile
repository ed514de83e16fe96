# kproxy — developer and user entry points. Every target works on a fresh Debian 12 machine as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := iptables iptables-restore conntrack ip nft
# What bench/bench_userspace.py compares kproxy's relay with and loads it with (not needed by tests).
BENCH_TOOLS := haproxy iperf3 wrk socat

.PHONY: test fuzz demo lint bench system-deps bench-deps venv clean image kind-up kind-load deploy kind-smoke

# --- running in a cluster (needs Docker, kind and kubectl; not used by the tests) ----------
IMAGE ?= kproxy:0.1.0
KIND_CLUSTER ?= kind
# deploy/ (kproxy instead of kube-proxy) or deploy/beside-kube-proxy/ (kproxy beside it).
VARIANT ?= deploy
KIND_CONFIG ?= $(VARIANT)/kind-config.yaml
# The API server as the nodes reach it directly (never through a Service ClusterIP).
CONTROL_PLANE_ENDPOINT ?= https://$(KIND_CLUSTER)-control-plane:6443
DAEMONSET ?= $(if $(findstring beside,$(VARIANT)),kproxy-beside-kube-proxy,kproxy)
# Beside kube-proxy, the smoke Service is labelled for kproxy.
SMOKE_PROXY ?= $(if $(findstring beside,$(VARIANT)),kproxy,)

# Install the Debian packages the kernel tests and the demo need, only when one is missing.
system-deps:
	@missing=0; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing iptables, conntrack, iproute2, nftables"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables conntrack iproute2 nftables >/dev/null; \
	fi

# The load generators and the reference proxy of the benchmarks, only when one is missing.
bench-deps:
	@missing=0; for t in $(BENCH_TOOLS); do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing $(BENCH_TOOLS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_TOOLS) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
	@echo "installing kproxy and its development extras into $(VENV)"
	@$(VENV)/bin/pip install -q -e '.[dev]' > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

test: system-deps $(STAMP)
	KPROXY_REQUIRE_KERNEL_TESTS=$${KPROXY_REQUIRE_KERNEL_TESTS:-$$( [ "$$(id -u)" = 0 ] && echo 1 || echo 0 )} \
	  $(PY) -m pytest -q -n 2 --dist loadgroup tests

# The fuzz tests (tests/fuzzing) for FUZZ_SECONDS in all: each test runs batch after batch
# of fresh hypothesis examples until its share of the time is up, or stops at the first
# failure (kept in .hypothesis/ and replayed first next time). make test runs them bounded.
FUZZ_SECONDS ?= 600
fuzz: system-deps $(STAMP)
	KPROXY_FUZZ_SECONDS=$(FUZZ_SECONDS) \
	KPROXY_REQUIRE_KERNEL_TESTS=$${KPROXY_REQUIRE_KERNEL_TESTS:-$$( [ "$$(id -u)" = 0 ] && echo 1 || echo 0 )} \
	  $(PY) -m pytest -q -x -s tests/fuzzing

demo: system-deps $(STAMP)
	$(VENV)/bin/kproxy demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kproxy tests bench
	$(VENV)/bin/mypy --strict kproxy

bench: system-deps bench-deps $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Build the image (Docker).
image:
	docker build -t $(IMAGE) -f deploy/Dockerfile .

# A kind cluster; without kube-proxy unless VARIANT=deploy/beside-kube-proxy.
kind-up:
	kind create cluster --name $(KIND_CLUSTER) --config $(KIND_CONFIG)

# Make the image available on the kind nodes without a registry.
kind-load:
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)

# RBAC, ConfigMap (server set to CONTROL_PLANE_ENDPOINT) and DaemonSet; waits for the rollout.
deploy:
	kubectl apply -f deploy/rbac.yaml
	sed 's|server: https://kind-control-plane:6443|server: $(CONTROL_PLANE_ENDPOINT)|' \
	  $(VARIANT)/configmap.yaml | kubectl apply -f -
	sed 's|image: kproxy:0.1.0|image: $(IMAGE)|' $(VARIANT)/daemonset.yaml | kubectl apply -f -
	kubectl -n kube-system rollout status daemonset $(DAEMONSET) --timeout=180s

# Two web pods behind a ClusterIP; a client pod must get an answer through it.
kind-smoke:
	kubectl apply -f deploy/smoke.yaml
	@if [ -n "$(SMOKE_PROXY)" ]; then kubectl label --overwrite service smoke-web \
	  service.kubernetes.io/service-proxy-name=$(SMOKE_PROXY); fi
	kubectl rollout status deployment smoke-web --timeout=180s
	ip=$$(kubectl get service smoke-web -o jsonpath='{.spec.clusterIP}'); \
	kubectl run smoke-client --rm -i --restart=Never --image=curlimages/curl:8.10.1 \
	  --command -- curl -sf --max-time 5 --retry 10 --retry-all-errors http://$$ip/hostname \
	  && echo "kind-smoke passed: ClusterIP $$ip answered"
