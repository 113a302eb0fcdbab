#!/usr/bin/env bash
# Build the helm CLI from the pinned Go module beside this script (go.mod/go.sum), into
# a cache outside the repository keyed by the version and the go.sum contents: a second
# run only prints the path. Prints the helm binary's path on stdout; progress goes to
# stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MEMWARDEN_CACHE:-$HOME/.cache/memwarden}"
# shellcheck source=../lib/gobuild.sh
source "$here/../lib/gobuild.sh"
helm_version="$(gobuild_version "helm.sh/helm/v3")"
key="$(gobuild_key)"
dir="$cache/helm/${helm_version}_${key}"
bin="$dir/helm"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

gobuild_scratch "$dir"
echo "building helm ${helm_version} (a cold build takes minutes; cached at $dir)" >&2
# The version stamps that helm's own Makefile sets: `helm version` reports the release,
# and `helm template`/`helm lint` default .Capabilities.KubeVersion to the minor of the
# client-go that helm is built with (as in the release binaries).
client_go="$(cd "$here" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/client-go)"
k8s_minor="${client_go#v0.}"; k8s_minor="${k8s_minor%%.*}"
ldflags="-w -s"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=${helm_version}"
ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${k8s_minor}"
done
(cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" \
    -o "$tmp/helm" helm.sh/helm/v3/cmd/helm)
mv -f "$tmp/helm" "$bin"
echo "helm built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
