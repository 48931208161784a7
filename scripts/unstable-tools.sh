#!/usr/bin/env bash
# Newer tools than bookworm ships, for the compatibility tests: Docker 28
# (docker.io + docker-cli) and containerd 2.x (ctr, containerd) from Debian
# unstable. They are downloaded as .deb files and unpacked with `dpkg -x`
# under $STEVEDORE_TOOLS (default /opt/stevedore-tools/<package>), never
# installed: an unstable sources entry is added with pin priority -1 so apt
# never installs anything from it. Idempotent; needs root.
set -euo pipefail
TOOLS=${STEVEDORE_TOOLS:-/opt/stevedore-tools}
# package=version pairs; bump together with the tests that use them
PKGS=(
  docker.io=28.5.2+dfsg4-5
  docker-cli=28.5.2+dfsg4-5
  containerd=2.1.9+ds1-5
)
todo=()
for pv in "${PKGS[@]}"; do
  p=${pv%%=*}
  v=${pv#*=}
  [[ -f "$TOOLS/$p/.version" && "$(cat "$TOOLS/$p/.version")" == "$v" ]] || todo+=("$pv")
done
((${#todo[@]})) || exit 0

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
trap 'rm -rf "$dl"' EXIT
chmod 755 "$dl"
for pv in "${todo[@]}"; do
  p=${pv%%=*}
  v=${pv#*=}
  if ! (cd "$dl" && apt-get download -qq "$pv" 2>/dev/null); then
    # the pinned version left unstable: take what unstable has now
    echo "unstable-tools: $pv not available, downloading the current $p" >&2
    (cd "$dl" && apt-get download -qq "$p/unstable")
    v=$(dpkg-deb -f "$dl"/"${p}"_*.deb Version)
  fi
  rm -rf "${TOOLS:?}/$p"
  mkdir -p "$TOOLS/$p"
  dpkg -x "$dl"/"${p}"_*.deb "$TOOLS/$p"
  echo "$v" >"$TOOLS/$p/.version"
  rm -f "$dl"/"${p}"_*.deb
done
