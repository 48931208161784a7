#!/usr/bin/env python3
"""Regenerate stevedore's wire-contract .proto files.

The wire contract (packages, services, methods, messages, field numbers and
types) must match containerd's API exactly.  This script reads containerd 1.6's
definitions as Debian ships them (package golang-github-containerd-containerd-dev
and its dependencies) and writes a normalised copy under this directory:
comments, Go options and gogoproto annotations are removed (they do not affect
the wire), and import paths are shortened to this tree's layout.

containerd 2.x's additions (the Transfer, Streaming and Sandbox services, the
transfer and sandbox types, Introspection's PluginInfo and Server fields,
Platform's os_version) come from a git checkout of containerd at
CONTAINERD2_TAG (`git show <tag>:api/...`); they only add packages and fields.

Usage: python3 crates/api/proto/regen.py [CONTAINERD_GIT_DIR]
       (run from anywhere; needs the Debian package, and for the 2.x files a
       clone or mirror of github.com/containerd/containerd)
The output is committed, so building stevedore never needs this script or protoc.
"""
import os
import re
import subprocess
import sys

GOCODE = "/usr/share/gocode/src/github.com"
CTRD = GOCODE + "/containerd/containerd"
OUT = os.path.dirname(os.path.abspath(__file__))

# (source path, destination path relative to OUT)
FILES = [
    (CTRD + "/api/types/descriptor.proto", "containerd/types/descriptor.proto"),
    (CTRD + "/api/types/metrics.proto", "containerd/types/metrics.proto"),
    (CTRD + "/api/types/mount.proto", "containerd/types/mount.proto"),
    (CTRD + "/api/types/task/task.proto", "containerd/types/task/task.proto"),
    (CTRD + "/api/events/container.proto", "containerd/events/container.proto"),
    (CTRD + "/api/events/content.proto", "containerd/events/content.proto"),
    (CTRD + "/api/events/image.proto", "containerd/events/image.proto"),
    (CTRD + "/api/events/namespace.proto", "containerd/events/namespace.proto"),
    (CTRD + "/api/events/snapshot.proto", "containerd/events/snapshot.proto"),
    (CTRD + "/api/events/task.proto", "containerd/events/task.proto"),
    (CTRD + "/api/services/content/v1/content.proto", "containerd/services/content/v1/content.proto"),
    (CTRD + "/api/services/diff/v1/diff.proto", "containerd/services/diff/v1/diff.proto"),
    (CTRD + "/api/services/events/v1/events.proto", "containerd/services/events/v1/events.proto"),
    (CTRD + "/api/services/images/v1/images.proto", "containerd/services/images/v1/images.proto"),
    (CTRD + "/api/services/leases/v1/leases.proto", "containerd/services/leases/v1/leases.proto"),
    (CTRD + "/api/services/namespaces/v1/namespace.proto", "containerd/services/namespaces/v1/namespace.proto"),
    (CTRD + "/api/services/snapshots/v1/snapshots.proto", "containerd/services/snapshots/v1/snapshots.proto"),
    (CTRD + "/api/services/tasks/v1/tasks.proto", "containerd/services/tasks/v1/tasks.proto"),
    (CTRD + "/api/services/ttrpc/events/v1/events.proto", "containerd/services/ttrpc/events/v1/events.proto"),
    (CTRD + "/api/services/version/v1/version.proto", "containerd/services/version/v1/version.proto"),
    (CTRD + "/runtime/v2/task/shim.proto", "containerd/runtime/task/v2/shim.proto"),
    (GOCODE + "/containerd/cgroups/stats/v1/metrics.proto", "containerd/cgroups/v1/metrics.proto"),
    (GOCODE + "/containerd/cgroups/v2/stats/metrics.proto", "containerd/cgroups/v2/metrics.proto"),
    (GOCODE + "/gogo/googleapis/google/rpc/status.proto", "google/rpc/status.proto"),
]

CONTAINERD2_TAG = "v2.1.4"

# containerd 2.x files: (path in containerd's repository, destination)
FILES2 = [
    ("api/types/platform.proto", "containerd/types/platform.proto"),
    ("api/services/transfer/v1/transfer.proto", "containerd/services/transfer/v1/transfer.proto"),
    ("api/services/streaming/v1/streaming.proto", "containerd/services/streaming/v1/streaming.proto"),
    ("api/types/transfer/imagestore.proto", "containerd/types/transfer/imagestore.proto"),
    ("api/types/transfer/importexport.proto", "containerd/types/transfer/importexport.proto"),
    ("api/types/transfer/progress.proto", "containerd/types/transfer/progress.proto"),
    ("api/types/transfer/registry.proto", "containerd/types/transfer/registry.proto"),
    ("api/types/transfer/streaming.proto", "containerd/types/transfer/streaming.proto"),
    # Introspection 2.x (PluginInfo, Server's pid/pidns/deprecations) replaces 1.6's file
    ("api/services/introspection/v1/introspection.proto", "containerd/services/introspection/v1/introspection.proto"),
    ("api/types/introspection.proto", "containerd/types/introspection.proto"),
    ("api/types/sandbox.proto", "containerd/types/sandbox.proto"),
    ("api/services/sandbox/v1/sandbox.proto", "containerd/services/sandbox/v1/sandbox.proto"),
    ("api/events/sandbox.proto", "containerd/events/sandbox.proto"),
    # 2.x: the snapshotter on snapshot events, /content/create
    ("api/events/snapshot.proto", "containerd/events/snapshot.proto"),
    ("api/events/content.proto", "containerd/events/content.proto"),
    # Container.sandbox (field 11), the sandbox a container belongs to
    ("api/services/containers/v1/containers.proto", "containerd/services/containers/v1/containers.proto"),
    # ApplyRequest.sync_fs, DiffRequest.source_date_epoch
    ("api/services/diff/v1/diff.proto", "containerd/services/diff/v1/diff.proto"),
    # Create/UpdateImageRequest.source_date_epoch
    ("api/services/images/v1/images.proto", "containerd/services/images/v1/images.proto"),
]

# Kubernetes' CRI (k8s.io/cri-api, Apache-2.0) as containerd CONTAINERD2_TAG
# vendors it: (path in containerd's repository, destination)
FILES_CRI = [
    ("vendor/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto", "k8s/cri/runtime/v1/api.proto"),
]

IMPORT_MAP = {}
for src, dst in FILES:
    key = src.replace(GOCODE + "/", "github.com/")
    IMPORT_MAP[key] = dst
IMPORT_MAP["google/rpc/status.proto"] = "google/rpc/status.proto"
for src, dst in FILES2:
    IMPORT_MAP["github.com/containerd/containerd/" + src] = dst

HEADER = (
    "// Wire contract of containerd's API (containerd 1.6, Apache-2.0), normalised by\n"
    "// crates/api/proto/regen.py. Do not edit by hand: field numbers are a fact to match.\n\n"
)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = []
    for line in text.splitlines():
        # no string literal in these files contains "//" except go_package options,
        # which are dropped below anyway
        idx = line.find("//")
        if idx >= 0:
            line = line[:idx]
        out.append(line.rstrip())
    return "\n".join(out)


def strip_field_options(line):
    # drop bracketed option lists made only of gogoproto / containerd plugin options
    def repl(m):
        opts = [o.strip() for o in m.group(1).split(",")]
        keep = [o for o in opts if not o.startswith("(gogoproto.") and not o.startswith("(containerd.")]
        return " [" + ", ".join(keep) + "]" if keep else ""
    return re.sub(r"\s*\[([^\]]*)\]", repl, line)


def normalise(text, header=None):
    text = strip_comments(text)
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("import weak") or "gogo.proto" in s or "fieldpath.proto" in s:
            continue
        if s.startswith("option ") and not s.startswith("option (") or s.startswith("option (gogoproto") or s.startswith("option (containerd"):
            continue
        m = re.match(r'(\s*)import\s+"([^"]+)";', line)
        if m:
            path = m.group(2)
            if path.startswith("google/protobuf/"):
                lines.append(line)
                continue
            if path not in IMPORT_MAP:
                sys.exit("unmapped import %s" % path)
            lines.append('%simport "%s";' % (m.group(1), IMPORT_MAP[path]))
            continue
        lines.append(strip_field_options(line))
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    # a comment removed at the top of a block leaves a blank line behind
    text = re.sub(r"\{\n[ \t]*\n", "{\n", text)
    return (header or HEADER) + text


HEADER2 = (
    "// Wire contract of containerd's API (containerd %s, Apache-2.0), normalised by\n"
    "// crates/api/proto/regen.py. Do not edit by hand: field numbers are a fact to match.\n\n"
) % CONTAINERD2_TAG


HEADER_CRI = (
    "// Wire contract of Kubernetes' CRI (k8s.io/cri-api as containerd %s vendors it,\n"
    "// Apache-2.0), normalised by crates/api/proto/regen.py. Do not edit by hand.\n\n"
) % CONTAINERD2_TAG


def main():
    for src, dst in FILES:
        if not os.path.exists(src):
            sys.exit("missing %s: apt-get install golang-github-containerd-containerd-dev" % src)
        with open(src) as f:
            text = normalise(f.read())
        path = os.path.join(OUT, dst)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        print("wrote", dst)
    git_dir = sys.argv[1] if len(sys.argv) > 1 else None
    if not git_dir:
        print("no containerd git directory given: containerd 2.x files left as they are")
        return
    for src, dst in FILES2:
        text = subprocess.run(
            ["git", "-C", git_dir, "show", "%s:%s" % (CONTAINERD2_TAG, src)],
            check=True, capture_output=True, text=True,
        ).stdout
        path = os.path.join(OUT, dst)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(normalise(text, HEADER2))
        print("wrote", dst)
    for src, dst in FILES_CRI:
        text = subprocess.run(
            ["git", "-C", git_dir, "show", "%s:%s" % (CONTAINERD2_TAG, src)],
            check=True, capture_output=True, text=True,
        ).stdout
        path = os.path.join(OUT, dst)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(normalise(text, HEADER_CRI))
        print("wrote", dst)


if __name__ == "__main__":
    main()
