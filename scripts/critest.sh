#!/usr/bin/env bash
# Runs Kubernetes' CRI validation suite, critest (kubernetes-sigs/cri-tools
# v1.36.0), against stevedored, offline. Not run by CI (it has no mirror of
# cri-tools; a run takes ~5 minutes); the results are in docs/compatibility.md.
#
#   scripts/critest.sh [critest flags, e.g. -ginkgo.focus=Container]
#   CRITEST_HOLD=1 scripts/critest.sh   # only the daemon, for crictl by hand
#   CRITEST_CONTAINERD=/opt/stevedore-tools/containerd/usr/bin/containerd \
#     scripts/critest.sh                 # the same run against containerd
#
# 1. Go 1.26 as scripts/build-crictl.sh fetches it (that script is run
#    first), then critest from the vendored sources (cri-tools' Makefile:
#    `go test -c ./cmd/critest`) into $STEVEDORE_TOOLS/critest
#    (default /opt/stevedore-tools/critest).
# 2. The images critest pulls (scripts/critest/images.py, with the static
#    helper scripts/critest/testbin), pushed with skopeo to a docker-registry
#    on 127.0.0.1 and served as mirrors of registry.k8s.io, k8s.gcr.io and
#    gcr.io through the CRI's hosts directory, so critest keeps its own image
#    names (no -registry-prefix, which would fold registry.k8s.io/pause and
#    k8s.gcr.io/pause into one name).
# 3. stevedored ($STEVEDORED, default target/debug/stevedored of this tree)
#    with its own root, state and socket in a temporary directory, the CRI
#    configured as crates/e2e/tests/cri.rs does: pause image, the real CNI
#    plugins of /usr/lib/cni, a bridge in 198.18.0.0/24 that is the pods'
#    gateway but routes nowhere else (no masquerade, no default route),
#    portmap, restrict_oom_score_adj.
# 4. critest (one spec at a time; -parallel N needs the ginkgo CLI), its
#    report in $CRITEST_OUT (default /tmp/critest-out): critest.log, junit.xml
#    (skip reasons too), daemon.log.
# 5. Clean-up on exit: daemon, registry, bridge, netns and mounts under the
#    temporary directory.
#
# Needs root, busybox-static, skopeo, docker-registry,
# containernetworking-plugins, iptables, python3, util-linux (ipcmk).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
TOOLS=${STEVEDORE_TOOLS:-/opt/stevedore-tools}
REF=${CRI_TOOLS_REF:-v1.36.0}
GIT=${CRI_TOOLS_GIT:-/work/.mirror/kubernetes-sigs+cri-tools/repo}
STEVEDORED=${STEVEDORED:-$repo/target/debug/stevedored}
OUT=${CRITEST_OUT:-/tmp/critest-out}

[[ -x $STEVEDORED ]] || { echo "critest.sh: $STEVEDORED not built (cargo build --workspace --bins)" >&2; exit 1; }
for t in /bin/busybox skopeo docker-registry /usr/lib/cni/bridge iptables python3 ipcmk; do
  command -v "$t" >/dev/null || { echo "critest.sh: $t not found" >&2; exit 1; }
done

# 1. Go and critest
"$here/build-crictl.sh" >/dev/null
GOROOT=$TOOLS/go-1.26/usr/lib/go-1.26
export GOROOT PATH=$GOROOT/bin:$PATH
work=$(mktemp -d /tmp/critest.XXXXXX)
chmod 755 "$work"
export GOCACHE=$TOOLS/critest-gocache GOPATH=$work/gopath GOTOOLCHAIN=local CGO_ENABLED=0
if [[ ! -x $TOOLS/critest || "$(cat "$TOOLS/critest.version" 2>/dev/null)" != "$REF" ]]; then
  mkdir -p "$work/cri-tools"
  git -C "$GIT" archive "$REF" | tar -x -C "$work/cri-tools"
  (cd "$work/cri-tools" && GOFLAGS=-mod=vendor go test -c -trimpath \
    -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$REF" \
    -o "$TOOLS/critest.new" ./cmd/critest)
  mv "$TOOLS/critest.new" "$TOOLS/critest"
  echo "$REF" >"$TOOLS/critest.version"
fi

daemon_pid='' registry_pid='' bridge="crit$(printf %04x $$)"
sock=$work/stevedored.sock
cleanup() {
  set +e
  trap '' INT TERM # a second interrupt must not cut the clean-up short
  # pods a failed spec left behind (its clean-up is skipped): stopped and
  # removed through the CRI while the daemon still runs
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    "$TOOLS/crictl" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
      rmp --all --force >/dev/null 2>&1
  fi
  if [[ -n $daemon_pid ]]; then
    kill "$daemon_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$daemon_pid" 2>/dev/null
    cp "$work/daemon.log" "$OUT/" 2>/dev/null
  fi
  # containers that outlived the daemon (runc keeps them without a shim):
  # those whose bundle is in our state dir
  for runc_root in /run/stevedore/runc/k8s.io /run/containerd/runc/k8s.io; do
    for id in $(runc --root "$runc_root" list --format json 2>/dev/null |
      python3 -c 'import json,sys; w=sys.argv[1]; [print(c["id"]) for c in json.load(sys.stdin) or [] if c["bundle"].startswith(w)]' "$work/"); do
      runc --root "$runc_root" delete --force "$id"
    done
  done
  for p in $(pgrep -f "containerd-shim-(stevedore-v1|runc-v2) .*$work" 2>/dev/null); do kill -9 "$p"; done
  [[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null
  # mounts (rootfs, netns, shm) under the work dir, deepest first
  awk -v w="$work" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m"
  done
  ip link del "$bridge" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$OUT"

# 2. images and the registry
(cd "$here/critest/testbin" && GO111MODULE=off go build -trimpath -ldflags=-s -o "$work/testbin" .)
python3 "$here/critest/images.py" --out "$work/images" --testbin "$work/testbin" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<CFG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry/storage
  delete:
    enabled: true
http:
  addr: $reg
CFG
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
while read -r dir name; do
  skopeo copy -q --dest-tls-verify=false --insecure-policy "oci:$dir" "docker://$reg/$name"
done <"$work/images/images.txt"
for host in registry.k8s.io k8s.gcr.io gcr.io; do
  mkdir -p "$work/hosts/$host"
  cat >"$work/hosts/$host/hosts.toml" <<TOML
server = "https://$host"

[host."http://$reg"]
  capabilities = ["pull", "resolve"]
TOML
done

# 3. stevedored
mkdir -p "$work/net.d"
cat >"$work/net.d/10-critest.conflist" <<NET
{"cniVersion": "1.0.0", "name": "critest",
 "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$work/ipam",
            "ranges": [[{"subnet": "198.18.0.0/24"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
NET
cat >"$work/config.toml" <<CFG
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "registry.k8s.io/pause:3.10"
restrict_oom_score_adj = true
netns_mounts_under_state_dir = true
[plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "/usr/lib/cni"
conf_dir = "$work/net.d"
[plugins."io.containerd.grpc.v1.cri".registry]
config_path = "$work/hosts"
CFG
if [[ -n ${CRITEST_CONTAINERD:-} ]]; then
  # the reference: a containerd (2.x, with containerd-shim-runc-v2 next to
  # it) in stevedored's place, same CRI settings
  { printf 'version = 2\nroot = "%s"\nstate = "%s"\n[grpc]\naddress = "%s"\n' \
      "$work/root" "$work/state" "$sock"; cat "$work/config.toml"; } >"$work/containerd.toml"
  PATH=$(dirname "$CRITEST_CONTAINERD"):$PATH "$CRITEST_CONTAINERD" \
    --config "$work/containerd.toml" --log-level debug >"$work/daemon.log" 2>&1 &
else
  "$STEVEDORED" --root "$work/root" --state "$work/state" --address "$sock" \
    --config "$work/config.toml" --log-level debug >"$work/daemon.log" 2>&1 &
fi
daemon_pid=$!
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { echo "critest.sh: the daemon did not start" >&2; tail "$work/daemon.log" >&2; exit 1; }

# CRITEST_HOLD=1: keep the daemon for crictl or critest by hand until
# interrupted (its socket is written to $OUT/socket).
if [[ -n ${CRITEST_HOLD:-} ]]; then
  echo "$sock" >"$OUT/socket"
  echo "critest.sh: stevedored serves unix://$sock; interrupt to clean up"
  wait "$daemon_pid"
  exit 0
fi

# 4. critest
set +e
(cd "$work" && "$TOOLS/critest" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
  -ginkgo.junit-report "$OUT/junit.xml" -ginkgo.no-color "$@") 2>&1 | tee "$OUT/critest.log"
rc=${PIPESTATUS[0]}
set -e
echo "critest.sh: critest exited $rc; log in $OUT/critest.log"
exit "$rc"
