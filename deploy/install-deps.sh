#!/usr/bin/env bash
# The system tools the test suite runs beyond Python (real servers and checkers, not mocks).
# Installs only what is missing, as root: Debian packages through apt, kustomize through Go.
# Not root and something missing: names it and the one command to run, installs nothing.
set -euo pipefail

# package -> a command it provides, to tell whether it is already there
declare -A PACKAGES=(
    [default-jre-headless]=java # Kafka, started from its jars (deploy/kafka/kafka.py)
    [maven]=mvn                 # fetches those jars
    [chromium]=chromium         # the browser tests (Playwright drives it)
    [prometheus]=promtool       # the server and promtool: test_prometheus.py, test_deploy.py
    [haproxy]=haproxy           # checks and runs deploy/haproxy/haproxy.cfg: test_deploy.py
)
# kustomize renders deploy/k8s for test_deploy.py. Debian's kubectl (1.20) is too old for that
# kustomization; v5.5.0 is the renderer kubectl 1.32 embeds, built from the Go module proxy.
KUSTOMIZE=sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
# haproxy is in /usr/sbin and Go in /usr/local/go/bin: not on every user's PATH, nor sudo's.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/usr/local/go/bin"

missing=()
for pkg in "${!PACKAGES[@]}"; do
    command -v "${PACKAGES[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
command -v kustomize >/dev/null 2>&1 || missing+=(kustomize)
((${#missing[@]})) || exit 0

if ((EUID != 0)); then
    echo "missing: ${missing[*]}; to install them as root: sudo make deps" >&2
    exit 1
fi
if [[ ${missing[-1]} == kustomize ]]; then # last in the list when missing
    unset 'missing[-1]'
    command -v go >/dev/null || { echo "kustomize is built with Go 1.22+: install Go" >&2; exit 1; }
    echo "building kustomize ${KUSTOMIZE#*@} into /usr/local/bin (go install)"
    GOBIN=/usr/local/bin go install "$KUSTOMIZE"
fi
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
