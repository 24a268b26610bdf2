#!/usr/bin/env bash
# System packages the test suite needs beyond Python (real servers, not mocks).
# Installs only what is missing; needs root (CI runs as root) and Debian's apt.
set -euo pipefail

# package -> a command it provides, to tell whether it is already there
declare -A PACKAGES=(
    [default-jre-headless]=java
    [maven]=mvn
    [chromium]=chromium
    [prometheus]=promtool # the server and promtool: tests/test_prometheus.py, test_deploy.py
    [haproxy]=haproxy     # checks and runs deploy/haproxy/haproxy.cfg: tests/test_deploy.py
)
# kubectl, whose built-in kustomize renders deploy/k8s for tests/test_deploy.py, comes with the
# machine images; Debian's own kubernetes-client (1.20) is too old for that kustomization.

missing=()
for pkg in "${!PACKAGES[@]}"; do
    command -v "${PACKAGES[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
