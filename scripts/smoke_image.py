"""The production smoke run inside the OCI image (called by .ci/run, as root).

No OCI runtime can start a container on the CI machines, but buildah can build as root
with chroot isolation. So:

- a Debian bookworm base (mmdebstrap minbase + python3, python3-venv), cached as a tarball
  in BASE_CACHE (outside the checkout) under a key of its inputs and the ISO week, made
  when missing, and `podman import`ed;
- the image built from the Containerfile with `buildah bud --isolation chroot` on that base,
  pip trusting the host's CA bundle (mounted for the build only);
- its root filesystem mounted (`buildah mount`), bound read-only, with only /tmp (tmpfs) and
  BROKER_DATA_DIR (a host directory) writable, plus /proc and /dev;
- scripts/smoke_production.py's run, each process started with `chroot` into that root as
  the image's user, with the image's environment and entrypoint: `migrate`, `web`,
  `worker`, `beat` and `manage ...`, against PostgreSQL and Redis on the host (the same
  SMOKE_DATABASE_URL and SMOKE_REDIS_URL) and the sandbox provider.

Everything mounted is unmounted, and the working container and the image removed, however
the run ends (the base stays cached).

    .venv/bin/python scripts/smoke_image.py
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smoke_production  # noqa: E402
from smoke_production import ROOT, Run, step  # noqa: E402

BASE_CACHE = Path(os.environ.get("BROKER_CI_CACHE", "/var/cache/broker-ci"))
BASE_PACKAGES = ("python3", "python3-venv")
BASE_SUITE = "bookworm"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Where the data directory of the image's user is (the Containerfile's BROKER_DATA_DIR).
IMAGE_DATA_DIR = "/var/lib/broker"
TIMEOUT_SECONDS = int(os.environ.get("SMOKE_IMAGE_TIMEOUT", "900"))


def sh(*args: str, timeout: float = 600) -> str:
    """A host command as root; its output, or SmokeFailure with its output."""
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise smoke_production.SmokeFailure(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout.strip()


def base_image() -> str:
    """The mmdebstrap base as a local image, made (about 2 minutes) when its tarball is not
    cached for this week and these inputs."""
    inputs = f"{BASE_SUITE} minbase {','.join(BASE_PACKAGES)} {sh('mmdebstrap', '--version')}"
    week = datetime.date.today().strftime("%G-w%V")
    key = f"{week}-{hashlib.sha256(inputs.encode()).hexdigest()[:12]}"
    name = f"localhost/broker-ci-base:{key}"
    if subprocess.run(["podman", "image", "exists", name]).returncode == 0:
        return name
    tarball = BASE_CACHE / f"base-{key}.tar"
    if not tarball.exists():
        step(f"base {BASE_SUITE} with {', '.join(BASE_PACKAGES)} (mmdebstrap, cached by week)")
        BASE_CACHE.mkdir(parents=True, exist_ok=True)
        for stale in BASE_CACHE.glob("base-*.tar"):
            stale.unlink()
        partial = tarball.with_suffix(".partial.tar")
        sh(
            "mmdebstrap",
            "--quiet",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            BASE_SUITE,
            str(partial),
        )
        partial.rename(tarball)
    sh("podman", "import", "--quiet", str(tarball), name)
    repository = name.rpartition(":")[0]
    tags = sh("podman", "images", "--format", "{{.Repository}}:{{.Tag}}", repository).split()
    for tagged in tags:
        if tagged != name:  # last week's
            sh("podman", "rmi", tagged)
    return name


class ImageRun(Run):
    """The smoke run with every broker process in the image's root filesystem."""

    def __init__(self, workdir: Path, venv: Path | None = None) -> None:
        super().__init__(workdir)  # the image holds its own virtualenv: `venv` is not used
        self.image = f"localhost/oauth-broker-smoke:{os.getpid()}"
        self.image_id = ""
        self.container = ""
        # The read-only view of the image's root, outside workdir (never removed with it).
        self.root = Path(tempfile.mkdtemp(prefix="broker-image-root-"))
        self.user = ""  # uid:gid
        self.entrypoint: list[str] = []
        self.mounted = False

    def install(self) -> None:
        base = base_image()
        step(f"buildah bud --isolation chroot on {base}")
        self.image_id = sh(
            "buildah",
            "bud",
            "--quiet",
            "--isolation",
            "chroot",
            "--layers=false",
            "--volume",
            f"{HOST_CA_BUNDLE}:/run/host-ca.crt:ro",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--tag",
            self.image,
            "--file",
            str(ROOT / "Containerfile"),
            str(ROOT),
        ).splitlines()[-1]
        config = json.loads(sh("buildah", "inspect", "--type", "image", self.image))["OCIv1"]
        self.user = config["config"]["User"]
        self.entrypoint = list(config["config"]["Entrypoint"])
        smoke_production.require(
            re.fullmatch(r"[1-9][0-9]*:[0-9]+", self.user),
            f"the image's user is {self.user!r}, not a numeric non-root uid:gid",
        )
        image_env = dict(line.split("=", 1) for line in config["config"]["Env"])
        self.container = sh("buildah", "from", "--quiet", self.image)
        self.mount(Path(sh("buildah", "mount", self.container)))
        self.check_contents()
        # The image's environment, then the smoke run's settings (not its host paths).
        host_only = {"PATH", "HOME", "BROKER_DATA_DIR"}
        self.env = {
            **image_env,
            "HOME": IMAGE_DATA_DIR,
            **{name: value for name, value in self.env.items() if name not in host_only},
        }
        step(f"image {self.image_id[:12]} mounted read-only at {self.root}, user {self.user}")

    def mount(self, merged: Path) -> None:
        """The image's root at self.root, read-only, with what an OCI runtime would mount in
        it: /proc, /dev, a tmpfs /tmp, the host's /etc/hosts (`localhost`), and the data
        directory's volume (a host directory owned by the image's user)."""
        data = self.workdir / "data"
        data.mkdir()
        os.chown(data, *self.ids())
        (merged / "etc" / "hosts").touch()  # in the working container's layer, removed with it
        sh("mount", "--bind", str(merged), str(self.root))
        self.mounted = True
        sh("mount", "--make-private", str(self.root))
        sh("mount", "-o", "remount,bind,ro", str(self.root))
        sh("mount", "-t", "proc", "proc", str(self.root / "proc"))
        sh("mount", "--rbind", "/dev", str(self.root / "dev"))
        sh("mount", "--make-rslave", str(self.root / "dev"))
        sh("mount", "-t", "tmpfs", "-o", "mode=1777,size=256m", "tmpfs", str(self.root / "tmp"))
        sh("mount", "--bind", str(data), str(self.root / IMAGE_DATA_DIR.lstrip("/")))
        sh("mount", "--bind", "-o", "ro", "/etc/hosts", str(self.root / "etc" / "hosts"))

    def check_contents(self) -> None:
        """Static files collected, no development package, nothing left of the build's CA
        bundle mount."""
        require = smoke_production.require
        require((self.root / "app/staticfiles/staticfiles.json").is_file(), "no collected static")
        packages = {p.name.lower() for p in self.root.glob("opt/venv/lib/python3*/site-packages/*")}
        require("django" in packages, "no Django in /opt/venv")
        dev_only = {"pytest", "oauth2_provider", "playwright", "ruff", "mypy", "sandbox"}
        require(not dev_only & packages, f"development packages: {dev_only & packages}")
        require(not (self.root / "run/host-ca.crt").exists(), "/run/host-ca.crt left in the image")
        require(not (self.root / "app/sandbox").exists(), "the sandbox is in the image")

    def command(self, *args: str) -> list[str]:
        """`args` given to the image's entrypoint, as its user, in its root."""
        return ["chroot", f"--userspec={self.user}", str(self.root), *self.entrypoint, *args]

    def ids(self) -> tuple[int, int]:
        uid, gid = self.user.split(":")
        return int(uid), int(gid)

    def migrate_command(self) -> tuple[str, ...]:
        return ("migrate", "-v", "0")

    def collectstatic_command(self) -> None:
        return None  # collected at build: the image's /app is read-only

    def web_command(self) -> tuple[str, ...]:
        return ("web", "--bind", f"127.0.0.1:{self.web_port}")

    def worker_command(self) -> tuple[str, ...]:
        return ("worker", "-c", "2")

    def beat_command(self) -> tuple[str, ...]:
        return ("beat",)

    def readable_path(self, path: Path) -> str:
        """A copy of `path` (the providers file) in the data directory, as the processes in
        the image see it, with copies of the files it names (`file:PATH`) beside it."""

        def copied(source: Path) -> str:
            copy = self.workdir / "data" / source.name
            shutil.copyfile(source, copy)
            os.chown(copy, *self.ids())
            return f"{IMAGE_DATA_DIR}/{source.name}"

        text = re.sub(r'"file:([^"]+)"', lambda m: f'"file:{copied(Path(m[1]))}"', path.read_text())
        (self.workdir / path.name).write_text(text)
        return copied(self.workdir / path.name)

    def stop(self) -> None:
        super().stop()
        if self.mounted:
            try:
                sh("umount", "--recursive", str(self.root))
            except smoke_production.SmokeFailure:  # a process of ours still in it: detach
                sh("umount", "--recursive", "--lazy", str(self.root))
        self.root.rmdir()
        if self.container:
            sh("buildah", "rm", self.container)
        if self.image_id:
            sh("buildah", "rmi", self.image_id)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("smoke_image.py: run as root (buildah, mount, chroot)")
    sys.exit(smoke_production.main(ImageRun, TIMEOUT_SECONDS))
