#!/usr/bin/env bash
# Build SeaweedFS's `weed` (an S3-compatible object store) from the pinned Go module beside
# this script (go.mod/go.sum), into a cache outside the repository keyed by the version and
# the go.sum contents: a second run only prints the path. Prints the binary's path on
# stdout; progress goes to stderr. The tests' S3 server (tests/memwarden_testing/s3.py) and
# bench/evidence_store_bench.py run it; a cold build takes several minutes (its module
# graph is large), so hack/bootstrap.sh builds it once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MEMWARDEN_CACHE:-$HOME/.cache/memwarden}"
# shellcheck source=../lib/gobuild.sh
source "$here/../lib/gobuild.sh"
module=github.com/seaweedfs/seaweedfs
weed_version="$(gobuild_version "$module")"
key="$(gobuild_key)"
dir="$cache/seaweedfs-${weed_version}_${key}"
bin="$dir/weed"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

gobuild_scratch "$dir"
echo "building SeaweedFS weed ${weed_version} (a cold build takes minutes; cached at $dir)" >&2
(cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-w -s" \
    -o "$tmp/weed" "$module/weed")
mv -f "$tmp/weed" "$bin"
echo "weed built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
