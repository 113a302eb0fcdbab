#!/usr/bin/env bash
# Build the VPA admission-controller from the pinned Go module beside this script
# (go.mod/go.sum), into a cache outside the repository keyed by the version and the
# go.sum contents: a second run only prints the path. Prints the binary's path on stdout
# (VPA's CRDs, deploy/vpa-v1-crd-gen.yaml of the same module, are copied beside it);
# progress goes to stderr.
#
# One change, nothing else: upstream main.go serves the webhook on ":<port>" (every
# interface) with no flag to choose the address; this build serves it on 127.0.0.1:<port>,
# as everything here listens on loopback only. The build copies the package's own files
# (package main: main.go, certs.go, config.go) beside a copy of this wrapper module, edits
# that one line, and builds them against VPA's packages at the pinned versions; the
# webhook logic is upstream's. (Its metrics server has a flag: --address=127.0.0.1:<port>.)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MEMWARDEN_CACHE:-$HOME/.cache/memwarden}"
# shellcheck source=../lib/gobuild.sh
source "$here/../lib/gobuild.sh"
module=k8s.io/autoscaler/vertical-pod-autoscaler
vpa_version="$(gobuild_version "$module")"
key="$(gobuild_key)"
dir="$cache/vpa-${vpa_version}_${key}"
bin="$dir/admission-controller"
crds="$dir/vpa-v1-crd-gen.yaml"

if [[ -x "$bin" && -f "$crds" ]]; then
    echo "$bin"
    exit 0
fi

gobuild_scratch "$dir"
echo "building the VPA admission-controller ${vpa_version} (a cold build takes minutes; cached at $dir)" >&2
(cd "$here" && go mod download "$module")
src="$(cd "$here" && go list -mod=readonly -m -f '{{.Dir}}' "$module")"
pkg="$src/pkg/admission-controller"
mkdir "$tmp/module" "$tmp/module/admission-controller"
cp "$here/go.mod" "$here/go.sum" "$tmp/module/"
for f in "$pkg"/*.go; do
    [[ "$f" == *_test.go ]] || cp "$f" "$tmp/module/admission-controller/"
done
main="$tmp/module/admission-controller/main.go"
sed -i 's|Addr:      fmt.Sprintf(":%d", config.Port),|Addr:      fmt.Sprintf("127.0.0.1:%d", config.Port),|' "$main"
if [[ "$(diff "$pkg/main.go" "$main" | grep -c '^>')" != 1 ]]; then
    echo "hack/vpa/build.sh: main.go of ${vpa_version} does not have the expected listen line" >&2
    exit 1
fi
# The commit stamp of VPA's release images is not known here: the version reports 1.8.1.
(cd "$tmp/module" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-w -s" \
    -o "$tmp/admission-controller" ./admission-controller)
cp "$src/deploy/vpa-v1-crd-gen.yaml" "$tmp/vpa-v1-crd-gen.yaml"
mv -f "$tmp/vpa-v1-crd-gen.yaml" "$crds"
mv -f "$tmp/admission-controller" "$bin"
echo "VPA admission-controller built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
