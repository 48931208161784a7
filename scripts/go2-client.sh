#!/usr/bin/env bash
# containerd 2.x's Go client library, offline, for the e2e test go_client2:
# a Go toolchain and golang-github-containerd-containerd-dev (2.1) with the
# Go source packages its client imports, all from Debian unstable,
# downloaded with `apt-get download` into a cache and unpacked with
# `dpkg -x` under $GO2_ROOT (default /opt/stevedore-tools/go2), never
# installed (the unstable source is pinned at -1, see unstable-tools.sh).
# Result: $GO2_ROOT/usr/lib/go-<ver>/bin/go (GOROOT) and a GOPATH tree
# $GO2_ROOT/usr/share/gocode. Idempotent: nothing is fetched when the stamp
# names the same package set; needs root (apt-get update once).
#
#   go2-client.sh            the ~40 packages clientcheck2's imports come
#                            from (`go list -deps` mapped to packages; ~90 MB)
#   go2-client.sh --closure  the whole Depends closure of containerd-dev
#                            (~420 packages, ~270 MB, 2.3 GB unpacked): use
#                            it to regenerate CLIENT_PKGS when imports change
set -euo pipefail
CLOSURE=0
[[ ${1:-} == --closure ]] && CLOSURE=1
ROOT=${GO2_ROOT:-/opt/stevedore-tools/go2}
CACHE=${GO2_CACHE:-/var/cache/stevedore/go2-debs}
GO_PKG=golang-1.26-go
TOP=(golang-github-containerd-containerd-dev=2.1.9+ds1-5 golang-github-containerd-containerd-api-dev=2.1.9+ds1-5 "$GO_PKG")
# the packages (besides TOP) of everything clientcheck2 imports, at their
# unstable versions
CLIENT_PKGS=(
  golang-github-cespare-xxhash-v2-dev
  golang-github-containerd-cgroups-dev
  golang-github-containerd-continuity-dev
  golang-github-containerd-errdefs-dev
  golang-github-containerd-fifo-dev
  golang-github-containerd-log-dev
  golang-github-containerd-platforms-dev
  golang-github-containerd-plugin-dev
  golang-github-containerd-ttrpc-dev
  golang-github-containerd-typeurl-dev
  golang-github-cyphar-filepath-securejoin-dev
  golang-github-distribution-reference-dev
  golang-github-felixge-httpsnoop-dev
  golang-github-go-logr-logr-dev
  golang-github-go-logr-stdr-dev
  golang-github-gogo-protobuf-dev
  golang-github-golang-protobuf-1-5-dev
  golang-github-google-go-cmp-dev
  golang-github-klauspost-compress-dev
  golang-github-moby-locker-dev
  golang-github-moby-sys-dev
  golang-github-opencontainers-go-digest-dev
  golang-github-opencontainers-image-spec-dev
  golang-github-opencontainers-selinux-dev
  golang-github-opencontainers-specs-dev
  golang-github-pelletier-go-toml.v2-dev
  golang-github-sirupsen-logrus-dev
  golang-golang-x-net-dev
  golang-golang-x-sync-dev
  golang-golang-x-sys-dev
  golang-golang-x-text-dev
  golang-google-genproto-dev
  golang-google-grpc-dev
  golang-google-protobuf-dev
  golang-opentelemetry-contrib-dev
  golang-opentelemetry-otel-dev
  golang-1.26-src
)
stamp="$ROOT/.stamp"
want="${TOP[*]} closure=$CLOSURE"
if [[ -f $stamp && "$(head -1 "$stamp")" == "$want" && -x "$(ls -d "$ROOT"/usr/lib/go-*/bin/go 2>/dev/null | head -1)" ]]; then
  echo "go2-client: up to date in $ROOT ($(($(wc -l <"$stamp") - 1)) packages)"
  exit 0
fi
if [[ ! -f /etc/apt/sources.list.d/stevedore-unstable.sources ]]; then
  "$(dirname "$0")/unstable-tools.sh" # adds the pinned unstable source
fi
if ! apt-cache show "$GO_PKG/unstable" >/dev/null 2>&1; then
  apt-get update -qq
fi

# Breadth-first over Depends, one apt-cache call per level (each call loads
# the whole cache, ~1 s): every package at its unstable version, the first
# alternative of each dependency, only Go sources and the toolchain followed.
# A name no package has in unstable is resolved through its providers.
provider() {
  apt-cache showpkg "$1" 2>/dev/null | awk '/^Reverse Provides:/{f=1;next} f&&NF{print $1; exit}'
}
declare -A seen=() version=()
level=()
for pv in "${TOP[@]}"; do
  level+=("${pv%%=*}")
  seen[${pv%%=*}]=1
done
if ((!CLOSURE)); then
  for p in "${CLIENT_PKGS[@]}"; do
    level+=("$p")
    seen[$p]=1
  done
fi
resolved=()
while ((${#level[@]})); do
  args=()
  for p in "${level[@]}"; do args+=("$p/unstable"); done
  out=$(apt-cache show "${args[@]}" 2>/dev/null | awk '
    /^Package:/{p=$2} /^Version:/{v=$2}
    /^Depends:/{sub(/^Depends: /,""); d=$0}
    /^$/{if(p!="")print p"\t"v"\t"d; p="";v="";d=""}
    END{if(p!="")print p"\t"v"\t"d}')
  next_level=()
  declare -A found=()
  while IFS=$'\t' read -r p v deps; do
    [[ -z $p || -n ${found[$p]:-} ]] && continue
    found[$p]=1
    for top in "${TOP[@]}"; do
      [[ $top == "$p="* ]] || continue
      if apt-cache show "$top" >/dev/null 2>&1; then
        v=${top#*=}
      else
        # the pinned version left unstable: take what unstable has now
        echo "go2-client: $top not available, using $p=$v" >&2
      fi
    done
    resolved+=("$p=$v")
    ((CLOSURE)) || continue
    for d in $(tr ',' '\n' <<<"$deps" | sed -e 's/|.*//' -e 's/(.*//' -e 's/:any//' -e 's/ //g'); do
      case $d in
      golang-*-dev | golang-1.*-src)
        if [[ -z ${seen[$d]:-} ]]; then
          seen[$d]=1
          next_level+=("$d")
        fi
        ;;
      esac
    done
  done <<<"$out"
  for p in "${level[@]}"; do
    [[ -n ${found[$p]:-} ]] && continue
    real=$(provider "$p")
    if [[ -z $real ]]; then
      echo "go2-client: $p: not in unstable, skipped" >&2
    elif [[ -z ${seen[$real]:-} ]]; then
      seen[$real]=1
      next_level+=("$real")
    fi
  done
  unset found
  level=("${next_level[@]}")
done
mkdir -p "$CACHE"
chmod 755 "$CACHE"
# apt downloads as _apt when it can write there
chown _apt "$CACHE" 2>/dev/null || true
deb() { # the cached .deb of package=version, if any
  local p=${1%%=*} v=${1#*=}
  ls "$CACHE/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -1
}
missing=()
for pv in "${resolved[@]}"; do
  [[ -n $(deb "$pv") ]] || missing+=("$pv")
done
if ((${#missing[@]})); then
  (cd "$CACHE" && apt-get download -q "${missing[@]}")
  printf 'go2-client: fetched %s\n' "${missing[@]}"
fi
fetched=${#missing[@]}
tmp="$ROOT.new"
rm -rf "$tmp"
mkdir -p "$tmp"
for pv in "${resolved[@]}"; do
  dpkg -x "$(deb "$pv")" "$tmp"
done
{
  echo "$want"
  printf '%s\n' "${resolved[@]}" | sort
} >"$tmp/.stamp"
rm -rf "$ROOT"
mv "$tmp" "$ROOT"
go=$(ls -d "$ROOT"/usr/lib/go-*/bin/go | head -1)
echo "go2-client: ${#resolved[@]} packages ($fetched downloaded) in $ROOT; go: $go ($("$go" version))"
