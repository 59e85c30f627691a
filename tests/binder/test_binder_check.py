"""binder/: what repo2docker reads agrees with the project, and ``binder/check.py`` replays the Binder build.

The cheap tests read the files repo2docker reads (``apt.txt``, ``requirements.txt``, ``runtime.txt``,
``postBuild``, ``start``) against their sources of truth (``setup.sh``, ``pyproject.toml``) and run
``binder/start`` for real. The slow one runs ``binder/check.py`` end to end as root: an
unprivileged user, no ``/dev/kvm``, emptied apt lists, a 2 GiB memory group, postBuild, doctor, tour, lab 01.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from vlab.host.cgroups import Cgroup, CgroupSupport
from vlab.host.packages import read_apt_txt

REPO = Path(__file__).resolve().parents[2]
BINDER = REPO / "binder"

#: setup.sh packages Binder does not need: its Python comes from repo2docker, the browser test does not run there.
HOST_ONLY_PACKAGES = {"python3-venv", "chromium"}


@functools.cache
def load_check() -> ModuleType:
    """``binder/check.py`` as a module (``binder/`` is no package: repo2docker's directory, not Python's)."""
    spec = importlib.util.spec_from_file_location("binder_check", BINDER / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def setup_sh_packages() -> list[str]:
    """What ``./setup.sh`` installs in step 1, as it prints it (``./setup.sh packages`` installs nothing)."""
    done = subprocess.run([str(REPO / "setup.sh"), "packages"], capture_output=True, text=True, check=True,
                          timeout=30)
    return done.stdout.split()


def apt_txt() -> set[str]:
    return set(read_apt_txt(BINDER / "apt.txt"))


def requirements(lines: list[str]) -> dict[str, SpecifierSet]:
    parsed = [Requirement(line) for line in lines]
    return {re.sub(r"[-_.]+", "-", r.name).lower(): r.specifier for r in parsed}


def test_setup_sh_installs_exactly_apt_txt_plus_the_host_only_packages() -> None:
    assert setup_sh_packages() == [*read_apt_txt(BINDER / "apt.txt"), "python3-venv"]


def test_the_package_list_has_one_copy_binder_apt_txt() -> None:
    # setup.sh reads binder/apt.txt; it must not name those packages itself (a second list would drift)
    script = (REPO / "setup.sh").read_text()
    named_there = sorted(name for name in apt_txt() if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", script))
    assert named_there == [], f"setup.sh names {named_there}: they belong in binder/apt.txt only"
    assert not (HOST_ONLY_PACKAGES & apt_txt())


def test_apt_txt_has_debian_keys_for_the_pinned_kernel_and_zstd_for_compressed_modules() -> None:
    # kernel.py fetches Debian's pinned kernel on Ubuntu through apt trusting Debian's keyring (same path on both);
    # it decompresses .ko.zst with the zstd command (an Ubuntu kernel chosen with VLAB_KERNEL_PACKAGE).
    assert {"debian-archive-keyring", "zstd"} <= apt_txt()


def test_requirements_txt_matches_pyproject_dependencies() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line.split("#")[0].strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    assert requirements([line for line in lines if line]) == requirements(pyproject)


def test_runtime_txt_python_satisfies_requires_python() -> None:
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+\.\d+)", runtime)
    assert match, f"runtime.txt must be python-X.Y for repo2docker, got {runtime!r}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(match.group(1))


def test_post_build_is_executable_valid_bash_and_needs_no_root() -> None:
    post_build = BINDER / "postBuild"
    assert os.access(post_build, os.X_OK)
    subprocess.run(["bash", "-n", str(post_build)], check=True)
    code = [line.split("#")[0] for line in post_build.read_text().splitlines()[1:]]
    privileged = [line for line in code if re.search(r"\b(sudo|su|apt-get|apt|dpkg|mount|chown)\b", line)]
    assert not privileged, f"postBuild runs as the notebook user, never root: {privileged}"
    commands = " ".join(code)
    assert "pip install" in commands and "-e ." in commands
    assert "vlab images build" in commands


def test_start_runs_its_arguments_with_the_image_directory_pinned(tmp_path: Path) -> None:
    # A runtime XDG_CACHE_HOME must not move vlab away from the images postBuild built under $HOME/.cache.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "elsewhere")}
    env.pop("VLAB_IMAGES", None)
    program = "from vlab.paths import images_dir; print(images_dir())"
    done = subprocess.run(
        [str(BINDER / "start"), sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == str(tmp_path / ".cache" / "vlab" / "images")


def test_check_reads_apt_txt_as_vlab_does() -> None:
    assert load_check().read_apt_txt is read_apt_txt


def test_memory_group_reads_its_cgroup_through_vlab_host_cgroups(tmp_path: Path) -> None:
    check = load_check()
    group = Cgroup(check.CGROUP_NAME, ("memory",), CgroupSupport(v1={"memory": tmp_path}))
    path = tmp_path / check.CGROUP_NAME
    (path / "memory.max_usage_in_bytes").write_text(str(300 * 1024 * 1024))
    (path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (path / "cgroup.procs").write_text("123\n45\n")
    memory = check.MemoryGroup(1, group)
    assert (memory.peak_mib(), memory.oom_kills(), memory.leftovers()) == (300, 2, [45, 123])
    memory.reset_peak()
    assert memory.oom_kills_before == 2 and (path / "memory.max_usage_in_bytes").read_text() == "0"
    assert check.MemoryGroup(1).peak_mib() is None  # no group (not created): nothing measured


def test_check_refuses_to_run_without_root() -> None:
    argv = [sys.executable, str(BINDER / "check.py")]
    if os.geteuid() == 0:  # drop to nobody for real rather than pretend; the system Python is one nobody may run
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", python, str(BINDER / "check.py")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "must run as root" in done.stderr


def image_dir(root: Path, kernel: bytes, sources: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "vmlinuz").write_bytes(kernel)
    manifest = {"files": {"vmlinuz": {"name": "vmlinuz", "size": len(kernel), "sha256": "ab" * 32}},
                "sources": sources, "details": {"kernel_modules": ["virtio"], "kernel_deb_sha256": "cd" * 32},
                "inputs_key": "x"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_kernel_parity_step_compares_the_kernels_byte_for_byte(tmp_path: Path) -> None:
    check = load_check()
    pinned = {"linux-image-6.1.0-57-cloud-amd64": "6.1.192-3", "gcc": "12"}
    reference = image_dir(tmp_path / "reference", b"same kernel bytes", pinned)
    home = tmp_path / "home"
    replay = check.Check(check.parse_args(["--reference-images", str(reference)]))
    replay.layout = check.Layout(home, tmp_path / "prefix", 1000, 1000)
    built = image_dir(home / ".cache" / "vlab" / "images", b"same kernel bytes", pinned)
    assert replay._kernel_parity().startswith("linux-image-6.1.0-57-cloud-amd64 6.1.192-3 (from ?), vmlinuz sha256")
    (built / "vmlinuz").write_bytes(b"same kernel bytez")  # same size, one byte off
    with pytest.raises(AssertionError, match="vmlinuz differs"):
        replay._kernel_parity()
    replay.args.reference_images = tmp_path / "nowhere"
    with pytest.raises(AssertionError, match=r"run \./setup\.sh first"):
        replay._kernel_parity()


@pytest.mark.binder
@pytest.mark.slow
def test_binder_check_replays_the_build_then_doctor_says_tcg_and_the_tour_runs_uptime() -> None:
    if os.geteuid() != 0:
        pytest.skip("binder/check.py needs root: it installs apt.txt, creates a user and hides /dev/kvm with mounts")
    done = subprocess.run([str(BINDER / "check.py")], capture_output=True, text=True, timeout=1800, check=False,
                          cwd=REPO)
    output = done.stdout + done.stderr
    tail = "\n".join(output.splitlines()[-60:])
    assert done.returncode == 0, f"binder/check.py failed (exit {done.returncode}):\n{tail}"
    assert re.search(r"accelerator\s+tcg \[none\]: no /dev/kvm", output), tail
    assert re.search(r"load average", output), tail
    assert "binder/check.py: PASSED" in output
    # with the apt lists gone, as on Binder, the pinned kernel came from Debian's archive through vlab's own apt
    assert re.search(r"binder/check\.py: ok: the guest kernel is byte-identical to ./setup.sh's in .*"
                     r"\(from Debian's archive through a private apt configuration\)", output), tail
    if sorted(REPO.glob("labs/01-*.ipynb")):
        assert re.search(r"binder/check\.py: ok: lab 01 headless", output), tail
