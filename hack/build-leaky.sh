#!/usr/bin/env bash
# Build examples/leaky (memwarden's test workload) with the machine's Go and print the
# binary's path on stdout. Idempotent: skips the build when a hash of the sources, the Go
# version and the flags matches the one stored beside the binary.
#
#   MEMWARDEN_CACHE  cache root (default ~/.cache/memwarden); binary at $MEMWARDEN_CACHE/bin/leaky
#   GO               the go command (default: go on PATH, else /usr/local/go/bin/go)
#
# Built with -trimpath but WITH symbols and DWARF (no -s -w): gdb must resolve symbols in
# cores taken with gcore. CGO_ENABLED=0 gives a static binary that runs in any image.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/examples/leaky"
cache="${MEMWARDEN_CACHE:-$HOME/.cache/memwarden}"
bin="$cache/bin/leaky"
stamp="$bin.sha256"
go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
flags=(-trimpath -buildvcs=false)

export CGO_ENABLED=0 GOTOOLCHAIN=local

hash="$(
  {
    "$go" version
    echo "${flags[*]} CGO_ENABLED=$CGO_ENABLED"
    cd "$src"
    find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 \
      | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -d' ' -f1
)"

if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/bin"
tmp="$(mktemp "$cache/bin/.leaky.XXXXXX")"
trap 'rm -f "$tmp" "$tmp.sha256"' EXIT
(cd "$src" && "$go" build "${flags[@]}" -o "$tmp" .) >&2
echo "$hash" >"$tmp.sha256"
# Rename into place: concurrent builders never expose a half-written binary.
mv -f "$tmp" "$bin"
mv -f "$tmp.sha256" "$stamp"
echo "$bin"
