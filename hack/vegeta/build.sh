#!/usr/bin/env bash
# Build the vegeta load generator from the pinned Go module beside this script
# (go.mod/go.sum), into a cache outside the repository keyed by the version and the
# go.sum contents: a second run only prints the path. Prints the binary's path on stdout;
# progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MEMWARDEN_CACHE:-$HOME/.cache/memwarden}"
# shellcheck source=../lib/gobuild.sh
source "$here/../lib/gobuild.sh"
module=github.com/tsenart/vegeta/v12
vegeta_version="$(gobuild_version "$module")"
key="$(gobuild_key)"
dir="$cache/vegeta-${vegeta_version}_${key}"
bin="$dir/vegeta"

if [[ -x "$bin" ]]; then
    echo "$bin"
    exit 0
fi

gobuild_scratch "$dir"
echo "building vegeta ${vegeta_version} (cached at $dir)" >&2
# The version stamp vegeta's own Makefile sets, so `vegeta -version` reports the release.
(cd "$here" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-w -s -X main.Version=${vegeta_version} -X main.Date=1970-01-01T00:00:00Z" \
    -o "$tmp/vegeta" "$module")
mv -f "$tmp/vegeta" "$bin"
echo "vegeta built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
