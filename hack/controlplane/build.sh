#!/usr/bin/env bash
# Build the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler) from the pinned Go modules beside this script, into a cache outside
# the repository keyed by the versions and the go.sum contents: a second run only
# prints the directory. Prints the bin directory on stdout; progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MEMWARDEN_CACHE:-$HOME/.cache/memwarden}"
kube_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/kube/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$here/etcd/go.mod")"
key="$(cat "$here/kube/go.sum" "$here/etcd/go.sum" "$here/kube/go.mod" "$here/etcd/go.mod" | sha256sum | cut -c1-12)"
bin="$cache/controlplane/k8s-${kube_version}_etcd-${etcd_version}_${key}/bin"

wanted=(etcd kube-apiserver kube-controller-manager kube-scheduler)
missing=0
for b in "${wanted[@]}"; do [[ -x "$bin/$b" ]] || missing=1; done
if [[ $missing == 0 ]]; then
    echo "$bin"
    exit 0
fi

mkdir -p "$bin"
tmp="$(mktemp -d "$bin/../build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
echo "building etcd ${etcd_version} (cold builds take minutes; cached at $bin)" >&2
(cd "$here/etcd" && go build -mod=readonly -trimpath -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
echo "building kube-apiserver, kube-controller-manager, kube-scheduler ${kube_version}" >&2
# The version stamp that `make` in kubernetes/kubernetes would set (hack/lib/version.sh),
# so `kubectl version` reports the real release instead of v0.0.0-master.
minor="${kube_version#v1.}"; minor="${minor%%.*}"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=${kube_version} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(cd "$here/kube" && go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
for b in "${wanted[@]}"; do mv -f "$tmp/$b" "$bin/$b"; done
echo "control plane built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
