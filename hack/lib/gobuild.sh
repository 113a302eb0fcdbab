# Sourced by the build scripts of the Go tools this project pins (hack/helm, hack/vpa,
# hack/vegeta), each a wrapper module beside its script: the version go.mod pins, the
# cache key (versions and go.sum: a changed pin builds anew) and a scratch directory.
# Expects $here (the script's folder).

# gobuild_version MODULE: the version of MODULE that $here/go.mod requires.
gobuild_version() {
    awk -v m="$1" '$1 == "require" && $2 == m {print $3; exit} $1 == m {print $2; exit}' \
        "$here/go.mod"
}

# gobuild_key: 12 hex digits of the pins.
gobuild_key() {
    cat "$here/go.sum" "$here/go.mod" | sha256sum | cut -c1-12
}

# gobuild_scratch DIR: make DIR, and $tmp inside it (removed on exit); start the clock.
gobuild_scratch() {
    mkdir -p "$1"
    tmp="$(mktemp -d "$1/build.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    start=$(date +%s)
}
