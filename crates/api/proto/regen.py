#!/usr/bin/env python3
"""Regenerate stevedore's wire-contract .proto files.

The wire contract (packages, services, methods, messages, field numbers and
types) must match containerd's API exactly.  This script reads containerd 1.6's
definitions as Debian ships them (package golang-github-containerd-containerd-dev
and its dependencies) and writes a normalised copy under this directory:
comments, Go options and gogoproto annotations are removed (they do not affect
the wire), and import paths are shortened to this tree's layout.

Usage: python3 crates/api/proto/regen.py   (run from anywhere; needs the package)
The output is committed, so building stevedore never needs this script or protoc.
"""
import os
import re
import sys

GOCODE = "/usr/share/gocode/src/github.com"
CTRD = GOCODE + "/containerd/containerd"
OUT = os.path.dirname(os.path.abspath(__file__))

# (source path, destination path relative to OUT)
FILES = [
    (CTRD + "/api/types/descriptor.proto", "containerd/types/descriptor.proto"),
    (CTRD + "/api/types/metrics.proto", "containerd/types/metrics.proto"),
    (CTRD + "/api/types/mount.proto", "containerd/types/mount.proto"),
    (CTRD + "/api/types/platform.proto", "containerd/types/platform.proto"),
    (CTRD + "/api/types/task/task.proto", "containerd/types/task/task.proto"),
    (CTRD + "/api/events/container.proto", "containerd/events/container.proto"),
    (CTRD + "/api/events/content.proto", "containerd/events/content.proto"),
    (CTRD + "/api/events/image.proto", "containerd/events/image.proto"),
    (CTRD + "/api/events/namespace.proto", "containerd/events/namespace.proto"),
    (CTRD + "/api/events/snapshot.proto", "containerd/events/snapshot.proto"),
    (CTRD + "/api/events/task.proto", "containerd/events/task.proto"),
    (CTRD + "/api/services/containers/v1/containers.proto", "containerd/services/containers/v1/containers.proto"),
    (CTRD + "/api/services/content/v1/content.proto", "containerd/services/content/v1/content.proto"),
    (CTRD + "/api/services/diff/v1/diff.proto", "containerd/services/diff/v1/diff.proto"),
    (CTRD + "/api/services/events/v1/events.proto", "containerd/services/events/v1/events.proto"),
    (CTRD + "/api/services/images/v1/images.proto", "containerd/services/images/v1/images.proto"),
    (CTRD + "/api/services/introspection/v1/introspection.proto", "containerd/services/introspection/v1/introspection.proto"),
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

IMPORT_MAP = {}
for src, dst in FILES:
    key = src.replace(GOCODE + "/", "github.com/")
    IMPORT_MAP[key] = dst
IMPORT_MAP["google/rpc/status.proto"] = "google/rpc/status.proto"

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


def normalise(text):
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
    return HEADER + text


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


if __name__ == "__main__":
    main()
