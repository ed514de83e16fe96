# kproxy — developer and user entry points. Every target works on a fresh Debian 12 machine as root.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_TOOLS := iptables iptables-restore conntrack ip
# What bench/bench_userspace.py compares kproxy's relay with and loads it with (not needed by tests).
BENCH_TOOLS := haproxy iperf3 wrk socat

.PHONY: test demo lint bench system-deps bench-deps venv clean

# Install the Debian packages the kernel tests and the demo need, only when one is missing.
system-deps:
	@missing=0; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing iptables, conntrack, iproute2"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables conntrack iproute2 >/dev/null; \
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
	  $(PY) -m pytest -q tests

demo: system-deps $(STAMP)
	$(VENV)/bin/kproxy demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kproxy tests bench
	$(VENV)/bin/mypy --strict kproxy

bench: system-deps bench-deps $(STAMP)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
