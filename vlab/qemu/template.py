"""Snapshot templates: a booted, idle guest saved once, so that a VM starts by restoring it.

A *template* is the saved state of a guest that booted with a VM's hardware and nothing else: its machine
type (``pc`` for ``machine="auto"``: restored VMs hot-plug over PCI, which ``microvm`` lacks), memory, vCPUs,
firmware, kernel, initramfs, kernel command line (without the per-VM words) and the balloon. Disks and NICs are
not part of it: a restored VM hot-plugs its own (see :mod:`vlab.qemu.vm`) and
:mod:`vlab.qemu.individualize` gives it its hostname, addresses, clock and randomness.

Every template lives in ``templates_dir()/<key>/`` where *key* hashes everything that must match for a
restore to be correct (:func:`key_fields`); a different QEMU, BIOS or kernel is simply another key. It holds

* ``state``: QEMU's migration stream of the stopped guest (device state, and in the *copy* form its RAM);
* ``ram`` (*shared* form only): the guest RAM as a file, which each restored VM maps copy-on-write, so N
  VMs share the template's clean pages (QEMU's ``x-ignore-shared`` leaves it out of the stream);
* ``meta.json``: the key's fields and each file's size, sha256 and identity (inode, mtime, ctime).

Building is crash-safe: a template is assembled in ``.build-<key>-<pid>-*`` and renamed into place in one
step, so ``kill -9`` at any moment leaves no half-written template (the build directory of a dead builder
is removed by the next build), and a per-key ``flock`` makes two processes that need the same template
build it once. Before a restore, :func:`find` checks the directory is ours or root's (:func:`trusted_owners`)
and not writable by others, refuses symlinks, compares every recorded field, and re-hashes a file whose identity
changed since it was written (a file rewritten in place has a new ctime, which no user can set back).

Another user's templates (a graded notebook's throw-away uid using root's, bound read-only into its sandbox by
:mod:`vlab.grading.mounts`) are used but never built, rebuilt or removed: only the cache's owner does that. Such a
user's QEMU reads the copy form's stream from a descriptor vlab opened read-only; the shared form's RAM file, which
QEMU 7.2 opens read-write even to map it privately, is first copied into the VM's own directory
(:func:`private_ram`), so nothing that user's QEMU may write is the template.

A rebuilt image gives new keys, so the templates of the old one could never be restored again: building a template
removes them (:func:`prune`; also ``vlab images prune``), judged by the kernel and initramfs each one recorded.

The shared form is used only for VMs without a balloon: QEMU 7.2 discards ballooned pages of a file-backed
RAM block by punching holes into the file itself, which for a template would zero pages under every VM.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlab.errors import VlabError
from vlab.files import write_atomic
from vlab.host import procfs
from vlab.images.build import INITRD_NAME, KERNEL_NAME
from vlab.paths import images_dir
from vlab.qemu.config import BALLOON_ID, QEMU_BINARY, RAM_BACKEND_ID, VMConfig

if TYPE_CHECKING:
    from vlab.qemu.vm import VM

__all__ = [
    "COLD_BOOT_ENV",
    "TEMPLATES_ENV",
    "Template",
    "TemplateError",
    "base_config",
    "build",
    "cold_reason",
    "ensure",
    "find",
    "key_fields",
    "load",
    "private_ram",
    "prune",
    "restore_slots",
    "templates_dir",
    "trusted_owners",
]

log = logging.getLogger(__name__)

#: ``VLAB_COLD_BOOT=1``: every VM of this process (and its children) boots its kernel; no template is used.
COLD_BOOT_ENV = "VLAB_COLD_BOOT"
#: Where templates are kept (default: ``templates/`` beside the guest images).
TEMPLATES_ENV = "VLAB_TEMPLATES"
#: Bumped whenever the layout or the meaning of a template changes: old ones are then never used.
FORMAT = 2  # 2: -rtc clock=vm
_NAME = "vlab-template"
_META = "meta.json"
_STATE = "state"
_RAM = "ram"
_BUILD_PREFIX = ".build-"
_MAX_META_BYTES = 64 * 1024
_PER_VM_WORDS = ("vlab.hostname=", "vlab.gw=", "vlab.ip")
#: the PCI slot of the template's balloon; hot-plugged disks and NICs follow it
_FIRST_SLOT = 2
_FIRMWARE = ("bios-256k.bin", "linuxboot_dma.bin")
_LOCK_WAIT = 300.0  # s another process may take building the same template


class TemplateError(VlabError):
    """A template cannot be used (missing, foreign, corrupted, or its restore failed): boot cold instead."""


@dataclass(frozen=True)
class Template:
    """A verified template on disk (see the module docstring)."""

    key: str
    directory: Path
    meta: Mapping[str, Any]

    @property
    def state_path(self) -> Path:
        return self.directory / _STATE

    @property
    def ram_path(self) -> Path | None:
        """The shared RAM file (None in the copy form, where the RAM is in the state stream)."""
        return self.directory / _RAM if self.shared else None

    @property
    def shared(self) -> bool:
        return bool(self.meta.get("shared"))

    @property
    def slots(self) -> dict[str, int]:
        """PCI slots of the template's own devices (the balloon)."""
        return {str(k): int(v) for k, v in dict(self.meta.get("slots", {})).items()}

    def memory_backend(self, workdir: Path | None = None) -> dict[str, Any]:
        """The ``-object`` a restored VM gets: plain RAM (copy form) or a RAM file mapped privately (shared form).

        QEMU 7.2 opens a RAM file read-write even to map it privately, so a process that may not write the
        template's file (a graded notebook's throw-away uid, any user of root's templates) gets a private copy of
        it in ``workdir`` (the VM's own directory, removed with it): see :func:`private_ram`.
        """
        size = int(self.meta["fields"]["mem"]) * 1024 * 1024
        if self.ram_path is None:
            return {"qom-type": "memory-backend-ram", "id": RAM_BACKEND_ID, "size": size}
        ram = self.ram_path if os.access(self.ram_path, os.W_OK) else private_ram(self, workdir)
        return {"qom-type": "memory-backend-file", "id": RAM_BACKEND_ID, "size": size,
                "mem-path": str(ram), "share": False}


# -- where, and for which VMs ---------------------------------------------------------------------------


def templates_dir() -> Path:
    """The template cache: ``$VLAB_TEMPLATES``, else ``templates/`` in :func:`vlab.paths.images_dir`."""
    env = os.environ.get(TEMPLATES_ENV)
    return Path(env).expanduser() if env else images_dir() / "templates"


def cold_reason(config: VMConfig, cold: bool | None = None) -> str | None:
    """Why ``config`` must boot cold (None: a template can serve it)."""
    if cold:
        return "start(cold=True) was asked for"
    if cold is None and config.cold_boot:
        return "the config says cold_boot=True"
    if cold is None and os.environ.get(COLD_BOOT_ENV, "") not in ("", "0"):
        return f"{COLD_BOOT_ENV}=1 is set"
    if config.extra_args:
        return "extra_args may change the device set, which a template must match exactly"
    if config.machine == "microvm":
        return "templates run on machine 'pc' (a restored VM's disks and NICs are hot-plugged over PCI, and " \
               "microvm has no PCI)"
    if config.machine not in ("pc", "auto") and (config.disks or config.nics):
        return f"disks and NICs are hot-plugged after a restore, which vlab does on machine 'pc' only, not " \
               f"{config.machine!r}"
    return None


def base_config(config: VMConfig) -> VMConfig:
    """The hardware a template of ``config`` boots: no disks, no NICs, no per-VM kernel arguments.

    ``machine="auto"`` means ``pc`` here: a template's VMs hot-plug their disks and NICs over PCI (a cold
    boot of the same config may run on microvm instead, see :meth:`VMConfig.boot_machine`).
    """
    words = [w for w in config.append.split() if not w.startswith(_PER_VM_WORDS)]
    machine = "pc" if config.machine == "auto" else config.machine
    return config.replace(name=_NAME, disks=(), nics=(), append=" ".join(words), cold_boot=False, machine=machine)


def restore_slots(config: VMConfig, template: Template) -> dict[str, int]:
    """PCI slots of every device of a VM restored from ``template``: the template's, then disks, then NICs."""
    slots = template.slots
    nxt = max([_FIRST_SLOT - 1, *slots.values()]) + 1
    for i in range(len(config.disks)):
        slots[f"vd{i}"] = nxt
        nxt += 1
    for i in range(len(config.nics)):
        slots[f"nic{i}"] = nxt
        nxt += 1
    return slots


# -- the key --------------------------------------------------------------------------------------------

_hash_cache: dict[tuple[str, int, int, int], str] = {}
_version_cache: dict[tuple[str, int, int], tuple[str, bool]] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, inode, size, mtime) for this process."""
    info = path.stat()
    ident = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
    if ident not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
        _hash_cache[ident] = digest.hexdigest()
    return _hash_cache[ident]


def _qemu() -> tuple[str, bool]:
    """QEMU's version line and whether it has the ``x-ignore-shared`` migration capability."""
    binary = shutil.which(QEMU_BINARY)
    if binary is None:
        raise TemplateError("QEMU is not installed", field="qemu", value=QEMU_BINARY,
                            fix="apt-get install qemu-system-x86 (or run: vlab doctor)")
    info = Path(binary).stat()
    ident = (os.path.realpath(binary), info.st_size, info.st_mtime_ns)
    if ident not in _version_cache:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20, check=False)
        version = (out.stdout.splitlines() or ["unknown"])[0].strip()
        major_minor = tuple(int(p) for p in version.split("version", 1)[-1].split()[0].split(".")[:2]) \
            if "version" in version else (0, 0)
        _version_cache[ident] = (version, major_minor >= (4, 0))  # x-ignore-shared came with QEMU 4.0
    return _version_cache[ident]


def _firmware() -> dict[str, str]:
    """sha256 of the firmware a ``pc`` guest runs, found where QEMU looks (``-L help``)."""
    out = subprocess.run([QEMU_BINARY, "-L", "help"], capture_output=True, text=True, timeout=20, check=False)
    dirs = [Path(line.strip()) for line in out.stdout.splitlines() if line.strip()]
    found: dict[str, str] = {}
    for name in _FIRMWARE:
        path = next((d / name for d in dirs if (d / name).is_file()), None)
        found[name] = _sha256(path.resolve()) if path is not None else "missing"
    return found


_firmware_cache: dict[str, str] | None = None


def key_fields(config: VMConfig, accel: str) -> dict[str, Any]:
    """Everything a restore must match, for ``config`` run with accelerator ``accel`` (``tcg``/``kvm``)."""
    global _firmware_cache
    if _firmware_cache is None:
        _firmware_cache = _firmware()
    version, can_share = _qemu()
    base = base_config(config)
    assert base.kernel is not None and base.initrd is not None
    return {
        "format": FORMAT, "qemu": version, "accel": accel, "machine": base.machine, "mem": base.mem,
        "vcpus": base.vcpus, "cpu": base.cpu, "balloon": base.balloon, "firmware": _firmware_cache,
        "kernel_sha256": _sha256(base.kernel), "initrd_sha256": _sha256(base.initrd),
        "cmdline": base.kernel_cmdline(),
        # shared RAM and a balloon do not mix on QEMU 7.2 (see the module docstring)
        "shared": can_share and not base.balloon,
    }


def _key(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


# -- finding and checking -------------------------------------------------------------------------------


def _check_owned(path: Path, what: str, *, directory: bool) -> os.stat_result:
    """lstat ``path``: ours, the right kind, not a symlink, not writable by group or others."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise TemplateError(f"the template's {what} is missing", field="template", value=str(path),
                            fix="it is rebuilt automatically") from None
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if stat.S_ISLNK(info.st_mode) or not kind_ok:
        raise TemplateError(f"the template's {what} is a symlink or not a "
                            f"{'directory' if directory else 'regular file'}", field="template", value=str(path),
                            fix=f"remove it: rm -r {path}")
    if info.st_uid not in trusted_owners() or info.st_mode & 0o022:
        raise TemplateError(f"the template's {what} is not yours or root's alone (uid {info.st_uid}, mode "
                            f"{stat.S_IMODE(info.st_mode):04o}): another user could have written it",
                            field="template", value=str(path), fix=f"remove it: rm -r {path}")
    return info


def trusted_owners() -> frozenset[int]:
    """Who may have written a template this process uses: itself, and root.

    Root's templates are trusted by everyone (root could change anything of ours anyway): that is how a graded
    notebook, run as a throw-away uid, restores from the templates the instructor built. Anyone else's are
    refused: root never uses a template a student uid wrote, nor one student uid another's.
    """
    return frozenset({os.geteuid(), 0})


def _identity(info: os.stat_result) -> list[int]:
    return [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]


def _check_file(directory: Path, name: str, record: Mapping[str, Any]) -> None:
    path = directory / name
    info = _check_owned(path, f"{name} file", directory=False)
    if info.st_size != int(record["size"]):
        raise TemplateError(f"the template's {name} file is {info.st_size} bytes, not the {record['size']} it "
                            f"was written with (truncated or replaced)", field="template", value=str(path),
                            fix="it is removed and rebuilt automatically")
    if _identity(info) != list(record["identity"]) and _sha256(path) != record["sha256"]:
        raise TemplateError(f"the template's {name} file changed since it was written (sha256 differs)",
                            field="template", value=str(path), fix="it is removed and rebuilt automatically")


def _root(create: bool) -> Path:
    root = templates_dir()
    if create and not root.exists():
        try:
            root.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise TemplateError(f"the template directory cannot be created ({exc.strerror})", field="templates",
                                value=str(root), fix=f"make it writable, or export {TEMPLATES_ENV}=<a dir>") from None
    if root.exists() or root.is_symlink():
        _check_owned(root, "cache directory", directory=True)
    return root


def find(config: VMConfig, accel: str) -> Template | None:
    """The verified template for ``config`` and ``accel``, or None if there is none yet.

    :raises TemplateError: if one exists but cannot be trusted (it says why).
    """
    fields = key_fields(config, accel)
    directory = _root(create=False) / _key(fields)
    if not directory.exists() and not directory.is_symlink():
        return None
    meta = _read_meta(directory)
    if meta.get("fields") != fields:
        wrong = sorted(k for k in fields if dict(meta.get("fields") or {}).get(k) != fields[k])
        raise TemplateError(f"the template was made for other hardware (differs in: {', '.join(wrong) or 'all'})",
                            field="template", value=str(directory), fix="it is removed and rebuilt automatically")
    try:
        for name, record in dict(meta["files"]).items():
            if name not in (_STATE, _RAM):
                raise ValueError(f"unexpected file {name!r}")
            _check_file(directory, name, record)
        if fields["shared"] and _RAM not in meta["files"]:
            raise ValueError("no RAM file")
    except (KeyError, TypeError, ValueError) as exc:
        raise TemplateError(f"the template's meta.json is malformed ({exc})", field="template",
                            value=str(directory / _META), fix="it is removed and rebuilt automatically") from None
    return Template(_key(fields), directory, meta)


def _read_meta(directory: Path) -> dict[str, Any]:
    """A template directory's ``meta.json``, after checking both are ours or root's alone and not symlinks."""
    _check_owned(directory, "directory", directory=True)
    meta_path = directory / _META
    _check_owned(meta_path, "meta.json", directory=False)
    try:
        with open(meta_path, "rb", opener=_nofollow) as stream:
            meta = json.loads(stream.read(_MAX_META_BYTES + 1))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        raise TemplateError(f"the template's meta.json cannot be read ({exc})", field="template",
                            value=str(meta_path), fix="it is removed and rebuilt automatically") from None
    return meta


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def remove(template_dir: Path) -> None:
    """Remove a template directory (or a symlink planted in its place, never what it points to)."""
    if template_dir.is_symlink() or template_dir.is_file():
        template_dir.unlink(missing_ok=True)
    else:
        shutil.rmtree(template_dir, ignore_errors=True)


#: keys whose build failed in this process, with the error (retried by a new process)
_failed_builds: dict[str, TemplateError] = {}


@contextlib.contextmanager
def _locked(root: Path, key: str, wait: float = _LOCK_WAIT) -> Iterator[None]:
    """One builder per key across processes (``flock`` is released if the holder dies).

    :raises TemplateError: if another process still holds it after ``wait`` seconds.
    """
    fd = os.open(root / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TemplateError("another process has been building this template for too long",
                                        field="template", value=key, fix="retry, or boot cold") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def ensure(config: VMConfig, accel: str, *, timeout: float = 60.0) -> tuple[Template, str]:
    """The template for ``config``, building it first if needed.

    A template that cannot be trusted is removed and rebuilt. :returns: the template and a note on what was
    done (``""`` when it was simply there).
    :raises TemplateError: when no template can be made here (it says why).
    """
    try:
        return _ensure(config, accel, timeout)
    except OSError as exc:  # a read-only or full cache, a file vanishing under us: boot cold, say why
        raise TemplateError(f"the template cache cannot be used ({exc.strerror or exc})", field="templates",
                            value=str(templates_dir()), fix=f"make it writable, or export {TEMPLATES_ENV}=<a dir>")\
            from None


def _ensure(config: VMConfig, accel: str, timeout: float) -> tuple[Template, str]:
    note = ""
    failed = _failed_builds.get(_key(key_fields(config, accel)))
    if failed is not None:
        raise failed  # a guest that cannot boot fails fast: not one failed build per start()
    try:
        found = find(config, accel)
        if found is not None:
            return found, note
    except TemplateError as exc:
        note = f"{exc.problem}; rebuilt it"
    root = _root(create=True)
    key = _key(key_fields(config, accel))
    owner = root.lstat().st_uid
    if owner != os.geteuid():  # root's cache, used by another user (a graded notebook): only root builds there
        raise TemplateError(f"no usable template for this hardware in uid {owner}'s cache"
                            f"{' (' + note.removesuffix('; rebuilt it') + ')' if note else ''}: only its owner "
                            f"builds templates there", field="template", value=str(root / key),
                            fix="build it beforehand as that user (e.g. `vlab images template` for the default "
                                "guest, or template.ensure(config, accel)); VMs boot cold meanwhile")
    with _locked(root, key):
        try:
            found = find(config, accel)  # another process may have built it while we waited
            if found is not None:
                return found, note
        except TemplateError as exc:
            note = f"{exc.problem}; rebuilt it"
            log.warning("template %s: %s", key, note)
            remove(root / key)
        try:
            built = build(config, accel, timeout=timeout)
        except TemplateError as exc:
            _failed_builds[key] = exc
            raise
    removed = prune(root)  # a new template is often a rebuilt image's: its predecessors can go
    if removed:
        note = f"{note}; " if note else ""
        note += f"removed {len(removed)} template{'s' if len(removed) > 1 else ''} of older images"
    return built, note or "built the template (first use)"


# -- pruning --------------------------------------------------------------------------------------------


def _superseded(meta: Mapping[str, Any]) -> str | None:
    """Why a template can never be restored again (None: it still can): its kernel or initramfs changed since.

    Its key holds their sha256, so a rebuilt image simply gets new keys and the old templates would stay forever.
    """
    sources, fields = meta.get("sources"), meta.get("fields")
    if meta.get("format") != FORMAT or not isinstance(fields, dict):
        return "made by an older vlab"
    if not isinstance(sources, dict):  # recorded since 2026-12: before, templates were the default guest's
        sources = {"kernel": images_dir() / KERNEL_NAME, "initrd": images_dir() / INITRD_NAME}
    for name in ("kernel", "initrd"):
        path = Path(str(sources.get(name)))
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                return f"its {name} is not a regular file"
            current = _sha256(path)
        except OSError:
            return f"its {name} is gone"
        if current != fields.get(f"{name}_sha256"):
            return f"its {name} changed"
    return None


def prune(root: Path | None = None) -> list[Path]:
    """Remove this user's templates that can never be restored again (see :func:`_superseded`).

    Only real directories owned by this user whose ``meta.json`` is readable are judged; a template being built
    by another process at this moment is skipped (its lock is held), and nothing is followed through a
    symlink. A VM restored from a removed template keeps its open files. :returns: what was removed.
    """
    root = templates_dir() if root is None else root
    removed: list[Path] = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return removed
    for directory in entries:
        if len(directory.name) != 32 or not all(c in "0123456789abcdef" for c in directory.name):
            continue  # locks, build directories, anything else
        try:
            if directory.lstat().st_uid != os.geteuid():
                continue  # root's templates, seen by a graded notebook's uid: never ours to remove
            meta = _read_meta(directory)
        except (OSError, TemplateError):
            continue
        reason = _superseded(meta)
        if reason is None:
            continue
        with contextlib.suppress(TemplateError, OSError), _locked(root, directory.name, wait=0.0):
            remove(directory)
            log.info("removed template %s: %s", directory.name, reason)
            removed.append(directory)
    return removed


# -- building -------------------------------------------------------------------------------------------


def sweep_stale_builds(root: Path) -> list[Path]:
    """Remove build directories whose builder died (``kill -9`` mid-build)."""
    removed = []
    for entry in root.glob(f"{_BUILD_PREFIX}*"):
        parts = entry.name[len(_BUILD_PREFIX):].split("-")
        if len(parts) >= 2 and parts[1].isdigit() and not procfs.alive(int(parts[1])) and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def build(config: VMConfig, accel: str, *, timeout: float = 60.0) -> Template:
    """Boot ``config``'s hardware, let it idle, save it, and publish it as a template (caller holds the lock).

    :raises TemplateError: if the boot or the save fails (nothing is left behind).
    """
    from vlab.qemu.vm import VM  # vm.py uses this module

    fields = key_fields(config, accel)
    key = _key(fields)
    root = _root(create=True)
    sweep_stale_builds(root)
    work = Path(tempfile.mkdtemp(prefix=f"{_BUILD_PREFIX}{key[:12]}-{os.getpid()}-", dir=root))
    started = time.monotonic()
    vm = VM(base_config(config), accel=accel)
    try:
        os.chmod(work, 0o755)
        slots = {BALLOON_ID: _FIRST_SLOT} if config.balloon else {}
        ram = work / _RAM
        if fields["shared"]:
            vm._launch_overrides = {"memory_backend": {
                "qom-type": "memory-backend-file", "id": RAM_BACKEND_ID, "size": config.mem * 1024 * 1024,
                "mem-path": str(ram), "share": True}}
        vm._pci_slots = slots
        vm.start(timeout=timeout, cold=True)
        if not fields["shared"]:
            _squeeze(vm)
        uptime = _settle(vm)
        _save(vm, work / _STATE, shared=bool(fields["shared"]), limit=(config.mem + 64) * 1024 * 1024,
              timeout=timeout)
        vm.kill()
        files = {_STATE: _record(work / _STATE)}
        if fields["shared"]:
            with open(ram, "rb+") as stream:
                os.fsync(stream.fileno())
            files[_RAM] = _record(ram)
        base = base_config(config)
        meta = {"format": FORMAT, "key": key, "fields": fields, "files": files, "shared": fields["shared"],
                "sources": {"kernel": str(base.kernel), "initrd": str(base.initrd)},  # for prune()
                "slots": slots, "saved_uptime": uptime, "built_seconds": round(time.monotonic() - started, 3),
                "created": time.time()}
        write_atomic(work / _META, json.dumps(meta, indent=1, sort_keys=True))
        os.rename(work, root / key)  # the one step that publishes it
    except BaseException as exc:
        vm.kill()
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, VlabError) and not isinstance(exc, TemplateError):
            raise TemplateError(f"building the template failed: {exc.problem}", field="template", value=key,
                                fix="boot cold (start(cold=True)); see the detail", detail=str(exc)) from exc
        raise
    log.info("built template %s in %.1f s", key, time.monotonic() - started)
    return Template(key, root / key, meta)


def _record(path: Path) -> dict[str, Any]:
    info = path.stat()
    return {"size": info.st_size, "sha256": _sha256(path), "identity": _identity(info)}


def _squeeze(vm: VM) -> None:
    """Overwrite the guest's free memory with zeros before it is saved.

    The boot leaves garbage in free pages (the compressed kernel, the initramfs archive); zero pages cost a
    few bytes each in the migration stream, so the state to save, and to load at every restore, shrinks to
    what the guest really uses. A tmpfs sized to the free memory minus a margin is filled from /dev/zero and
    removed again (the kernel hands out free pages, and gets them back zeroed).
    """
    vm.console.run("sync; echo 3 > /proc/sys/vm/drop_caches; m=$(awk '/MemFree/ {print int($2/1024) - 24}' "
                   "/proc/meminfo); mkdir -p /run/z && mount -t tmpfs -o size=${m}m z /run/z && "
                   "dd if=/dev/zero of=/run/z/z bs=1M count=$m 2>/dev/null; umount /run/z; rmdir /run/z", timeout=60)


def _settle(vm: VM) -> float:
    """Let the guest idle until its random-number generator would reseed on the next use.

    Linux 6.1 reseeds its CRNG on use once the last seed is older than max(1 s, uptime / 2) (during the first
    two minutes). Saving the guest after that long idle means a restored guest reseeds at its first use of
    randomness, right after :mod:`vlab.qemu.individualize` has mixed fresh host randomness into the pool.
    """
    uptime = float(vm.console.run("cut -d' ' -f1 /proc/uptime").output.split()[0])
    time.sleep(max(1.0, uptime) + 0.4)
    return uptime


def _save(vm: VM, path: Path, *, shared: bool, limit: int, timeout: float) -> None:
    """Stop the guest and write its migration stream to ``path`` (through a socket vlab reads: no shell)."""
    assert vm.workdir is not None
    sock_path = vm.workdir / "save.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    listener.settimeout(timeout)
    failure: list[BaseException] = []

    def receive() -> None:
        try:
            conn, _ = listener.accept()
            with conn, open(path, "wb", opener=lambda p, f: os.open(p, f | os.O_EXCL, 0o644)) as out:
                conn.settimeout(timeout)
                written = 0
                while chunk := conn.recv(1 << 20):
                    written += len(chunk)
                    if written > limit:
                        raise TemplateError("the saved state is larger than the guest's memory",
                                            field="template", value=written, fix="report this as a bug")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException as exc:  # reported by the caller's thread
            failure.append(exc)

    receiver = threading.Thread(target=receive, name="vlab-template-save", daemon=True)
    receiver.start()
    try:
        vm.qmp("stop")
        vm.qmp("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": shared}])
        vm.qmp("migrate-set-parameters", max_bandwidth=1 << 40)  # a stopped guest: no reason to throttle
        vm.qmp("migrate", uri=f"unix:{sock_path}")
        deadline = time.monotonic() + timeout
        while True:
            info = vm.qmp("query-migrate")
            if info.get("status") == "completed":
                break
            if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                raise TemplateError(f"saving the template failed ({info.get('error-desc', info.get('status'))})",
                                    field="template", value=str(path), fix="boot cold (start(cold=True))")
            time.sleep(0.01)
        receiver.join(timeout)
        if receiver.is_alive() or failure:
            raise TemplateError("the template's state was not received completely", field="template",
                                value=str(path), fix="boot cold (start(cold=True))",
                                detail=repr(failure[0]) if failure else "timed out")
    finally:
        listener.close()


# -- restoring ------------------------------------------------------------------------------------------


def private_ram(found: Template, workdir: Path | None) -> Path:
    """A copy of the shared-form template's RAM file in ``workdir``, owned by this process's user (0600).

    QEMU maps it privately like the template's own file; the guest's writes reach neither. The copy is read
    through a descriptor opened without following links and must have the size :func:`find` verified.

    :raises TemplateError: without a workdir, or if the copy cannot be made (a full ``/tmp``): boot cold.
    """
    assert found.ram_path is not None
    if workdir is None:
        raise TemplateError("the template's RAM file is not writable here and there is no directory to copy it to",
                            field="template", value=str(found.ram_path), fix="boot cold: vm.start(cold=True)")
    size = int(found.meta["files"][_RAM]["size"])
    target = workdir / _RAM
    try:
        source = os.open(found.ram_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                copied = 0
                while copied < size:
                    sent = os.sendfile(out, source, copied, size - copied)
                    if sent == 0:
                        break
                    copied += sent
            finally:
                os.close(out)
        finally:
            os.close(source)
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise TemplateError(f"the template's RAM file could not be copied ({exc.strerror or exc})",
                            field="template", value=str(target), fix="free space there, or boot cold") from None
    if copied != size:
        target.unlink(missing_ok=True)
        raise TemplateError(f"the template's RAM file gave {copied} bytes, not {size}", field="template",
                            value=str(found.ram_path), fix="it is rebuilt by its owner; boot cold meanwhile")
    return target


def load(execute: Callable[[str, Mapping[str, Any]], Any], found: Template, state_fd: int, timeout: float) -> None:
    """Feed the template's state to a QEMU started with ``-incoming defer -S`` (on fd ``state_fd``).

    Returns once the guest is loaded and paused.

    :raises TemplateError: if QEMU rejects the stream or does not finish within ``timeout`` s.
    """
    execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": found.shared}]})
    execute("migrate-incoming", {"uri": f"fd:{int(state_fd)}"})
    deadline = time.monotonic() + timeout
    while True:
        info = execute("query-migrate", {})
        status = info.get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled"):
            remove(found.directory)  # QEMU rejected it: the next start builds a new one
            raise TemplateError(f"QEMU could not load the template ({info.get('error-desc', status)})",
                                field="template", value=found.key, fix="it is rebuilt on the next start; "
                                "if this repeats, boot cold: vm.start(cold=True)")
        if time.monotonic() > deadline:
            raise TemplateError(f"QEMU did not load the template within {timeout} s", field="template",
                                value=found.key, fix="retry with a longer timeout, or boot cold")
        time.sleep(0.002)
    if found.shared:  # a later migration of this VM sends its RAM as usual
        execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ignore-shared", "state": False}]})
