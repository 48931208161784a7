#!/usr/bin/env bash
# Builds crictl (kubernetes-sigs/cri-tools) offline into $STEVEDORE_TOOLS/crictl
# (default /opt/stevedore-tools/crictl), for checking stevedored's CRI by hand
# with the tool node admins use. Not run by CI.
#
# Go comes from Debian unstable the way scripts/unstable-tools.sh gets its
# tools: the unstable source is added with pin priority -1 (never installed),
# golang-1.26-go and golang-1.26-src are fetched with `apt-get download` and
# unpacked with `dpkg -x` under $STEVEDORE_TOOLS/<package>. cri-tools vendors
# its Go modules, so the build needs no network beyond apt.
#
# The sources: CRI_TOOLS_SRC (a checkout), or CRI_TOOLS_GIT (a git dir, e.g.
# the bare mirror /work/.mirror/kubernetes-sigs+cri-tools/repo) archived at
# CRI_TOOLS_REF (default v1.36.0). Idempotent; needs root.
set -euo pipefail
TOOLS=${STEVEDORE_TOOLS:-/opt/stevedore-tools}
REF=${CRI_TOOLS_REF:-v1.36.0}
GIT=${CRI_TOOLS_GIT:-/work/.mirror/kubernetes-sigs+cri-tools/repo}
GO_PKGS=(golang-1.26-go golang-1.26-src)

if [[ -x $TOOLS/crictl && -f $TOOLS/crictl.version && "$(cat "$TOOLS/crictl.version")" == "$REF" ]]; then
  "$TOOLS/crictl" --version
  exit 0
fi

# 1. Go from unstable, unpacked, not installed
src=/etc/apt/sources.list.d/stevedore-unstable.sources
if [[ ! -f $src ]]; then
  cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: unstable
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  cat >/etc/apt/preferences.d/stevedore-unstable <<'PIN'
Package: *
Pin: release a=unstable
Pin-Priority: -1
PIN
  apt-get update -qq
fi
dl=$(mktemp -d)
work=$(mktemp -d)
trap 'rm -rf "$dl" "$work"' EXIT
chmod 755 "$dl"
for p in "${GO_PKGS[@]}"; do
  [[ -f $TOOLS/$p/.version ]] && continue
  (cd "$dl" && apt-get download -qq "$p/unstable")
  rm -rf "${TOOLS:?}/$p"
  mkdir -p "$TOOLS/$p"
  dpkg -x "$dl"/"${p}"_*.deb "$TOOLS/$p"
  dpkg-deb -f "$dl"/"${p}"_*.deb Version >"$TOOLS/$p/.version"
  rm -f "$dl"/"${p}"_*.deb
done
# golang-1.26-go holds /usr/lib/go-1.26 (bin/, pkg/tool/, and relative links
# src -> ../../share/go-1.26/src and so on); golang-1.26-src fills
# /usr/share/go-1.26. GOROOT needs both in one tree: hard-link the two
# unpacked packages into $TOOLS/go-1.26 (no extra space, links resolve).
root=$TOOLS/go-1.26
GOROOT=$root/usr/lib/go-1.26
if [[ ! -x $GOROOT/bin/go || "$(cat "$root/.version" 2>/dev/null)" != "$(cat "$TOOLS/golang-1.26-go/.version")" ]]; then
  rm -rf "$root"
  mkdir -p "$root"
  cp -al "$TOOLS/golang-1.26-go/usr" "$root/"
  cp -al "$TOOLS/golang-1.26-src/usr/." "$root/usr/"
  cp "$TOOLS/golang-1.26-go/.version" "$root/.version"
fi
export GOROOT PATH=$GOROOT/bin:$PATH

# 2. crictl from the vendored sources
if [[ -n ${CRI_TOOLS_SRC:-} ]]; then
  srcdir=$CRI_TOOLS_SRC
else
  srcdir=$work/cri-tools
  mkdir -p "$srcdir"
  git -C "$GIT" archive "$REF" | tar -x -C "$srcdir"
fi
version=$REF
(
  cd "$srcdir"
  GOFLAGS=-mod=vendor GOTOOLCHAIN=local CGO_ENABLED=0 \
    GOCACHE=$work/gocache GOPATH=$work/gopath \
    go build -trimpath \
    -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$version" \
    -o "$TOOLS/crictl.new" ./cmd/crictl
)
mv "$TOOLS/crictl.new" "$TOOLS/crictl"
echo "$REF" >"$TOOLS/crictl.version"
"$TOOLS/crictl" --version
