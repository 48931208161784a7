#!/usr/bin/env bash
# Install the Debian packages stevedore's tests and quickstart use, if missing.
# Idempotent; needs root (CI and the dev machine run as root).
#   deps.sh               everything the tests and benchmarks use
#   deps.sh --quickstart  only what scripts/quickstart.sh needs
set -euo pipefail
QUICK=0
[[ ${1:-} == --quickstart ]] && QUICK=1
PKGS=(
  containerd        # the reference `ctr` client (and containerd for benchmarks)
  runc              # OCI runtime
  crun              # alternative OCI runtime
  docker-registry   # local registry for pull/push tests
  apache2-utils     # htpasswd -Bbn for the registry's basic-auth tests
  openssl           # self-signed certificates for the registry's TLS tests
  skopeo            # builds docker-archive / OCI test images
  busybox-static    # test image contents
  btrfs-progs       # btrfs snapshotter tests (mkfs.btrfs on a loop device); btrfs check in the power-loss test
  e2fsprogs mount   # power-loss test: mkfs.ext4 and e2fsck of its disk image, losetup
  golang-github-containerd-containerd-dev  # containerd's 1.6 API protos and Go client sources
  golang-go         # builds crates/e2e/go/clientcheck against containerd's Go client
  golang-github-docker-spdystream-dev  # kubectl's SPDY library: the streaming server's interop test
  python3 util-linux  # test images (mkimage.py), socket probes as other users (setpriv)
  jq zstd pigz hyperfine
  groff-base        # renders the generated man pages (crates/e2e/tests/cli_docs.rs)
  docker.io         # Docker Engine 20.10: dockerd --containerd against stevedored
  containernetworking-plugins  # CNI plugins (bridge, host-local, loopback, portmap) for CRI pods
  iptables iproute2 # portmap's rules; ip/nsenter checks inside pod network namespaces
  prometheus        # scrapes stevedored's [metrics] endpoint in crates/e2e/tests/operations.rs
)
if ((QUICK)); then
  # ctr (containerd), runc, and the busybox image's ingredients
  PKGS=(containerd runc python3 busybox-static)
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Docker 28 and containerd 2.x from Debian unstable, unpacked, never installed
((QUICK)) || bash "$(dirname "$0")/unstable-tools.sh"
# containerd 2.1's Go client sources and Go 1.26 from Debian unstable,
# unpacked, never installed (crates/e2e/tests/go_client2.rs; ~30 s, ~90 MB)
((QUICK)) || bash "$(dirname "$0")/go2-client.sh"
# the packaged containerd must not run: tests start their own daemons
systemctl disable --now containerd docker docker.socket prometheus >/dev/null 2>&1 || true
