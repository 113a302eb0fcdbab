#!/usr/bin/env bash
# Install everything memwarden's demo, tests and images need, idempotently: Debian packages,
# uv (in a cache outside the repo), the locked Python environment (.venv), the local
# control plane binaries and the leaky Go workload (both cached outside the repo).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MEMWARDEN_CACHE:-$HOME/.cache/memwarden}"
uv_version="0.13.8"
# lua5.4: the Argo CD health checks' test (test_argocd_health.py).
# openjdk-17-jre-headless and nodejs: the runtime-contract tests start a real JVM and Node.js
# with the JAVA_TOOL_OPTIONS / NODE_OPTIONS memwarden injects (tests/integration/test_runtime_admission.py).
# mmdebstrap, umoci, skopeo: `make image` builds OCI archives with the first; tests read
# them back with the other two (docs/image.md).
debian_packages=(
    prometheus prometheus-alertmanager gdb openjdk-17-jre-headless nodejs lua5.4
    mmdebstrap umoci skopeo
)

missing=()
for pkg in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
    echo "bootstrap: installing Debian packages: ${missing[*]}" >&2
    sudo_cmd=""; [[ $(id -u) == 0 ]] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    # RUNLEVEL=1: the packages' init scripts must not start system-wide daemons; the
    # project starts its own Prometheus and Alertmanager on loopback ports.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo_cmd apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
fi

uv="$cache/uv-$uv_version/bin/uv"
if [[ ! -x "$uv" ]]; then
    echo "bootstrap: installing uv $uv_version into $cache" >&2
    python3 -m venv "$cache/uv-$uv_version"
    "$cache/uv-$uv_version/bin/pip" install -q "uv==$uv_version"
fi
(cd "$repo" && UV_PYTHON_DOWNLOADS=never "$uv" sync --locked --quiet --compile-bytecode)

bash "$repo/hack/controlplane/build.sh" >/dev/null
bash "$repo/hack/helm/build.sh" >/dev/null
# The S3-compatible server of the object-storage evidence tests (tests/memwarden_testing/s3.py).
bash "$repo/hack/seaweedfs/build.sh" >/dev/null
if [[ -f "$repo/hack/build-leaky.sh" ]]; then
    bash "$repo/hack/build-leaky.sh" >/dev/null
fi
