#!/usr/bin/env bash
# Install stevedore as a system service:
#   the binaries in $PREFIX/bin (default /usr/local/bin),
#   /etc/stevedore/config.toml from `stevedored config default` (kept if present),
#   bash/zsh/fish completions and man pages under $PREFIX/share,
#   the systemd unit and tmpfiles entry (packaging/), enabled and started when
#   systemd runs this machine; otherwise it says how to start the daemon.
# DESTDIR installs into a staging root (packaging, tests); BUILD=0 installs
# binaries already built in $BIN_FROM (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BIN_FROM=${BIN_FROM:-target/release}
if [[ "${BUILD:-1}" == 1 ]]; then
  cargo build --release --bins --locked
fi
bin="$DESTDIR$PREFIX/bin"
install -d -m 0755 "$bin" "$DESTDIR/etc/stevedore" \
  "$DESTDIR/etc/systemd/system" "$DESTDIR/usr/lib/tmpfiles.d"
install -m 0755 "$BIN_FROM/stevedored" "$BIN_FROM/stevedore" \
  "$BIN_FROM/containerd-shim-stevedore-v1" "$bin/"
if [[ ! -e "$DESTDIR/etc/stevedore/config.toml" ]]; then
  "$bin/stevedored" config default > "$DESTDIR/etc/stevedore/config.toml"
  chmod 0644 "$DESTDIR/etc/stevedore/config.toml"
  echo "wrote $DESTDIR/etc/stevedore/config.toml"
else
  echo "kept $DESTDIR/etc/stevedore/config.toml"
fi
sed "s#/usr/local/bin/stevedored#$PREFIX/bin/stevedored#" packaging/stevedore.service \
  > "$DESTDIR/etc/systemd/system/stevedore.service"
install -m 0644 packaging/stevedore.tmpfiles.conf "$DESTDIR/usr/lib/tmpfiles.d/stevedore.conf"
# shell completions and man pages, generated from the CLI's definitions
comp="$DESTDIR$PREFIX/share/bash-completion/completions"
zcomp="$DESTDIR$PREFIX/share/zsh/site-functions"
fcomp="$DESTDIR$PREFIX/share/fish/vendor_completions.d"
install -d -m 0755 "$comp" "$zcomp" "$fcomp"
"$bin/stevedore" completion bash > "$comp/stevedore"
"$bin/stevedore" completion zsh > "$zcomp/_stevedore"
"$bin/stevedore" completion fish > "$fcomp/stevedore.fish"
"$bin/stevedore" man "$DESTDIR$PREFIX/share/man/man1"
if [[ -z "$DESTDIR" && -d /run/systemd/system ]]; then
  systemd-tmpfiles --create /usr/lib/tmpfiles.d/stevedore.conf
  systemctl daemon-reload
  systemctl enable --now stevedore.service
  echo "stevedore.service enabled and started: systemctl status stevedore"
else
  echo "installed; systemd is not running here: start the daemon with"
  echo "  $PREFIX/bin/stevedored --config /etc/stevedore/config.toml"
fi
