#!/usr/bin/env bash
# Build stevedore, start stevedored on the default socket, and talk to it with
# both the stevedore CLI and the real containerd `ctr`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --release --bins --locked
install -m 0755 target/release/stevedored target/release/stevedore /usr/local/bin/
SOCK=/run/stevedore/stevedore.sock
if ! stevedore --address "$SOCK" version >/dev/null 2>&1; then
  mkdir -p /var/log
  nohup stevedored >>/var/log/stevedored.log 2>&1 &
  for _ in $(seq 100); do
    stevedore --address "$SOCK" version >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
echo "== stevedored is serving on $SOCK (log: /var/log/stevedored.log)"
stevedore version
echo "== plugins, as the real containerd ctr sees them"
ctr --address "$SOCK" plugins ls
echo "== namespaces"
stevedore namespaces create quickstart demo=yes 2>/dev/null || true
ctr --address "$SOCK" namespaces ls
