# Skiff: `make up` starts a single-node cluster (`skiff up`); `make test` runs the suite.
# Both install the Debian packages they need first (as root, with apt-get).

SHELL := /bin/bash
CARGO ?= cargo
# `make up` / `make down` flags for `skiff up` / `skiff down`, e.g. UP_FLAGS="--runtime fake".
UP_FLAGS ?=
DOWN_FLAGS ?=
# `make store-up` keeps a 3-member store cluster here.
STORE_DIR ?= $(CURDIR)/.skiff
# One build profile for everything (optimized, see Cargo.toml), so `make up`, `make test`
# and the benchmarks share a single rocksdb build.
SKIFF := target/debug/skiff
DEB_PACKAGES := protobuf-compiler clang libclang-dev etcd-client etcd-server procps \
  containerd runc containernetworking-plugins busybox-static iptables iproute2

.PHONY: deps test-deps build up down store-up store-down test fmt clippy bench-vs-etcd bench-cluster bench-pod-start chaos fuzz

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest

build: deps
	$(CARGO) build --bin skiff

# What only the tests need: the Python `kubernetes` client and selenium, in a virtualenv
# of its own (so the machine's Python packages stay as they are), and Debian's Chromium
# and ChromeDriver for the dashboard test.
TEST_VENV := $(CURDIR)/target/test-venv
# Debian's docker-registry for the image pull tests, which start their own on a loopback
# port: its packaged service (which would listen on :5000) is stopped and disabled. And
# the filesystem of the stand-in nginx image (scripts/nginx-rootfs.sh).
TEST_DEB_PACKAGES := chromium chromium-driver curl openssl
test-deps: deps
	@missing=""; for p in $(TEST_DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@dpkg-query -W -f='$${Status}' docker-registry 2>/dev/null | grep -q "install ok installed" || { \
	  echo "installing: docker-registry"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null; \
	  if command -v systemctl >/dev/null; then systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi; }
	@scripts/nginx-rootfs.sh $(CURDIR)/target/test-images/nginx-rootfs
	@$(TEST_VENV)/bin/python -c 'import kubernetes, selenium' 2>/dev/null || { \
	  python3 -m venv $(TEST_VENV) && \
	  $(TEST_VENV)/bin/pip install -q --disable-pip-version-check kubernetes==37.0.2 selenium==4.27.1; }

# A whole single-node cluster in one background process, data under /var/lib/skiff
# (`skiff up --help`); it prints the `export KUBECONFIG=...` line.
up: build
	@$(SKIFF) up $(UP_FLAGS)

# Stops it and removes what its node made; the data stays (DOWN_FLAGS=--purge removes it).
down:
	@$(SKIFF) down $(DOWN_FLAGS)

# Just a 3-member store cluster on 127.0.0.1:2379,22379,32379 (for etcdctl).
store-up: build
	@scripts/up.sh "$(STORE_DIR)" "$(SKIFF)"

store-down:
	@scripts/down.sh "$(STORE_DIR)"

# The whole suite: unit tests of every crate and the end-to-end tests in tests/,
# which start real members and drive them with etcdctl, etcd-client, etcd 3.4, kubectl
# and the Python kubernetes client.
# The tests run the `skiff` binary cargo builds for them (CARGO_BIN_EXE_skiff): building
# it separately with `cargo build` would compile much of the tree twice, since the test
# dependencies (kube, k8s-openapi) unify other features.
test: deps test-deps
	SKIFF_PYTHON=$(TEST_VENV)/bin/python SKIFF_NGINX_ROOTFS=$(CURDIR)/target/test-images/nginx-rootfs \
	  $(CARGO) nextest run --workspace --no-fail-fast

# Longer fuzzing than `make test` runs, from the corpora in apiserver/fuzz and store/fuzz:
# first coverage-guided, with cargo-fuzz and libFuzzer (nightly Rust; both installed if
# missing), FUZZ_SECONDS per target (the API server's six, the store's txn), new inputs
# kept in target/fuzz-corpus and crashes in <crate>/fuzz/artifacts; then the seeded
# mutation fuzzers, FUZZ_ITERATIONS inputs per target.
FUZZ_SECONDS ?= 60
FUZZ_ITERATIONS ?= 300000
FUZZ_TARGETS := protobuf objects patches selectors certificates tokens
fuzz: deps
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd apiserver && for t in $(FUZZ_TARGETS); do \
	  mkdir -p ../target/fuzz-corpus/$$t && \
	  cargo +nightly fuzz run --sanitizer none $$t ../target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 || exit 1; \
	done
	mkdir -p target/fuzz-corpus/txn && rm -rf target/fuzz-store-db
	cd store && SKIFF_FUZZ_DIR=$(CURDIR)/target/fuzz-store-db cargo +nightly fuzz run --sanitizer none txn \
	  ../target/fuzz-corpus/txn fuzz/corpus/txn -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
	  -rss_limit_mb=2048 -print_final_stats=1; s=$$?; rm -rf $(CURDIR)/target/fuzz-store-db; exit $$s
	SKIFF_FUZZ_ITERATIONS=$(FUZZ_ITERATIONS) $(CARGO) nextest run --workspace -E 'test(/fuzz::/)'

# Side-by-side benchmark against etcd 3.4 on this machine; rewrites docs/PERFORMANCE.md.
# Takes about 10 minutes; QUICK=1 runs a tenth of the requests.
bench-vs-etcd: deps
	scripts/bench-vs-etcd.sh

# The control plane at scale with simulated nodes (docs/PERFORMANCE.md); override with
# e.g. `make bench-cluster BENCH_CLUSTER="--nodes 100 --pods 3000"`.
BENCH_CLUSTER ?= --nodes 1000 --pods 30000 --deployments 30
bench-cluster: build
	target/debug/skiff bench-cluster $(BENCH_CLUSTER)

# Pod start latency on a real containerd node (docs/PERFORMANCE.md); needs root.
bench-pod-start: build
	target/debug/skiff bench-pod-start --pods 100 --concurrency 10

# Long chaos runs (docs/chaos.md): 60 s on 3 and on 5 members, every fault kind.
chaos: build
	target/debug/skiff chaos run --members 3 --duration 60s --faults all --seed 3 --out chaos-out/3
	target/debug/skiff chaos run --members 5 --duration 60s --faults all --seed 5 --out chaos-out/5

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
