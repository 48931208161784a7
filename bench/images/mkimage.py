#!/usr/bin/env python3
"""Deterministic test images for stevedore's tests and benchmarks.

    python3 bench/images/mkimage.py <kind> --out DIR [--compression gzip|zstd|none]
                                    [--scale F] [--name REF] [--cmd JSON]

kinds:
  busybox  Debian's busybox-static as /bin/busybox plus applet symlinks,
           /etc/passwd, /etc/group, /tmp, /root. One layer.
  big      5 layers, ~30k files at --scale 1 (~360 MB unpacked): small text
           files, a few large pseudo-random binaries, hardlinks, symlinks, a
           replaced file, whiteouts of a lower file and directory, and an
           opaque directory in the top layer.
  multi    an OCI image index with linux/amd64 and linux/arm64/v8 manifests
           (both carry the busybox layer; only their configs differ).

Every kind writes into DIR:
  DIR/oci/                 OCI image layout (oci-layout, index.json, blobs/sha256/)
  DIR/<kind>-oci.tar       the same layout as a tar (`ctr images import`,
                           `skopeo ... oci-archive:`); index.json carries the
                           io.containerd.image.name and
                           org.opencontainers.image.ref.name annotations
  DIR/<kind>-docker.tar    `docker save` format (busybox only; uncompressed layer)
  DIR/image.json           what was built: name, digests, sizes, file counts,
                           and paths that must / must not exist after unpack

Output is byte-for-byte deterministic: fixed mtimes, uid/gid, sorted entries,
gzip with mtime 0 and no file name, a seeded PRNG for all content. Only Python's
standard library and the `zstd` CLI are used; nothing touches the network.
"""

import argparse
import gzip
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile

MTIME = 1700000000  # 2023-11-14T22:13:20Z, the mtime of every tar entry
CREATED = "2023-11-14T22:13:20Z"
GZIP_LEVEL = 6  # Go's and docker's default
ZSTD_LEVEL = 3  # zstd's and containerd's default
CHUNK = 1 << 20

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
DEFAULT_NAMES = {
    "busybox": "docker.io/library/busybox:latest",
    "big": "docker.io/stevedore/big:{compression}",
    "multi": "docker.io/stevedore/multi:latest",
}
APPLETS = [
    "[", "cat", "chmod", "chown", "cp", "cut", "date", "dd", "df", "du", "echo",
    "env", "false", "find", "free", "grep", "head", "hostname", "id", "kill",
    "ln", "ls", "mkdir", "mount", "mv", "nproc", "printf", "ps", "pwd",
    "readlink", "rm", "rmdir", "sed", "sh", "sha256sum", "sleep", "sort", "stat",
    "sync", "tail", "tee", "test", "top", "touch", "tr", "true", "umount",
    "uname", "uniq", "wc", "whoami", "xargs", "yes",
    "awk", "basename", "dirname", "expr", "nc", "seq", "stty", "tty",
]
PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    b"bin:x:2:2:bin:/bin:/bin/false\n"
    b"sys:x:3:3:sys:/dev:/bin/false\n"
    b"sync:x:4:100:sync:/bin:/bin/sync\n"
    b"mail:x:8:8:mail:/var/spool/mail:/bin/false\n"
    b"www-data:x:33:33:www-data:/var/www:/bin/false\n"
    b"operator:x:37:37:Operator:/var:/bin/false\n"
    b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = b"".join(
    f"{name}:x:{gid}:{members}\n".encode()
    for name, gid, members in [
        ("root", 0, ""), ("daemon", 1, ""), ("bin", 2, ""), ("sys", 3, ""),
        ("adm", 4, ""), ("tty", 5, ""), ("disk", 6, ""), ("lp", 7, ""),
        ("mail", 8, ""), ("kmem", 9, ""), ("wheel", 10, "root"),
        ("www-data", 33, ""), ("operator", 37, ""), ("staff", 50, ""),
        ("users", 100, ""), ("nogroup", 65534, ""),
    ]
)
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def die(msg):
    print(f"mkimage: {msg}", file=sys.stderr)
    sys.exit(1)


def host_arch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(m, m)


def canonical(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------
# Layer contents: a list of entries, each a dict with "path" and "type".


class PrngReader:
    """File-like reader of `size` pseudo-random bytes from a seeded PRNG.

    Bytes are mapped onto 16 values (4 bits of entropy per byte), so
    compressors do real work and reach roughly a 2:1 ratio, like binaries do.
    """

    TABLE = bytes(0x30 + (i % 16) for i in range(256))

    def __init__(self, seed, size):
        self.rng = random.Random(seed)
        self.left = size

    def read(self, n=-1):
        if n is None or n < 0 or n > self.left:
            n = self.left
        n = min(n, CHUNK)
        self.left -= n
        return self.rng.randbytes(n).translate(self.TABLE)


def d(path, mode=0o755, uid=0, gid=0):
    return {"path": path, "type": "dir", "mode": mode, "uid": uid, "gid": gid}


def f(path, data=b"", mode=0o644, uid=0, gid=0, source=None, size=None):
    e = {"path": path, "type": "file", "mode": mode, "uid": uid, "gid": gid}
    if source is not None:
        e["source"], e["size"] = source, size
    else:
        e["data"] = data
    return e


def sym(path, target):
    return {"path": path, "type": "symlink", "target": target}


def hard(path, target):
    return {"path": path, "type": "hardlink", "target": target}


def with_parents(entries, implicit=()):
    """Add a directory entry for every parent not listed (except those under
    the `implicit` prefixes, which the layer leaves to its unpacker), then
    sort by path."""
    have = {e["path"] for e in entries}
    extra = []
    for e in entries:
        if any(e["path"].startswith(p + "/") for p in implicit):
            continue
        parts = e["path"].split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in have:
                have.add(p)
                extra.append(d(p))
    return sorted(entries + extra, key=lambda e: e["path"])


def busybox_layer():
    src = "/bin/busybox"
    if not os.path.isfile(src):
        die(f"{src} not found: apt-get install busybox-static")
    entries = [
        f("bin/busybox", mode=0o755, source=("file", src), size=os.path.getsize(src)),
        # the users and groups of the upstream busybox image, which client
        # tests (containerd's among them) name
        f("etc/passwd", PASSWD),
        f("etc/group", GROUP),
        f("etc/hostname", b"busybox\n"),
        d("tmp", mode=0o1777),
        d("root", mode=0o700),
        d("proc"), d("sys"), d("dev"), d("usr/bin"), d("var"),
    ]
    entries += [sym(f"bin/{a}", "busybox") for a in APPLETS]
    return with_parents(entries)


WORDS = None


def words():
    global WORDS
    if WORDS is None:
        rng = random.Random("words")
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        WORDS = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(4000)]
    return WORDS


def text(rng, size):
    out, n, w = [], 0, words()
    while n < size:
        line = " ".join(rng.choices(w, k=rng.randint(4, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def big_layers(scale):
    """Five layers of entries, and the facts image.json reports as checks."""
    counts = [10000, 8000, 6000, 4000, 2000]
    bins = [[], [75, 75], [75], [75], []]  # MB of each large binary per layer
    sizes = [max(8, round(c * scale)) for c in counts]
    ndirs = [max(2, (n + 99) // 100) for n in sizes]

    def txt(li, i):
        return f"usr/share/bench/l{li}/d{i % ndirs[li]:03d}/f{i:05d}.txt"

    # files of d000 in layer 0: removed, replaced, kept by the top layer
    gone, replaced, kept = txt(0, 0), txt(0, ndirs[0]), txt(0, 2 * ndirs[0])
    layers = []
    for li, n in enumerate(sizes):
        rng = random.Random(f"big-layer-{li}")
        entries = []
        for i in range(n):
            size = int(rng.lognormvariate(7.2, 0.8))  # median ~1.3 KB, mean ~1.8 KB
            own = 1000 if (li == 0 and i % 50 == 1) else 0
            entries.append(f(txt(li, i), text(rng, size), uid=own, gid=own))
        for bi, mb in enumerate(bins[li]):
            size = max(64 << 10, int(mb * scale * 1_000_000))
            entries.append(f(f"opt/bench/l{li}/blob{bi}.bin", mode=0o755,
                             source=("prng", f"big-blob-{li}-{bi}"), size=size))
        if li == 1:
            # symlinks, relative and absolute, into this and the lower layer
            for i in range(max(2, n // 200)):
                entries.append(sym(f"usr/bin/tool{i}", "../../" + txt(1, i)))
            entries.append(sym("usr/lib/abs-link", "/" + kept))
            entries.append(sym("usr/lib/dir-link", "../share/bench/l0"))
        if li == 2:
            # hardlinks to files of the same layer (one of them to a large binary)
            for i in range(max(2, n // 300)):
                entries.append(hard(f"usr/share/bench/l2/links/h{i:04d}.txt", txt(2, i)))
            entries.append(hard("opt/bench/l2/blob0.hardlink", "opt/bench/l2/blob0.bin"))
        if li == 0:
            # a directory with its own owner and mode, which layer 3 writes
            # into without carrying it (its attributes must survive)
            entries.append(d("srv/owned", mode=0o750, uid=1000, gid=1000))
        if li == 3:
            entries.append(f("srv/owned/implicit/new.txt", b"parents not in this layer\n"))
        if li == 4:
            # whiteouts of a lower file and a lower directory, an opaque
            # directory, and a file that replaces a lower one
            d0 = os.path.dirname(gone)
            entries += [
                f(f"{d0}/.wh.{os.path.basename(gone)}", mode=0),
                f("usr/share/bench/l0/.wh.d001", mode=0),
                f("usr/share/bench/l3/d000/.wh..wh..opq", mode=0),
                f("usr/share/bench/l3/d000/after-opaque.txt", b"new in layer 4\n"),
                f(replaced, b"replaced in layer 4\n"),
            ]
        layers.append(with_parents(entries, implicit=("srv",) if li == 3 else ()))
    checks = {
        "present": ["srv/owned/implicit/new.txt", kept, replaced, "usr/share/bench/l3/d000/after-opaque.txt",
                    "usr/share/bench/l2/links/h0000.txt", "opt/bench/l2/blob0.hardlink",
                    "usr/lib/abs-link", "usr/bin/tool0"],
        "absent": [gone, "usr/share/bench/l0/d001", txt(3, 0)],
        "replaced": {replaced: "replaced in layer 4\n"},
        # directories created implicitly by a later layer keep these
        "dirs": {"srv/owned": {"mode": 0o750, "uid": 1000, "gid": 1000}},
    }
    return layers, checks


# ---------------------------------------------------------------------------
# Writing blobs


class HashWriter:
    """Writes through to a file while hashing and counting."""

    def __init__(self, fh):
        self.fh, self.h, self.n = fh, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.fh.write(b)

    def tell(self):
        return self.n

    def flush(self):
        self.fh.flush()


def tarinfo(name, kind, mode=0o644, size=0, uid=0, gid=0, target=""):
    ti = tarfile.TarInfo(name)
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
               "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
    ti.mode = mode if kind != "symlink" else 0o777
    ti.size = size if kind == "file" else 0
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = MTIME
    ti.linkname = target
    return ti


def write_layer_tar(entries, path):
    """Write an uncompressed layer tar; returns (diff_id, size, unpacked bytes, files)."""
    unpacked, files = 0, 0
    with open(path, "wb") as fh:
        hw = HashWriter(fh)
        with tarfile.open(fileobj=hw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for e in entries:
                kind = e["type"]
                if kind == "file":
                    size = e["size"] if "source" in e else len(e["data"])
                    ti = tarinfo(e["path"], kind, e["mode"], size, e["uid"], e["gid"])
                    src = e.get("source")
                    if src is None:
                        tar.addfile(ti, _BytesReader(e["data"]))
                    elif src[0] == "file":
                        with open(src[1], "rb") as s:
                            tar.addfile(ti, s)
                    else:
                        tar.addfile(ti, PrngReader(src[1], size))
                    unpacked += size
                    files += 1
                elif kind == "dir":
                    tar.addfile(tarinfo(e["path"], kind, e["mode"], 0, e["uid"], e["gid"]))
                else:
                    tar.addfile(tarinfo(e["path"], kind, target=e["target"]))
                    files += 1
        fh.flush()
        os.fsync(fh.fileno())
    return "sha256:" + hw.h.hexdigest(), hw.n, unpacked, files


class _BytesReader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, n=-1):
        if n is None or n < 0:
            n = len(self.data) - self.pos
        b = self.data[self.pos:self.pos + n]
        self.pos += len(b)
        return b


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, root):
        self.root = root
        self.blobs = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blobs, exist_ok=True)
        self.tmp = os.path.join(root, ".tmp")
        os.makedirs(self.tmp, exist_ok=True)

    def put_file(self, path):
        hexd = sha256_file(path)
        size = os.path.getsize(path)
        os.chmod(path, 0o444)
        os.replace(path, os.path.join(self.blobs, hexd))
        return "sha256:" + hexd, size

    def put_bytes(self, data):
        hexd = hashlib.sha256(data).hexdigest()
        dst = os.path.join(self.blobs, hexd)
        if not os.path.exists(dst):
            tmp = os.path.join(self.tmp, hexd)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dst)
        return "sha256:" + hexd, len(data)

    def put_json(self, mediatype, obj):
        data = canonical(obj)
        digest, size = self.put_bytes(data)
        return {"mediaType": mediatype, "digest": digest, "size": size}

    def add_layer(self, entries, compression, keep_tar=None):
        """Write one layer; returns (descriptor, facts). keep_tar: path to
        hardlink the uncompressed tar to (for the docker archive)."""
        raw = os.path.join(self.tmp, "layer.tar")
        diff_id, tar_size, unpacked, files = write_layer_tar(entries, raw)
        if keep_tar:
            os.link(raw, keep_tar)
        out = os.path.join(self.tmp, "layer.blob")
        if compression == "none":
            os.link(raw, out)
        elif compression == "gzip":
            with open(raw, "rb") as src, open(out, "wb") as dst:
                with gzip.GzipFile(filename="", mode="wb", fileobj=dst,
                                   compresslevel=GZIP_LEVEL, mtime=0) as gz:
                    shutil.copyfileobj(src, gz, CHUNK)
        elif compression == "zstd":
            if shutil.which("zstd") is None:
                die("zstd not found: apt-get install zstd")
            subprocess.run(["zstd", "-q", "-f", f"-{ZSTD_LEVEL}", "-T1", "--no-progress",
                            raw, "-o", out], check=True)
        else:
            die(f"unknown compression {compression!r}")
        os.unlink(raw)
        digest, size = self.put_file(out)
        desc = {"mediaType": MT_LAYER[compression], "digest": digest, "size": size}
        return desc, {"diff_id": diff_id, "tar_size": tar_size,
                      "unpacked_size": unpacked, "files": files}

    def finish(self, index):
        shutil.rmtree(self.tmp)
        with open(os.path.join(self.root, "oci-layout"), "wb") as fh:
            fh.write(canonical({"imageLayoutVersion": "1.0.0"}))
        with open(os.path.join(self.root, "index.json"), "wb") as fh:
            fh.write(canonical(index))


def image_config(arch, diff_ids, cmd, variant=None):
    cfg = {
        "created": CREATED,
        "architecture": arch,
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "stevedore bench/images/mkimage.py"}
                    for _ in diff_ids],
    }
    if variant:
        cfg["variant"] = variant
    return cfg


def manifest(layout, config_desc, layer_descs):
    return layout.put_json(MT_MANIFEST, {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config_desc,
        "layers": layer_descs,
    })


def annotations(name):
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    return {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}


# ---------------------------------------------------------------------------
# Archives


def tar_tree(src_dir, dst_tar):
    """Tar a directory deterministically: sorted, directory records first,
    fixed mtime and owner; blobs keep their 0444 mode."""
    tmp = dst_tar + ".tmp"
    paths = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src_dir)
        if rel != ".":
            paths.append((rel, True))
        for fn in filenames:
            paths.append((fn if rel == "." else os.path.join(rel, fn), False))
    paths.sort()
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, is_dir in paths:
            full = os.path.join(src_dir, rel)
            if is_dir:
                tar.addfile(tarinfo(rel + "/", "dir", 0o755))
            else:
                mode = os.stat(full).st_mode & 0o777
                ti = tarinfo(rel, "file", mode, os.path.getsize(full))
                with open(full, "rb") as fh:
                    tar.addfile(ti, fh)
    os.replace(tmp, dst_tar)


def docker_archive(path, name, config_bytes, layer_tars, diff_ids):
    """`docker save` format: manifest.json, repositories, <config>.json and
    <id>/{VERSION,json,layer.tar} with uncompressed layers."""
    repo, tag = name.rsplit(":", 1)
    short = repo
    for prefix in ("docker.io/library/", "docker.io/"):
        if short.startswith(prefix):
            short = short[len(prefix):]
            break
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    members = {config_name: config_bytes}
    layers = []
    parent = ""
    for layer_tar, diff_id in zip(layer_tars, diff_ids):
        lid = hashlib.sha256((parent + diff_id).encode()).hexdigest()
        members[f"{lid}/VERSION"] = b"1.0"
        v1 = {"id": lid, "created": CREATED, "os": "linux"}
        if parent:
            v1["parent"] = parent
        members[f"{lid}/json"] = canonical(v1)
        members[f"{lid}/layer.tar"] = ("file", layer_tar)
        layers.append(f"{lid}/layer.tar")
        parent = lid
    members["manifest.json"] = canonical([{
        "Config": config_name, "RepoTags": [f"{short}:{tag}"], "Layers": layers}])
    members["repositories"] = canonical({short: {tag: parent}})
    tmp = path + ".tmp"
    dirs = sorted({m.split("/")[0] for m in members if "/" in m})
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name_ in sorted(list(members) + [x + "/" for x in dirs]):
            if name_.endswith("/"):
                tar.addfile(tarinfo(name_, "dir", 0o755))
                continue
            data = members[name_]
            if isinstance(data, tuple):
                ti = tarinfo(name_, "file", 0o644, os.path.getsize(data[1]))
                with open(data[1], "rb") as fh:
                    tar.addfile(ti, fh)
            else:
                tar.addfile(tarinfo(name_, "file", 0o644, len(data)), _BytesReader(data))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------


def build(kind, out, compression, scale, name, cmd_override=None):
    name = name or DEFAULT_NAMES[kind].format(compression=compression)
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    oci = os.path.join(out, "oci")
    if os.path.exists(oci):
        shutil.rmtree(oci)
    for stale in ("image.json", f"{kind}-oci.tar", f"{kind}-docker.tar"):
        if os.path.exists(os.path.join(out, stale)):
            os.unlink(os.path.join(out, stale))
    layout = Layout(oci)
    arch = host_arch()
    info = {"kind": kind, "name": name, "compression": compression, "scale": scale,
            "oci_dir": "oci", "oci_tar": f"{kind}-oci.tar"}

    if kind in ("busybox", "multi"):
        keep = os.path.join(out, ".busybox-layer.tar") if kind == "busybox" else None
        desc, facts = layout.add_layer(busybox_layer(), compression, keep_tar=keep)
        layer_descs, layer_facts = [desc], [facts]
        cmd = ["sh"]
        info["checks"] = {"present": ["bin/busybox", "bin/sh", "etc/passwd", "tmp"],
                          "absent": []}
    elif kind == "big":
        layers, checks = big_layers(scale)
        layer_descs, layer_facts = [], []
        for entries in layers:
            desc, facts = layout.add_layer(entries, compression)
            layer_descs.append(desc)
            layer_facts.append(facts)
        cmd = ["/bin/sh"]
        info["checks"] = checks
    else:
        die(f"unknown kind {kind!r} (busybox, big, multi)")

    if cmd_override is not None:
        cmd = cmd_override
    diff_ids = [x["diff_id"] for x in layer_facts]
    info["layers"] = [dict(desc, **facts) for desc, facts in zip(layer_descs, layer_facts)]
    info["unpacked_size"] = sum(x["unpacked_size"] for x in layer_facts)
    info["files"] = sum(x["files"] for x in layer_facts)

    if kind == "multi":
        platforms = [("amd64", None), ("arm64", "v8")]
        manifests = []
        for a, variant in platforms:
            cdesc = layout.put_json(MT_CONFIG, image_config(a, diff_ids, cmd, variant))
            mdesc = manifest(layout, cdesc, layer_descs)
            plat = {"architecture": a, "os": "linux"}
            if variant:
                plat["variant"] = variant
            mdesc["platform"] = plat
            manifests.append(mdesc)
        top = layout.put_json(MT_INDEX, {"schemaVersion": 2, "mediaType": MT_INDEX,
                                         "manifests": manifests})
        info["index_digest"] = top["digest"]
        info["manifests"] = [{"digest": m["digest"], "platform": m["platform"]}
                             for m in manifests]
    else:
        config = image_config(arch, diff_ids, cmd)
        cdesc = layout.put_json(MT_CONFIG, config)
        top = manifest(layout, cdesc, layer_descs)
        info["config_digest"] = cdesc["digest"]
    info["digest"] = top["digest"]
    info["media_type"] = top["mediaType"]
    top["annotations"] = annotations(name)
    layout.finish({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [top]})
    tar_tree(oci, os.path.join(out, info["oci_tar"]))

    if kind == "busybox":
        config_bytes = canonical(image_config(arch, diff_ids, cmd))
        docker_archive(os.path.join(out, "busybox-docker.tar"), name, config_bytes,
                       [keep], diff_ids)
        os.unlink(keep)
        info["docker_tar"] = "busybox-docker.tar"
    with open(os.path.join(out, "image.json"), "w") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return info


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["busybox", "big", "multi"])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--compression", choices=["gzip", "zstd", "none"], default="gzip")
    p.add_argument("--scale", type=float, default=1.0,
                   help="big: multiply file counts and binary sizes (1.0 = ~360 MB)")
    p.add_argument("--name", help="image reference (default depends on kind)")
    p.add_argument("--cmd", help="the image config's Cmd as a JSON list (e.g. a pause "
                                 "command for a CRI sandbox image)")
    a = p.parse_args()
    cmd = None
    if a.cmd is not None:
        try:
            cmd = json.loads(a.cmd)
        except ValueError as e:
            die(f"--cmd must be a JSON list of strings: {e}")
        if not isinstance(cmd, list) or not all(isinstance(x, str) for x in cmd):
            die("--cmd must be a JSON list of strings")
    if a.scale <= 0:
        die("--scale must be positive")
    os.makedirs(a.out, exist_ok=True)
    info = build(a.kind, a.out, a.compression, a.scale, a.name, cmd)
    print(json.dumps({k: info[k] for k in ("name", "digest", "unpacked_size", "files")}))


if __name__ == "__main__":
    main()
