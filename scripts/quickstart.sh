#!/usr/bin/env bash
# Build stevedore, start stevedored on the default socket, import a busybox
# image (built locally from Debian's busybox-static), and run a container with
# the real containerd `ctr` and the stevedore CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
# the Debian packages download and install while cargo builds (one is network
# and disk, the other CPU)
DEPS_LOG=$(mktemp /tmp/stevedore-quickstart-deps.XXXXXX)
bash scripts/deps.sh --quickstart >"$DEPS_LOG" 2>&1 &
DEPS_PID=$!
# only the three programs (not the test crates' tools), with the `quick`
# profile (Cargo.toml: hot paths fully optimised, the rest unoptimised, no
# LTO; bench/README.md measures it against the release build).
# STEVEDORE_PROFILE=release builds the fat-LTO release binaries instead.
PROFILE=${STEVEDORE_PROFILE:-quick}
echo "== building stevedored, stevedore and the shim (profile $PROFILE; about 3 minutes on 2 idle cores), installing containerd's ctr, runc, python3 and busybox-static meanwhile"
cargo build --profile "$PROFILE" --locked -p stevedored -p stevedore -p stevedore-shim
echo "== built in $((SECONDS - START)) s"
if ! wait "$DEPS_PID"; then
  cat "$DEPS_LOG" >&2
  echo "quickstart: installing the Debian packages failed (above)" >&2
  exit 1
fi
rm -f "$DEPS_LOG"
OUT=target/$PROFILE
[[ $PROFILE == dev ]] && OUT=target/debug
install -m 0755 "$OUT/stevedored" "$OUT/stevedore" \
    "$OUT/containerd-shim-stevedore-v1" /usr/local/bin/
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
IMGDIR=$(mktemp -d /tmp/stevedore-quickstart.XXXXXX)
trap 'rm -rf "$IMGDIR"' EXIT
python3 bench/images/mkimage.py busybox --out "$IMGDIR" >/dev/null
echo "== import docker.io/library/busybox:latest (built from busybox-static)"
ctr --address "$SOCK" images import "$IMGDIR/busybox-oci.tar"
stevedore images ls
echo "== run a container"
ctr --address "$SOCK" run --rm docker.io/library/busybox:latest quickstart-$$ \
  echo "hello from a container run by stevedored"
echo "== and with the stevedore CLI (stevedore's own shim drives runc)"
stevedore run --rm docker.io/library/busybox:latest quickstart-cli-$$ \
  sh -c 'echo "hello from stevedore run, pid $$ in its own pid namespace"'
echo "== done in $((SECONDS - START)) s; stevedored keeps running (stop it: pkill -x stevedored)"
