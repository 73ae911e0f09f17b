# Kiln — `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_STAMP := .kiln/.system-deps
export KUBECONFIG := $(CURDIR)/.kiln/kubeconfig

.PHONY: demo test test-gpu unit integration lint bench cluster-up cluster-down cluster-status system-deps binaries clean \
	chart-sync chart-lint e2e e2e-node node-binaries node-images node-up node-down

# Debian packages the project needs beyond a stock Python machine (the Kubernetes
# build toolchain is installed by tests/cluster/build-binaries.sh on first use). gcc and
# python3-dev build the server's one C module (kiln_server._payload_chunks, payload logging).
SYSTEM_PACKAGES := openssl wrk gcc python3-dev

$(SYSTEM_STAMP):
	@mkdir -p .kiln
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "[kiln] installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
	@touch $@

system-deps: $(SYSTEM_STAMP)

$(STAMP): pyproject.toml setup.py server-image/kiln_server/_payload_chunks.c | $(SYSTEM_STAMP)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@$(PY) -c "import kiln_server._payload_chunks" || { echo "[kiln] kiln_server._payload_chunks did not build: \
	payload logging needs gcc and python3-dev (make system-deps)"; exit 1; }
	@touch $@

binaries: $(STAMP)
	@bash tests/cluster/build-binaries.sh

cluster-up: binaries
	@$(PY) -m kiln_local up

cluster-down:
	@if [ -x $(PY) ]; then $(PY) -m kiln_local down; else echo "[kiln] nothing to stop"; fi

cluster-status: $(STAMP)
	@$(PY) -m kiln_local status

demo: cluster-up
	@$(PY) -m kiln_local.demo

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q -rs

integration: binaries
	$(PY) -m pytest tests/integration -q -rs

test: binaries
	$(PY) -m pytest tests/unit tests/integration -q -rs -p no:cacheprovider

# The trainer's CUDA path (tests/gpu): needs an NVIDIA GPU and xgboost's CUDA build; fails, never skips, without.
# Not part of `make test` (CI has no GPU).
test-gpu: $(STAMP)
	$(PY) -m pytest tests/gpu -q -rs -s -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check .

bench: binaries
	$(PY) bench/run_all.py

# The chart's CRDs are copies of crds/ made here, never by hand (a unit test compares them).
chart-sync: $(STAMP)
	$(PY) charts/sync_crds.py

chart-lint: $(STAMP)
	$(PY) charts/render.py --lint
	$(PY) charts/render.py | $(PY) charts/pod_security.py

# kind + Docker + helm: runs where they exist, skips with the reason elsewhere.
e2e: $(STAMP)
	$(PY) -m pytest tests/e2e -q -rs

# The real node (docs/real-node.md): Kiln's images built with buildah on a debootstrap base and run by a real
# kubelet (containerd, runc, CNI, kube-proxy), a second instance beside the simulator cluster, state in .kiln-node/.
# Root, Debian; installs its Debian packages and compiles kubelet and kube-proxy on first use.
NODE_ENV := KILN_STATE_DIR=$(CURDIR)/.kiln-node

node-binaries: $(STAMP)
	@bash tests/cluster/build-node.sh

node-images: node-binaries
	@$(NODE_ENV) $(PY) -m kiln_local.images build

node-up: node-binaries
	@$(NODE_ENV) $(PY) -m kiln_local.realnode up

node-down:
	@if [ -x $(PY) ]; then $(NODE_ENV) $(PY) -m kiln_local.realnode down; else echo "[kiln] nothing to stop"; fi

# The chart's iris lifecycle in real containers; never skipped (a missing prerequisite fails it, with the reason).
e2e-node: node-binaries
	$(NODE_ENV) $(PY) -m pytest tests/e2e/test_real_node.py -q -rs -s -p no:cacheprovider

clean: cluster-down
	rm -rf .kiln
