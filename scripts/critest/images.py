#!/usr/bin/env python3
"""The images Kubernetes' CRI validation suite (critest, cri-tools v1.36.0)
pulls, made offline for a local registry.

    python3 scripts/critest/images.py --out DIR --testbin PATH

writes one OCI image layout per image under DIR/<n>/ and DIR/images.txt,
lines of `<layout dir> <repository:tag>`: the repository is the upstream
image's path without its registry host (`e2e-test-images/busybox:1.29-2`
for registry.k8s.io/e2e-test-images/busybox:1.29-2), so one local registry
mirrors registry.k8s.io, k8s.gcr.io and gcr.io at once (a hosts.toml per
upstream host) and critest runs with the image names it has built in.

Every image starts from the layer of bench/images/mkimage.py's busybox, with
every applet of Debian's busybox-static hard-linked to it (as the upstream
busybox image has them, so masking /bin/ls masks only ls) and PATH
programs busybox-static lacks (ipcs, pgrep) from the static helper built
from scripts/critest/testbin. What each upstream image must show critest:

  e2e-test-images/busybox:1.29-2       the default image (sh, sleep, top, id, ...)
  e2e-test-images/nginx:1.14-2         nginx on port 80, pid in /var/run/nginx.pid,
                                       "master process" in its command line (testbin)
  e2e-test-images/httpd:2.4.39-4       an HTTP server on port 80 logging "httpd"
                                       (busybox httpd)
  e2e-test-images/nonewprivs:1.3       a setuid-root program printing its euid
  k8s-staging-cri-tools/hostnet-nginx-<arch>  nginx on port 12003
  k8s-staging-cri-tools/test-image-user-*     USER 1002, www-data, 1003:1004, www-data:1004
  k8s-staging-cri-tools/test-image-predefined-group  USER 1000 in group 50000
  k8s-staging-cri-tools/test-image-{1,2,3,latest}    each with its own file
  k8s-staging-cri-tools/test-image-tags:{1,2,3}      one image, three tags
  k8s-staging-cri-tools/test-image-tag:{test,all}    one image, two tags
  pause:3.9 (pulled as registry.k8s.io/ and k8s.gcr.io/pause:3.9), pause:3.10
                                       (the sandbox image): testbin's pause, which
                                       leaves no other process in the pod

Not made: k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2...: critest
names it by a digest only the upstream bytes have.
"""

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "mkimage", os.path.join(HERE, "..", "..", "bench", "images", "mkimage.py"))
mk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mk)

# A tar gives a hard link its target's mode; mkimage.py writes links 0644,
# which containerd applies to the shared inode (stevedore leaves the
# target's). Every link here names an executable.
_tarinfo = mk.tarinfo


def _link_tarinfo(name, kind, mode=0o644, size=0, uid=0, gid=0, target=""):
    if kind == "hardlink":
        mode = 0o755
    return _tarinfo(name, kind, mode, size, uid, gid, target)


mk.tarinfo = _link_tarinfo

PAUSE_CMD = ["/pause"]
NGINX_CMD = ["nginx", "-g", "daemon off;"]
HTTPD_CMD = ["sh", "-c",
             "echo \"AH00558: httpd: Could not reliably determine the server's fully "
             "qualified domain name\" >&2; exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs"]
TESTBIN_NAMES = ["ipcs", "pgrep"]


def applets():
    out = subprocess.run(["/bin/busybox", "--list"], check=True, capture_output=True,
                         text=True).stdout
    return sorted(a for a in out.split() if a and "/" not in a and a != "busybox")


def base_entries(testbin, passwd=mk.PASSWD, group=mk.GROUP):
    """busybox with every applet hard-linked, users, groups and testbin's
    programs."""
    tb_size = os.path.getsize(testbin)
    entries = [
        mk.f("bin/busybox", mode=0o755, source=("file", "/bin/busybox"),
             size=os.path.getsize("/bin/busybox")),
        mk.f("usr/lib/testbin", mode=0o755, source=("file", testbin), size=tb_size),
        mk.f("etc/passwd", passwd),
        mk.f("etc/group", group),
        mk.f("etc/hostname", b"busybox\n"),
        mk.d("tmp", mode=0o1777),
        mk.d("root", mode=0o700),
        mk.d("proc"), mk.d("sys"), mk.d("dev"), mk.d("var/run"), mk.d("usr/sbin"),
        mk.d("home"),
    ]
    entries += [mk.hard(f"bin/{a}", "bin/busybox") for a in applets()
                if a not in TESTBIN_NAMES]
    entries += [mk.hard(f"usr/bin/{n}", "usr/lib/testbin") for n in TESTBIN_NAMES]
    return links_last(mk.with_parents(entries))


def links_last(entries):
    """A tar names a hard link's target before the link."""
    return sorted(entries, key=lambda e: e["type"] == "hardlink")


def build(out, name, entries_list, cmd, user=None, ports=None, stop_signal=None):
    """One OCI layout at out/<n> for `name` (repository:tag)."""
    if os.path.exists(out):
        shutil.rmtree(out)
    layout = mk.Layout(out)
    descs, diff_ids = [], []
    for entries in entries_list:
        desc, facts = layout.add_layer(entries, "gzip")
        descs.append(desc)
        diff_ids.append(facts["diff_id"])
    cfg = mk.image_config(mk.host_arch(), diff_ids, cmd)
    if user is not None:
        cfg["config"]["User"] = user
    if ports:
        cfg["config"]["ExposedPorts"] = {f"{p}/tcp": {} for p in ports}
    if stop_signal:
        cfg["config"]["StopSignal"] = stop_signal
    cdesc = layout.put_json(mk.MT_CONFIG, cfg)
    top = mk.manifest(layout, cdesc, descs)
    top["annotations"] = mk.annotations(name)
    layout.finish({"schemaVersion": 2, "mediaType": mk.MT_INDEX, "manifests": [top]})
    return top["digest"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--testbin", required=True, help="the static scripts/critest/testbin")
    a = p.parse_args()
    if not os.path.isfile("/bin/busybox"):
        mk.die("/bin/busybox not found: apt-get install busybox-static")
    os.makedirs(a.out, exist_ok=True)
    base = base_entries(a.testbin)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    cri = "k8s-staging-cri-tools/"
    images = []  # (names, layers, cmd, options)

    def add(names, extra=None, cmd=("sh",), base_layer=None, **opts):
        layers = [base_layer or base] + ([links_last(mk.with_parents(extra))] if extra else [])
        images.append((names, layers, list(cmd), opts))

    add(["e2e-test-images/busybox:1.29-2"])
    # a copy, not a hard link: a link to a lower layer's file does not
    # unpack (stevedore and containerd 1.6.20 alike), and docker never
    # writes one
    nginx = [mk.f("usr/sbin/nginx", mode=0o755, source=("file", a.testbin),
                  size=os.path.getsize(a.testbin))]
    add(["e2e-test-images/nginx:1.14-2"], nginx, NGINX_CMD, ports=[80],
        stop_signal="SIGTERM")
    add([f"{cri}hostnet-nginx-{arch}:latest"], nginx, NGINX_CMD + ["-port", "12003"],
        ports=[12003], stop_signal="SIGTERM")
    add(["e2e-test-images/httpd:2.4.39-4"],
        [mk.f("usr/local/apache2/htdocs/index.html", b"<html><body><h1>It works!</h1></body></html>\n")],
        HTTPD_CMD, ports=[80], stop_signal="SIGWINCH")
    add(["e2e-test-images/nonewprivs:1.3"],
        [mk.f("usr/local/bin/nonewprivs", mode=0o4755, source=("file", a.testbin),
              size=os.path.getsize(a.testbin))],
        ["/usr/local/bin/nonewprivs"])
    for img, user in [("test-image-user-uid", "1002"), ("test-image-user-username", "www-data"),
                      ("test-image-user-uid-group", "1003:1004"),
                      ("test-image-user-username-group", "www-data:1004")]:
        add([f"{cri}{img}:latest"], user=user)
    predefined = base_entries(
        a.testbin,
        passwd=mk.PASSWD + b"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n",
        group=mk.GROUP + b"default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
    add([f"{cri}test-image-predefined-group:latest"],
        [mk.d("home/default-user", uid=1000, gid=1000)], base_layer=predefined, user="1000")
    for img in ["test-image-1", "test-image-2", "test-image-3", "test-image-latest"]:
        add([f"{cri}{img}:latest"], [mk.f(img, b"")])
    add([f"{cri}test-image-tags:{t}" for t in (1, 2, 3)], [mk.f("same-image", b"")])
    add([f"{cri}test-image-tag:test", f"{cri}test-image-tag:all"], [mk.f("test-image-tag", b"")])
    pause = mk.f("pause", mode=0o755, source=("file", a.testbin),
                 size=os.path.getsize(a.testbin))
    add(["pause:3.9"], [pause, mk.f("pause-3.9", b"")], PAUSE_CMD)
    add(["pause:3.10"], [pause, mk.f("pause-3.10", b"")], PAUSE_CMD)

    lines = []
    for i, (names, layers, cmd, opts) in enumerate(images):
        d = os.path.join(a.out, str(i))
        build(d, names[0], layers, cmd, **opts)
        lines += [f"{d} {n}" for n in names]
    with open(os.path.join(a.out, "images.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
