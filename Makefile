# Switchboard: `make run` starts a local stack, `make test` runs every test against real etcd.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: deps build run test fuzz lint fmt clean

# Installs the system packages the build and the tests need, when they are missing.
deps:
	@missing=""; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v etcdctl >/dev/null 2>&1 || missing="$$missing etcd-client"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		echo "installing$$missing"; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi

build: deps
	$(CARGO) build --workspace --bins

# A coordinator on its private etcd (--dev) and one sidecar serving the namespace `catalog`.
run: build
	scripts/run-local.sh

# The end-to-end tests start the binaries, so they are built first.
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast

# The long fuzz run: every target of tests/tests/fuzz.rs for FUZZ_SECONDS (default 600) each,
# one after the other; `make test` runs one short round of each.
FUZZ_SECONDS ?= 600
fuzz: deps
	SWITCHBOARD_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test -p switchboard-tests --test fuzz -- --test-threads=1 --nocapture

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .switchboard
