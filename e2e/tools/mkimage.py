#!/usr/bin/env python3
"""Writes OCI image tarballs (docker-save layout, one layer) for the e2e node, without a registry.

    mkimage.py operator --dockerfile Dockerfile --bin-dir target/debug --tag localhost/mirrord-operator:e2e --out op.tar
    mkimage.py app      --tag localhost/mirrord-e2e/app:1 --out app.tar
    mkimage.py pause    --pause PAUSE_BINARY --tag localhost/mirrord-e2e/pause:1 --out pause.tar
    mkimage.py nginx    --tag localhost/mirrord-e2e/nginx:1 --out nginx.tar   # the registry mirror's cache pods
    mkimage.py registry --tag localhost/mirrord-e2e/registry:1 --out registry.tar   # its upstream in the e2e
    mkimage.py amqp     --tag localhost/mirrord-e2e/amqp:1 --out amqp.tar   # queue consumers (busybox + amqp-tools)
    mkimage.py check    --dockerfile Dockerfile      # only parse: fails when the Dockerfile says something new

The operator image is made from the runtime stage of the project's Dockerfile, read here instruction by
instruction: the binaries it COPYs (taken from --bin-dir instead of the musl build stage), the Alpine
packages it adds (replaced by the host's Debian files with the libraries `ldd` names), the groups it
adds, USER and ENTRYPOINT. Anything this tool does not know makes it fail, so the Dockerfile and the
e2e image cannot drift apart silently. Only the Python standard library; output is reproducible.
"""

import argparse
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

# Files of the Debian packages that stand in for the Dockerfile's Alpine packages. The agent runs
# `iptables`/`ip6tables` (nf_tables backend, as Alpine's), found on PATH.
XTABLES_MULTI = "/usr/sbin/xtables-nft-multi"
XTABLES_LIBDIR = "/usr/lib/x86_64-linux-gnu/xtables"
APK_STANDINS = {
    "iptables": {
        "binaries": [XTABLES_MULTI],
        "links": {f"/usr/sbin/{n}": "xtables-nft-multi" for n in ("iptables", "iptables-save", "iptables-restore")},
        "dirs": [XTABLES_LIBDIR],
        "files": ["/etc/protocols"],
    },
    "ip6tables": {
        "binaries": [XTABLES_MULTI],
        "links": {f"/usr/sbin/{n}": "xtables-nft-multi" for n in ("ip6tables", "ip6tables-save", "ip6tables-restore")},
        "dirs": [XTABLES_LIBDIR],
        "files": ["/etc/protocols"],
    },
    # The CA bundle at the path Alpine's ca-certificates installs it (and rustls-native-certs reads).
    "ca-certificates": {
        "binaries": [], "links": {}, "dirs": [], "files": ["/etc/ssl/certs/ca-certificates.crt"],
    },
}
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(Exception):
    pass


# ---- the Dockerfile's runtime stage -----------------------------------------------------------------

def dockerfile_instructions(text):
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    if cur:
        raise ImageError("Dockerfile ends inside a continued line")
    return out


def runtime_stage(text):
    """What the last stage of the Dockerfile puts into the image, as a dict; fails on anything unknown."""
    stages, stage = [], None
    for word, rest in dockerfile_instructions(text):
        if word == "FROM":
            stage = {"from": rest, "steps": []}
            stages.append(stage)
        elif stage is None:
            raise ImageError(f"{word} before FROM")
        else:
            stage["steps"].append((word, rest))
    if not stages:
        raise ImageError("no FROM in the Dockerfile")
    last = stages[-1]
    spec = {"packages": [], "groups": {}, "copies": [], "user": None, "entrypoint": None}
    if not re.match(r"^alpine:[0-9.]+$", last["from"]):
        raise ImageError(f"runtime stage FROM {last['from']!r}: only alpine:<version> is understood")
    for word, rest in last["steps"]:
        if word == "RUN":
            for cmd in (c.strip() for c in rest.split("&&")):
                argv = shlex.split(cmd)
                if argv[:3] == ["apk", "add", "--no-cache"]:
                    for pkg in argv[3:]:
                        if pkg not in APK_STANDINS:
                            raise ImageError(f"apk package {pkg!r} has no Debian stand-in in {__file__}")
                        spec["packages"].append(pkg)
                elif len(argv) == 4 and argv[:2] == ["addgroup", "-g"]:
                    spec["groups"][argv[3]] = int(argv[2])
                else:
                    raise ImageError(f"RUN command not understood: {cmd!r}")
        elif word == "COPY":
            argv = shlex.split(rest)
            if not argv or argv[0] != "--from=build" or len(argv) < 3 or not argv[-1].endswith("/"):
                raise ImageError(f"COPY not understood (expected --from=build SRC... DIR/): {rest!r}")
            for src in argv[1:-1]:
                spec["copies"].append((os.path.basename(src), argv[-1].rstrip("/")))
        elif word == "USER":
            spec["user"] = rest
        elif word == "ENTRYPOINT":
            spec["entrypoint"] = json.loads(rest)
        else:
            raise ImageError(f"instruction {word} in the runtime stage is not understood")
    if not spec["copies"] or spec["entrypoint"] is None:
        raise ImageError("the runtime stage copies no binary or has no ENTRYPOINT")
    return spec


# ---- a root filesystem in memory ---------------------------------------------------------------------

class Rootfs:
    def __init__(self):
        self.entries = {}  # path -> ("dir",) | ("file", bytes, mode) | ("link", target)

    def _parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/" + "/".join(parts[:i]), ("dir",))

    def dir(self, path):
        self._parents(path)
        self.entries.setdefault(path, ("dir",))

    def data(self, path, content, mode=0o644):
        self._parents(path)
        self.entries[path] = ("file", content if isinstance(content, bytes) else content.encode(), mode)

    def host_file(self, path, src=None):
        """Copies a host file (symlinks resolved) to path, keeping its permission bits."""
        src = src or path
        real = os.path.realpath(src)
        with open(real, "rb") as f:
            self.data(path, f.read(), os.stat(real).st_mode & 0o7777)

    def link(self, path, target):
        self._parents(path)
        self.entries[path] = ("link", target)

    def elf_with_libs(self, path, src=None):
        """A dynamically linked program plus every library `ldd` names, at the paths ldd prints."""
        self.host_file(path, src)
        for lib in ldd(src or path):
            self.host_file(lib)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries):
                e = self.entries[path]
                ti = tarfile.TarInfo(path.lstrip("/"))
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
                if e[0] == "dir":
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if path == "/tmp" else 0o755
                    t.addfile(ti)
                elif e[0] == "link":
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e[1], 0o777
                    t.addfile(ti)
                else:
                    ti.size, ti.mode = len(e[1]), e[2]
                    t.addfile(ti, io.BytesIO(e[1]))
        return buf.getvalue()


def ldd(path):
    try:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError as e:
        raise ImageError("ldd is missing") from e
    if "not a dynamic executable" in out or "statically linked" in out:
        return []
    libs = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            raise ImageError(f"{path}: library not found: {line.strip()}")
    return libs


def base_rootfs(groups=None):
    r = Rootfs()
    for d in ("/tmp", "/etc", "/proc", "/sys", "/dev", "/var/run"):
        r.dir(d)
    r.data("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n")
    lines = ["root:x:0:", "nobody:x:65534:"] + [f"{n}:x:{g}:" for n, g in sorted((groups or {}).items())]
    r.data("/etc/group", "\n".join(lines) + "\n")
    return r


# ---- the three images ------------------------------------------------------------------------------

def operator_image(dockerfile, bin_dir):
    with open(dockerfile) as f:
        spec = runtime_stage(f.read())
    r = base_rootfs(spec["groups"])
    for name, dest in spec["copies"]:
        src = os.path.join(bin_dir, name)
        if not os.access(src, os.X_OK):
            raise ImageError(f"{src} is missing (cargo build --bin {name})")
        r.elf_with_libs(f"{dest}/{name}", src)
    for pkg in spec["packages"]:
        s = APK_STANDINS[pkg]
        for b in s["binaries"]:
            r.elf_with_libs(b)
        for link, target in s["links"].items():
            r.link(link, target)
        for d in s["dirs"]:
            for so in sorted(os.listdir(d)):
                r.elf_with_libs(os.path.join(d, so))
        for f in s["files"]:
            r.host_file(f)
    config = {"Entrypoint": spec["entrypoint"], "Env": [PATH_ENV]}
    if spec["user"]:
        config["User"] = spec["user"]
    return r, config


APP_INDEX = "mirrord-operator e2e app\n"
# Answers GET /cgi-bin/hello with a recognisable line and the value of $GREETING (busybox httpd passes
# its own environment on to CGI programs).
APP_CGI = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "hello from $(hostname), GREETING=${GREETING:-<unset>}"
"""


def app_image(busybox):
    r = base_rootfs()
    r.host_file("/bin/busybox", busybox)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            r.link(f"/bin/{a}", "busybox")
    r.host_file("/etc/protocols")
    r.data("/www/index.html", APP_INDEX)
    r.data("/www/cgi-bin/hello", APP_CGI, 0o755)
    return r, {"Cmd": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"], "Env": [PATH_ENV]}


def amqp_image(busybox, tools):
    """The app image's busybox plus Debian's amqp-tools (librabbitmq): a real AMQP consumer for the queue
    splitting e2e, run by the pod's command."""
    r, config = app_image(busybox)
    for name in ("amqp-consume", "amqp-publish", "amqp-declare-queue"):
        r.elf_with_libs(f"/usr/bin/{name}", os.path.join(tools, name))
    config["Cmd"] = ["/bin/sh"]
    return r, config


def pause_image(pause):
    r = base_rootfs()
    r.host_file("/pause", pause)
    if ldd(pause):
        raise ImageError(f"{pause} must be static")
    return r, {"Entrypoint": ["/pause"]}


def nginx_image(nginx):
    """Debian's nginx for the registry mirror's cache pods: the rendered config names every path it writes
    (temp dirs under /tmp, the cache volume), logs go to stderr/stdout, and https upstreams are checked
    against the CA bundle."""
    r = base_rootfs()
    r.elf_with_libs("/usr/sbin/nginx", nginx)
    r.host_file("/etc/ssl/certs/ca-certificates.crt")
    return r, {"Cmd": ["nginx", "-g", "daemon off;"], "Env": [PATH_ENV]}


def registry_image(registry):
    """Debian's docker-registry (the CNCF distribution registry) as the registry mirror's upstream in the
    e2e: its config and htpasswd come from mounted volumes."""
    r = base_rootfs()
    r.elf_with_libs("/usr/bin/docker-registry", registry)
    return r, {"Entrypoint": ["docker-registry", "serve"], "Env": [PATH_ENV]}


# ---- docker-save layout ------------------------------------------------------------------------------

def write_image(rootfs, config, tag, out):
    layer = rootfs.tar()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    cfg = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": config, "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "e2e/tools/mkimage.py"}],
    }, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_name = diff_id[len("sha256:"):] + "/layer.tar"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": [layer_name]}]).encode()
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in ((layer_name, layer), (cfg_name, cfg), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            t.addfile(ti, io.BytesIO(data))
    os.replace(tmp, out)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=["operator", "app", "amqp", "pause", "nginx", "registry", "check"])
    p.add_argument("--dockerfile")
    p.add_argument("--bin-dir")
    p.add_argument("--pause")
    p.add_argument("--busybox", default="/bin/busybox")
    p.add_argument("--nginx", default="/usr/sbin/nginx")
    p.add_argument("--registry", default="/usr/bin/docker-registry")
    p.add_argument("--amqp-tools", default="/usr/bin", help="directory of amqp-consume and amqp-publish")
    p.add_argument("--tag")
    p.add_argument("--out")
    a = p.parse_args(argv)
    try:
        if a.kind == "check":
            with open(a.dockerfile or "Dockerfile") as f:
                print(json.dumps(runtime_stage(f.read()), sort_keys=True))
            return 0
        if not a.tag or not a.out:
            raise ImageError("--tag and --out are required")
        if a.kind == "operator":
            if not a.dockerfile or not a.bin_dir:
                raise ImageError("operator needs --dockerfile and --bin-dir")
            rootfs, config = operator_image(a.dockerfile, a.bin_dir)
        elif a.kind == "app":
            rootfs, config = app_image(a.busybox)
        elif a.kind == "amqp":
            rootfs, config = amqp_image(a.busybox, a.amqp_tools)
        elif a.kind == "nginx":
            rootfs, config = nginx_image(a.nginx)
        elif a.kind == "registry":
            rootfs, config = registry_image(a.registry)
        else:
            if not a.pause:
                raise ImageError("pause needs --pause")
            rootfs, config = pause_image(a.pause)
        write_image(rootfs, config, a.tag, a.out)
    except (ImageError, OSError, subprocess.CalledProcessError) as e:
        print(f"mkimage: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
