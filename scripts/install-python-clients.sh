#!/usr/bin/env bash
# Installs the test clients of other ecosystems into .deps/python (ignored by git): the
# official OpenFeature Python SDK and its OFREP provider, which tests/tests/openfeature.rs
# drives against a real sidecar. Pinned, so that a new release cannot change what the test
# checks; run with PYTHONPATH=.deps/python.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.deps/python
packages=(openfeature-sdk==0.10.0 openfeature-provider-ofrep==0.3.0)
if PYTHONPATH="$target" python3 -c 'import openfeature.contrib.provider.ofrep' 2>/dev/null; then
	exit 0
fi
echo "installing the OpenFeature Python SDK and its OFREP provider into $target"
if ! python3 -m pip --version >/dev/null 2>&1; then
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq && $sudo apt-get install -y -qq python3-pip
fi
# --target keeps the packages out of the interpreter's own environment, so Debian's
# "externally managed" guard has nothing to protect here.
PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
	python3 -m pip install -q --disable-pip-version-check --target "$target" "${packages[@]}"
PYTHONPATH="$target" python3 -c 'import openfeature.contrib.provider.ofrep'
