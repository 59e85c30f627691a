#!/usr/bin/env python3
"""Replay the Binder (repo2docker) build of this repository on a Debian host, then use it as a student would.

repo2docker cannot run here (no container engine), so this script reproduces what it does, step by step, with
the constraints that matter to vlab:

1. ``apt.txt``: installed as root with ``apt-get install --no-install-recommends`` (only what is missing).
2. An unprivileged user (``vlabbinder``, like Binder's ``jovyan``) whose ``$HOME`` is a copy of the repository's
   files (``git ls-files``), as repo2docker copies the repository into ``$HOME``; a fresh virtual environment
   outside it stands for repo2docker's notebook environment (``$NB_PYTHON_PREFIX``).
3. As that user: ``pip install -r binder/requirements.txt``, then ``binder/postBuild`` run the way repo2docker
   runs it (``./binder/postBuild`` with the repository as working directory).
4. As that user, through ``binder/start`` as at container start: ``vlab doctor`` (must choose TCG because there is
   no ``/dev/kvm``), ``vlab tour`` (boots a guest, runs ``uptime``) and, when it exists, lab 01 executed headless
   with ``jupyter nbconvert --execute``.
5. The guest kernel the replay built is byte-identical to the one ``./setup.sh`` built on this machine (the
   reference image directory: ``--reference-images``, default ``$VLAB_IMAGES`` or ``~/.cache/vlab/images``): the
   same pinned Debian package, so Binder boots what CI boots.
6. Clean-up: the user's files, its environment and the account go; no process is left (checked, see below).
   The workspace is a loop-mounted scratch file system, so deleting it is quick (see ``WORKSPACE_IMAGE``).

Every user step runs in its own mount namespace made the way a container's is: a fresh ``/dev`` holding only a
container's device nodes (so ``/dev/kvm`` does not exist, rather than merely being unreadable), empty apt lists
and apt cache (repo2docker deletes them after installing ``apt.txt``), and a private ``/tmp``. Every user step
also runs in a cgroup-v1 memory group limited to Binder's 2 GiB, which measures each step's peak memory and
finds any process a step left behind (such processes are killed and the step fails).

Not reproduced: Ubuntu (the host is Debian, so the tools' packages differ; the kernel does not: it is Debian's
pinned package on both, fetched through a private apt configuration when the system's lists are gone), the container's
seccomp profile (unprivileged user namespaces may still work here), conda's Python (a ``venv`` of the host's
Python stands in) and the network limits of mybinder.org.

Usage: ``binder/check.py [--keep] [--purge] [--memory-mib N] [--no-lab] [--step-timeout S] [--reference-images DIR]``
as root. Exit status 0
when every step passed. The pip cache (``/var/cache/vlab-binder/pip``) is kept between runs so a second run is
faster; ``pip install`` skips byte-compiling (``--no-compile``) for the same reason.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import filecmp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a command, this file's directory (binder/) heads sys.path: the checkout's vlab must be importable too
# (root's python3 runs it, without the venv's editable install).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlab.errors import VlabError
from vlab.host import procfs
from vlab.host.cgroups import Cgroup, detect_cgroups
from vlab.host.packages import read_apt_txt
from vlab.paths import repo_root

PROG = "binder/check.py"
REPO = repo_root()
USER = "vlabbinder"
WORKSPACE = Path("/var/tmp/vlab-binder")  # $HOME (the repository copy) and the notebook environment
# The workspace is a file system of its own in this sparse image: this host's root file system is mounted with
# "discard", where deleting the ~19,000 files of a fresh environment takes about a minute; unmounting and deleting
# one image file takes seconds. (It also stands for the container's own writable layer.)
WORKSPACE_IMAGE = Path("/var/tmp/vlab-binder.img")
WORKSPACE_SIZE = "8G"
PIP_CACHE = Path("/var/cache/vlab-binder/pip")  # kept between runs: only speeds up pip
CGROUP_NAME = "vlab-binder-check"
LOCK = Path("/run/lock/vlab-binder-check.lock")  # one replay at a time: they share the user and the workspace
MIB = 1024 * 1024

#: What the TCG verdict of ``vlab doctor`` must say when ``/dev/kvm`` is really absent.
TCG_VERDICT = re.compile(r"accelerator\s+tcg \[none\]")
#: What ``uptime`` prints in the guest.
UPTIME_OUTPUT = re.compile(r"load average")

# Runs as root inside the new mount namespace, then drops to the user: a container-like /dev (the device nodes
# Docker creates, so no /dev/kvm), repo2docker's emptied apt lists and cache, and a private /tmp.
NAMESPACE_SETUP = r"""
set -eu
mount -t tmpfs -o nosuid,mode=755,size=64k tmpfs /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/zero c 1 5; mknod -m 666 /dev/full c 1 7
mknod -m 666 /dev/random c 1 8; mknod -m 666 /dev/urandom c 1 9; mknod -m 666 /dev/tty c 5 0
mkdir /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
ln -s pts/ptmx /dev/ptmx
mount -t tmpfs -o nosuid,nodev,mode=1777,size=64m shm /dev/shm
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=755 tmpfs /var/lib/apt/lists
mount -t tmpfs -o mode=755 tmpfs /var/cache/apt
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
exec setpriv --reuid="$VLAB_CHECK_UID" --regid="$VLAB_CHECK_GID" --init-groups -- \
    env -u VLAB_CHECK_UID -u VLAB_CHECK_GID "$@"
"""


def say(line: str) -> None:
    print(f"{PROG}: {line}", flush=True)


@dataclass
class StepResult:
    """How one step went: ``peak_mib`` is the memory group's high-water mark (None for root steps)."""

    name: str
    ok: bool
    seconds: float
    peak_mib: float | None = None
    note: str = ""


@dataclass
class Layout:
    """Where the replayed build lives, and who owns it."""

    home: Path
    prefix: Path
    uid: int
    gid: int

    @property
    def env(self) -> dict[str, str]:
        """The environment repo2docker's image gives the notebook user (plus the pip cache, for speed)."""
        path = f"{self.home}/.local/bin:{self.prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {
            "HOME": str(self.home),
            "USER": USER,
            "LOGNAME": USER,
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PATH": path,
            "NB_USER": USER,
            "NB_UID": str(self.uid),
            "NB_PYTHON_PREFIX": str(self.prefix),
            "KERNEL_PYTHON_PREFIX": str(self.prefix),
            "REPO_DIR": str(self.home),
            "DEBIAN_FRONTEND": "noninteractive",
            "PYTHONUNBUFFERED": "1",
            "PIP_CACHE_DIR": str(PIP_CACHE),
            "VLAB_CHECK_UID": str(self.uid),
            "VLAB_CHECK_GID": str(self.gid),
            **network_settings(),
        }


def network_settings() -> dict[str, str]:
    """The caller's proxy, certificate and pip index settings: how this machine reaches the package registries."""
    names = ("http_proxy", "https_proxy", "no_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    wanted = {name for name in os.environ if name.lower() in names or name in names}
    wanted |= {name for name in os.environ if name.startswith("PIP_") and name != "PIP_CACHE_DIR"}
    return {name: os.environ[name] for name in sorted(wanted)}


@dataclass
class MemoryGroup:
    """The cgroup-v1 memory group every user step runs in (absent when the host offers none).

    vlab.host.cgroups creates, joins, reads and removes it; only the v1 knobs that reset a measurement are
    written here (nothing in vlab needs them).
    """

    limit_bytes: int
    group: Cgroup | None = None
    problems: list[str] = field(default_factory=list)
    oom_kills_before: int = 0

    def create(self) -> None:
        support = detect_cgroups()
        place = support.where("memory")
        if place is None or place[0] != 1:  # max_usage_in_bytes, the peak each step reports, is v1's
            self.problems.append(f"no cgroup-v1 memory controller ({support.describe()}): no memory limit")
            return
        try:
            group = Cgroup(CGROUP_NAME, ("memory",), support)
            group.set_memory_limit(self.limit_bytes)
        except (VlabError, OSError) as exc:
            self.problems.append(f"memory limit not applied: {exc}")
            return
        self.group = group

    def enter(self) -> None:
        """Called in the child before exec: join the group so everything the step starts is counted."""
        if self.group is not None:
            self.group.add(os.getpid())

    def reset_peak(self) -> None:
        """Start a step's measurement from zero: drop the page cache earlier steps left charged, then the peak."""
        if self.group is None:
            return
        path = self.group.paths["memory"]
        with contextlib.suppress(OSError):  # force_empty works only while the group has no task, as between steps
            (path / "memory.force_empty").write_text("0")
        with contextlib.suppress(OSError):
            (path / "memory.max_usage_in_bytes").write_text("0")
        self.oom_kills_before = self.oom_kills()

    def peak_mib(self) -> float | None:
        if self.group is None:
            return None
        return self.group.counter("memory", "memory.max_usage_in_bytes") / MIB

    def oom_kills(self) -> int:
        """How many processes the kernel killed in the group for want of memory, since it was created."""
        return 0 if self.group is None else self.group.oom_kills()

    def leftovers(self) -> list[int]:
        return [] if self.group is None else sorted(self.group.members())

    def kill_leftovers(self) -> list[str]:
        """SIGKILL every process still in the group (all started by this script); describe each one."""
        described = []
        for pid in self.leftovers():
            argv = procfs.cmdline(pid)
            if argv is not None:
                described.append(f"{pid} {' '.join(argv)[:120]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        return described

    def remove(self) -> None:
        if self.group is None:
            return
        self.kill_leftovers()
        self.group.remove(timeout=5)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The image manifest in *directory* as plain JSON (None when there is none)."""
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def kernel_source(manifest: dict[str, Any]) -> str:
    """``package version`` of the kernel a manifest was built from."""
    return " ".join(f"{name} {version}" for name, version in manifest["sources"].items()
                    if name.startswith("linux-image-"))


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return done.stdout.strip().endswith("ok installed")


def install_apt_packages(apt_txt: Path) -> str:
    packages = read_apt_txt(apt_txt)
    missing = [p for p in packages if not installed(p)]
    if not missing:
        return f"all {len(packages)} packages of apt.txt already installed"
    say(f"apt-get install --no-install-recommends {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)
    return f"installed {len(missing)} of {len(packages)} packages"


def ensure_user(home: Path) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/bin/bash", "--user-group", USER],
            check=True,
        )
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def repository_files(repo: Path) -> list[str]:
    """The files repo2docker would copy: tracked ones plus new, not-ignored ones (a session's uncommitted work)."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    names = sorted({name for name in out.decode().split("\0") if name})
    return [name for name in names if os.path.lexists(repo / name)]


def copy_repository(repo: Path, home: Path) -> int:
    files = repository_files(repo)
    for name in files:
        dest = home / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest, follow_symlinks=False)
    return len(files)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, gid)


def is_mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/self/mounts").read_text().splitlines())


def create_workspace() -> str:
    """An empty workspace: a fresh ext4 file system in a sparse image when the host allows, else a directory."""
    WORKSPACE.mkdir(parents=True)
    try:
        subprocess.run(["truncate", "-s", WORKSPACE_SIZE, str(WORKSPACE_IMAGE)], check=True)
        # No journal and no discard: a scratch file system that lives for one run.
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "nodiscard", str(WORKSPACE_IMAGE)],
            check=True,
            capture_output=True,
        )
        subprocess.run(["mount", "-o", "loop", str(WORKSPACE_IMAGE), str(WORKSPACE)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        WORKSPACE_IMAGE.unlink(missing_ok=True)
        return f"a plain directory (no loop-mounted image: {exc})"
    shutil.rmtree(WORKSPACE / "lost+found")
    return f"a sparse ext4 image of {WORKSPACE_SIZE}"


def remove_workspace() -> None:
    """Unmount and delete the workspace (also one an interrupted run left)."""
    if is_mounted(WORKSPACE):
        subprocess.run(["umount", str(WORKSPACE)], check=True)
    WORKSPACE_IMAGE.unlink(missing_ok=True)
    if WORKSPACE.exists():
        shutil.rmtree(WORKSPACE)


class Check:
    """The replay: each step is recorded in :attr:`results`; a failed step stops the user steps after it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: list[StepResult] = []
        self.memory = MemoryGroup(args.memory_mib * MIB)
        self.layout: Layout | None = None

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @contextlib.contextmanager
    def step(self, name: str, user: bool = False) -> Iterator[StepResult]:
        number = len(self.results) + 1
        print(f"\n==> {PROG} [{number}] {name}", flush=True)
        result = StepResult(name, ok=False, seconds=0.0)
        if user:
            self.memory.reset_peak()
        started = time.monotonic()
        try:
            yield result
            result.ok = True
        except (subprocess.SubprocessError, OSError, ValueError, AssertionError, VlabError) as exc:
            result.note = str(exc) or type(exc).__name__
            say(f"FAILED: {result.note}")
        finally:
            result.seconds = time.monotonic() - started
            if user:
                self._after_user_step(result)
            self.results.append(result)
            mark = "ok" if result.ok else "FAILED"
            peak = f", peak memory {result.peak_mib:.0f} MiB" if result.peak_mib is not None else ""
            note = f" ({result.note})" if result.ok and result.note else ""
            say(f"{mark}: {name} in {result.seconds:.1f} s{peak}{note}")

    def _after_user_step(self, result: StepResult) -> None:
        result.peak_mib = self.memory.peak_mib()
        left = self.memory.kill_leftovers()
        if left:
            result.ok = False
            result.note = f"left {len(left)} process(es) behind (killed): " + "; ".join(left)
            say(result.note)
        if self.memory.oom_kills() > self.memory.oom_kills_before:
            result.ok = False
            result.note += f" out of memory under the {self.args.memory_mib} MiB limit"

    def as_user(self, argv: list[str], capture: bool = False) -> str:
        """Run ``argv`` as the user in a container-like mount namespace and the memory group; echo its output."""
        assert self.layout is not None
        command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", NAMESPACE_SETUP, "sh", *argv]
        say(f"as {USER}: {shlex.join(argv)}")
        done = subprocess.run(
            command,
            cwd=self.layout.home,
            env=self.layout.env,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            text=True,
            preexec_fn=self.memory.enter,
            timeout=self.args.step_timeout,  # on expiry the step's processes are killed via its memory group
            check=False,
        )
        output = done.stdout or ""
        if capture:
            print(output, end="" if output.endswith("\n") else "\n", flush=True)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, argv, output)
        return output

    def run(self) -> int:
        binder = REPO / "binder"
        started = time.monotonic()
        try:
            with self.step("apt.txt: install what repo2docker installs as root") as result:
                result.note = install_apt_packages(binder / "apt.txt")
            with self.step(f"user {USER} with a copy of the repository as $HOME") as result:
                result.note = self._prepare()
            self._user_steps()
        finally:
            with self.step("clean up") as result:
                result.note = self._clean_up()
        self._summary(time.monotonic() - started)
        return 0 if self.ok else 1

    def _prepare(self) -> str:
        self.memory.create()  # first: it also finds processes an interrupted earlier run left in the group
        for problem in self.memory.problems:
            say(problem)
        self.memory.kill_leftovers()
        remove_workspace()
        kind = create_workspace()
        home, prefix = WORKSPACE / "home", WORKSPACE / "notebook"
        uid, gid = ensure_user(home)
        home.mkdir()
        prefix.mkdir()
        count = copy_repository(REPO, home)
        PIP_CACHE.mkdir(parents=True, exist_ok=True)
        for path in (WORKSPACE, PIP_CACHE.parent):
            os.chown(path, 0, 0)
            path.chmod(0o755)
        chown_tree(home, uid, gid)
        chown_tree(prefix, uid, gid)
        chown_tree(PIP_CACHE, uid, gid)
        self.layout = Layout(home, prefix, uid, gid)
        limit = f"{self.args.memory_mib} MiB memory limit" if self.memory.group else "no memory limit"
        return f"{count} files copied to {home} (uid {uid}); workspace: {kind}; {limit}"

    def _user_steps(self) -> None:
        """The build steps, each needing the one before; then the student's steps, each run whatever the others did."""
        if not self.ok:
            return
        assert self.layout is not None
        build: list[tuple[str, Callable[[], str | None]]] = [
            ("fresh virtual environment (the notebook environment)", self._venv),
            ("pip install -r binder/requirements.txt", self._requirements),
            ("binder/postBuild as repo2docker runs it", self._post_build),
        ]
        use: list[tuple[str, Callable[[], str | None]]] = [
            ("vlab doctor: no /dev/kvm, so TCG", self._doctor),
            ("vlab tour: boot a guest, run uptime", self._tour),
        ]
        labs = sorted((self.layout.home / "labs").glob("01-*.ipynb"))
        if labs and not self.args.no_lab:
            use.append((f"lab 01 headless: {labs[0].name}", lambda: self._lab(labs[0])))
        elif not labs:
            say("no labs/01-*.ipynb yet: lab 01 is not run")
        for name, action in build:
            self._user_step(name, action)
            if not self.ok:
                return
        with self.step("the guest kernel is byte-identical to ./setup.sh's") as result:
            result.note = self._kernel_parity()
        for name, action in use:
            self._user_step(name, action)

    def _kernel_parity(self) -> str:
        """Compare the replay's kernel with the reference build's, byte for byte, and where each came from."""
        assert self.layout is not None
        built = self.layout.home / ".cache" / "vlab" / "images"
        reference = self.args.reference_images
        ours, theirs = read_manifest(built), read_manifest(reference)
        if theirs is None:
            raise AssertionError(f"no reference images in {reference}: run ./setup.sh first (or --reference-images)")
        if ours is None:
            raise AssertionError(f"postBuild left no manifest in {built}")
        if not filecmp.cmp(built / "vmlinuz", reference / "vmlinuz", shallow=False):
            raise AssertionError(f"vmlinuz differs: Binder {kernel_source(ours)}, ./setup.sh {kernel_source(theirs)}")
        for key in ("kernel_deb_sha256", "kernel_modules"):
            if key in theirs["details"] and ours["details"].get(key) != theirs["details"][key]:  # older: no deb sha
                raise AssertionError(f"{key} differs: Binder {ours['details'].get(key)}, "
                                     f"./setup.sh {theirs['details'].get(key)}")
        via = ours["details"].get("kernel_fetched_via", "?")
        return f"{kernel_source(ours)} (from {via}), vmlinuz sha256 {ours['files']['vmlinuz']['sha256'][:16]}… in both"

    def _user_step(self, name: str, action: Callable[[], str | None]) -> None:
        with self.step(name, user=True) as result:
            result.note = action() or ""

    def _venv(self) -> str:
        assert self.layout is not None
        # The host's own Python stands in for repo2docker's conda Python (not this script's venv, if any).
        python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "python3"
        self.as_user([python, "-m", "venv", str(self.layout.prefix)])
        probe = [f"{self.layout.prefix}/bin/python", "-c", "import platform; print(platform.python_version())"]
        return "python " + self.as_user(probe, capture=True).strip()

    def _requirements(self) -> None:
        assert self.layout is not None
        pip = f"{self.layout.prefix}/bin/pip"
        # --no-compile: no .pyc at install time halves the files to write and delete; imports compile what they use.
        self.as_user([pip, "install", "--no-compile", "-q", "-r", "binder/requirements.txt"])

    def _post_build(self) -> None:
        self.as_user(["chmod", "+x", "binder/postBuild"])
        self.as_user(["./binder/postBuild"])

    def _doctor(self) -> str:
        out = self.as_user(["binder/start", "vlab", "doctor"], capture=True)
        if not TCG_VERDICT.search(out):
            raise AssertionError("vlab doctor did not report TCG with no /dev/kvm (accelerator tcg [none])")
        return "TCG verdict: " + next(line.strip() for line in out.splitlines() if TCG_VERDICT.search(line))

    def _tour(self) -> str:
        out = self.as_user(["binder/start", "vlab", "tour"], capture=True)
        if not UPTIME_OUTPUT.search(out):
            raise AssertionError("vlab tour printed no uptime output (load average)")
        return "uptime: " + next(line.strip() for line in out.splitlines() if UPTIME_OUTPUT.search(line))

    def _lab(self, notebook: Path) -> str:
        assert self.layout is not None
        out_dir = self.layout.home / ".binder-check-executed"
        self.as_user(
            [
                "binder/start",
                "jupyter",
                "nbconvert",
                "--to",
                "notebook",
                "--execute",
                "--ExecutePreprocessor.timeout=600",
                "--output-dir",
                str(out_dir),
                str(notebook.relative_to(self.layout.home)),
            ]
        )
        return f"executed without error ({notebook.name})"

    def _clean_up(self) -> str:
        left = self.memory.kill_leftovers()
        if left:
            say("killed leftover processes: " + "; ".join(left))
        started = time.monotonic()
        self.memory.remove()
        if self.args.keep:
            return f"--keep: {WORKSPACE} and user {USER} left in place"
        removed = time.monotonic()
        remove_workspace()
        files = time.monotonic()
        with contextlib.suppress(KeyError):
            pwd.getpwnam(USER)
            subprocess.run(["userdel", USER], check=True)
        if self.args.purge and PIP_CACHE.parent.exists():
            shutil.rmtree(PIP_CACHE.parent)
        return (
            f"memory group {removed - started:.1f} s, workspace {files - removed:.1f} s, "
            f"account {time.monotonic() - files:.1f} s"
        )

    def _summary(self, seconds: float) -> None:
        print(f"\n==> {PROG} summary", flush=True)
        for result in self.results:
            peak = f"{result.peak_mib:6.0f} MiB" if result.peak_mib is not None else " " * 10
            print(f"  {'ok    ' if result.ok else 'FAILED'} {result.seconds:6.1f} s {peak}  {result.name}")
        verdict = "PASSED" if self.ok else "FAILED"
        say(f"{verdict} in {seconds:.1f} s")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help=f"keep {WORKSPACE} and the user afterwards")
    parser.add_argument("--purge", action="store_true", help=f"also remove the pip cache {PIP_CACHE}")
    parser.add_argument("--memory-mib", type=int, default=2048, help="memory limit of the user steps (Binder: 2048)")
    parser.add_argument("--no-lab", action="store_true", help="do not execute lab 01")
    parser.add_argument("--step-timeout", type=float, default=900, help="seconds one user step may take")
    default_reference = Path(os.environ.get("VLAB_IMAGES") or Path.home() / ".cache" / "vlab" / "images")
    parser.add_argument("--reference-images", type=Path, default=default_reference,
                        help="the image directory ./setup.sh built, whose kernel Binder's must equal "
                        f"(default: {default_reference})")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(f"{PROG}: must run as root (it installs apt.txt and creates an unprivileged user)", file=sys.stderr)
        return 2
    # A SIGTERM (a CI time-out) unwinds like Ctrl-C, so the clean-up step still runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{PROG}: another {PROG} is running (lock {LOCK})", file=sys.stderr)
            return 2
        return Check(args).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
