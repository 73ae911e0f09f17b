"""Kiln's three images, built from their Dockerfiles with buildah (no Docker engine) on a Debian base made with
debootstrap, and loaded into the real node's containerd (kiln_local.realnode).

    python -m kiln_local.images build    # base, pause, operator, trainer, server: each when its inputs changed

The base image stands in for python:3.11-slim-bookworm (the Dockerfiles' default BASE): debootstrap's minbase
bookworm with Debian's python3 (3.11), and a virtual environment at /usr/local so that `python`, `pip` and
/usr/local/lib/python3.11/site-packages are where the Dockerfiles expect them. Each Dockerfile is built unchanged
but for `--build-arg BASE=<that image>`, and tagged as in production (charts/kiln/values.yaml: kiln/<name> with the
chart's appVersion). An image is rebuilt only when its inputs change: the Dockerfile, the files it COPYs and the
base (a content hash, kept in the image's label kiln.inputs). A wheelhouse on the host (pip download, warm from the
host's pip cache) is mounted into every build at /wheels and named in the base's /etc/pip.conf, so the three
builds do not fetch the same wheels three times.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kiln_local.paths import BIN, CACHE, REPO

IMAGES = {"operator": "operator/Dockerfile", "trainer": "trainer-image/Dockerfile",
          "server": "server-image/Dockerfile"}
EXTRAS = {"operator": "operator", "trainer": "trainer", "server": "server"}
WORK = CACHE / "images"
STORAGE = CACHE / "buildah"  # buildah's own storage (vfs), apart from any system-wide one
WHEELS = CACHE / "wheels"
PAUSE = "kiln/pause:3.2"  # containerd's sandbox_image (kiln_local.realnode)
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates"]
# The BUILD_BASE of server-image/Dockerfile's build stage (python:3.11-bookworm in production): a compiler and
# Python's headers for kiln_server._payload_chunks. Only that stage runs on it; no image ships it.
BUILD_PACKAGES = [*BASE_PACKAGES, "gcc", "libc6-dev", "python3-dev"]
# pip in the builds installs from the wheelhouse alone (mounted at /wheels only while building): no build reaches
# the network, and the three builds never fetch the same wheel twice.
PIP_CONF = "[global]\nno-index = true\nfind-links = /wheels\n"


def version() -> str:
    text = (REPO / "charts" / "kiln" / "Chart.yaml").read_text()
    return re.search(r'^appVersion:\s*"?([^"\n]+)"?', text, re.M).group(1).strip()


def tag(name: str) -> str:
    """As in production: charts/kiln/values.yaml's repository kiln/<name>, tag = the chart's appVersion."""
    return f"kiln/{name}:{version()}"


def say(msg: str) -> None:
    print(f"[kiln] {msg}", flush=True)


def buildah(*args: str, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    argv = ["buildah", "--root", str(STORAGE / "root"), "--runroot", str(STORAGE / "run"),
            "--storage-driver", "vfs", *args]
    proc = subprocess.run(argv, capture_output=capture, text=True, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:8])} ... exited {proc.returncode}:\n"
                           f"{(proc.stdout or '')[-3000:]}\n{(proc.stderr or '')[-3000:]}")
    return proc


def label_of(image: str, key: str = "kiln.inputs") -> str | None:
    proc = buildah("inspect", "--type", "image", image, check=False)
    if proc.returncode != 0:
        return None
    info = json.loads(proc.stdout)
    return ((info.get("OCIv1") or {}).get("config") or {}).get("Labels", {}).get(key)


def _hash_paths(h, paths: list[Path]) -> None:
    for top in paths:
        files = sorted(p for p in top.rglob("*") if p.is_file() or p.is_symlink()) if top.is_dir() else [top]
        for f in files:
            if "__pycache__" in f.parts or f.suffix in (".pyc", ".so"):  # built here; images build their own
                continue
            h.update(str(f.relative_to(REPO)).encode() + b"\0")
            h.update(os.readlink(f).encode() if f.is_symlink() else f.read_bytes())
            h.update(b"\0")


def has_build_stage(name: str) -> bool:
    """Whether the image's Dockerfile builds on a BUILD_BASE first (a stage with a compiler)."""
    return any(line.startswith("ARG BUILD_BASE") for line in (REPO / IMAGES[name]).read_text().splitlines())


def copied(dockerfile: Path) -> list[Path]:
    """The sources of every COPY in a Dockerfile, relative to the repository root (the build context)."""
    out = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts and parts[0].upper() == "COPY" and not any(s.startswith("--from=") for s in parts):
            out += [REPO / s for s in parts[1:-1] if not s.startswith("--")]
    return out


def inputs_hash(name: str, base: str, build_base: str = "") -> str:
    dockerfile = REPO / IMAGES[name]
    h = hashlib.sha256(base.encode() + b"\0" + (build_base.encode() + b"\0" if build_base else b""))
    _hash_paths(h, [dockerfile, *copied(dockerfile)])
    return h.hexdigest()[:16]


def _mirror() -> str:
    """The Debian archive this machine's apt already uses (never a name written here)."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(path.read_text())
        except OSError:
            pass
    for text in texts:
        for block in text.split("\n\n"):
            if re.search(r"^Types:.*\bdeb\b", block, re.M) and re.search(r"^Suites:.*\bbookworm\b(?!-)", block, re.M):
                m = re.search(r"^URIs:\s*(\S+)", block, re.M)
                if m:
                    return m.group(1)
        for line in text.splitlines():
            m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
            if m:
                return m.group(1)
    raise RuntimeError("no Debian bookworm archive in /etc/apt/sources.list{,.d}: debootstrap needs one")


def base_image(packages: list[str] = BASE_PACKAGES, kind: str = "base") -> str:
    """localhost/kiln/<kind>:<hash>: debootstrap minbase bookworm + python3 (and `packages`) and a venv at
    /usr/local."""
    recipe = json.dumps({"packages": packages, "venv": "/usr/local", "pip.conf": PIP_CONF, "v": 3})
    name = f"localhost/kiln/{kind}:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if buildah("inspect", "--type", "image", name, check=False).returncode == 0:
        return name
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    say(f"{kind} image {name}: debootstrap --variant=minbase bookworm + {' '.join(packages)} (about 2 minutes)")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        root = Path(tmp) / "rootfs"
        log = WORK / "debootstrap.log"
        with open(log, "w") as out:
            proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
                                   "bookworm", str(root), _mirror()], stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({proc.returncode}); read {log}")
        # `python`, `pip` and site-packages where python:3.11-slim has them: a venv over /usr/local.
        subprocess.run(["chroot", str(root), "/usr/bin/python3", "-m", "venv", "/usr/local"], check=True)
        (root / "etc" / "pip.conf").write_text(PIP_CONF)
        # no apt lists and caches in the image
        for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for p in (root / sub).glob("*"):
                if p.is_file():
                    p.unlink()
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar), "."], check=True)
        (Path(tmp) / "Containerfile").write_text("FROM scratch\nADD rootfs.tar /\n"
                                                 'CMD ["/usr/local/bin/python"]\n')
        buildah("bud", "--isolation", "chroot", "--layers=false", "-t", name, "-f",
                str(Path(tmp) / "Containerfile"), str(tmp))
        subprocess.run(["rm", "-rf", str(root)], check=False)
    say(f"{kind} image built in {time.monotonic() - t0:.0f}s")
    return name


def pause_image() -> str:
    name = f"localhost/{PAUSE}"
    binary = BIN / "pause"
    if not binary.exists():
        raise RuntimeError(f"{binary} missing: run tests/cluster/build-node.sh")
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    if label_of(name) == digest:
        return name
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        shutil.copy(binary, Path(tmp) / "pause")
        (Path(tmp) / "Containerfile").write_text(
            f'FROM scratch\nLABEL kiln.inputs={digest}\nADD pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n')
        buildah("bud", "--isolation", "chroot", "--layers=false", "-t", name, "-f",
                str(Path(tmp) / "Containerfile"), tmp)
    return name


def wheelhouse() -> None:
    """Every wheel the three images install, downloaded once on the host (same Python 3.11, same glibc)."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    stamp = WHEELS / ".inputs"
    h = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == h:
        return
    t0 = time.monotonic()
    say("wheelhouse: pip download of the operator, trainer and server extras (host pip cache)")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    "--only-binary=:all:", "-d", str(WHEELS), "setuptools>=68", "wheel"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        # pip download of the project itself would build it; its extras' requirements are enough
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(_requirements()) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "-d", str(WHEELS), "-r", str(reqs)], check=True)
    stamp.write_text(h)
    say(f"wheelhouse ready in {time.monotonic() - t0:.0f}s")


def _requirements() -> list[str]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    out = list(project["dependencies"])
    for extra in EXTRAS.values():
        out += project["optional-dependencies"][extra]
    return [r.split("#")[0].strip() for r in out]


def build(name: str, base: str, build_base: str = "") -> tuple[str, bool]:
    """Build one image unless its inputs are unchanged; (tag, built). build_base: the BUILD_BASE of a
    Dockerfile with a build stage (the server's)."""
    image = tag(name)
    digest = inputs_hash(name, base, build_base)
    label = label_of(image)
    if label == digest or (label and os.environ.get("KILN_REUSE_IMAGES")):
        return image, False  # KILN_REUSE_IMAGES=1: whatever changed since (only to iterate on the tests)
    t0 = time.monotonic()
    say(f"image {image}: buildah bud -f {IMAGES[name]} --build-arg BASE={base} (inputs {digest})")
    log = WORK / f"build-{name}.log"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        extra = ["--build-arg", f"BUILD_BASE={build_base}"] if build_base else []
        proc = buildah("bud", "--isolation", "chroot", "--layers=false", "--build-arg", f"BASE={base}", *extra,
                       "--label", f"kiln.inputs={digest}", "--volume", f"{WHEELS}:/wheels:ro",
                       "-t", image, "-f", str(REPO / IMAGES[name]), str(REPO),
                       check=False, capture=False, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"building {image} failed; read {log}:\n{tail}")
    say(f"image {image} built in {time.monotonic() - t0:.0f}s")
    return image, True


def build_all(names=tuple(IMAGES)) -> dict[str, str]:
    """Base, pause and the three images (each only when its inputs changed): {name: tag}."""
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed: run tests/cluster/build-node.sh")
    STORAGE.mkdir(parents=True, exist_ok=True)
    base = base_image()
    build_base = base_image(BUILD_PACKAGES, "build") if any(map(has_build_stage, names)) else ""
    out = {"pause": pause_image()}
    wheelhouse()
    rebuilt = False
    for name in names:
        wheelhouse()  # again: pyproject.toml may have changed since (a no-op when it has not)
        out[name], built = build(name, base, build_base if has_build_stage(name) else "")
        rebuilt |= built
    if rebuilt:  # the images these replaced (vfs keeps whole copies: gigabytes)
        buildah("rmi", "--prune", check=False)
    return out


def export(image: str, dest: Path) -> Path:
    """A docker-archive of image, named as in production (containerd normalises kiln/x to docker.io/kiln/x)."""
    short = image.removeprefix("localhost/")
    buildah("push", "--quiet", image, f"docker-archive:{dest}:{short}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln_local.images")
    parser.add_argument("command", choices=["build", "tags"])
    args = parser.parse_args(argv)
    if args.command == "build":
        t0 = time.monotonic()
        for name, image in build_all().items():
            print(f"{name:9} {image}")
        say(f"images ready in {time.monotonic() - t0:.0f}s")
    else:
        for name in IMAGES:
            print(tag(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
