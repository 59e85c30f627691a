"""What a VM is made of: :class:`VMConfig`, its validation, the classic ``vm.conf`` and QEMU's argv.

A :class:`VMConfig` is a frozen, validated dataclass. Every check happens in
``__post_init__`` so that a wrong value fails where the student wrote it, as a
:class:`~vlab.errors.VlabError` naming the key, the value and the fix, never
deep inside QEMU. :meth:`VMConfig.from_conf` reads the ``key = "value"`` format
OS textbooks print (``kernel``, ``initrd``, ``appended``, ``root``, ``mem``,
``vcpus``); :meth:`VMConfig.qemu_argv` turns a config into the exact command
line, which a lab can show next to the textbook's ``kvm -kernel … -nographic``.

:class:`~vlab.qemu.vm.VM` launches the same argv with the console and QMP on
inherited socket fds instead of stdio (see :class:`LaunchIO`).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from vlab.errors import VlabError

__all__ = [
    "READY_MARKER",
    "QEMU_BINARY",
    "Disk",
    "Nic",
    "VMConfig",
    "LaunchIO",
    "parse_size_mib",
    "default_kernel",
    "default_initrd",
]

#: The line the vlab guest's init prints on ttyS0 once it is usable.
READY_MARKER = "VLAB-READY"
#: The QEMU system emulator vlab runs.
QEMU_BINARY = "qemu-system-x86_64"

AccelName = Literal["auto", "tcg", "kvm"]
_MACHINES = ("pc", "q35")
_UNITS = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_IMAGES_FIX = "build the guest images with: vlab images build"


def parse_size_mib(value: str | int, *, field_name: str = "mem") -> int:
    """Parse a memory size as people write it (``512``, ``"512M"``, ``"1G"``, ``"2GiB"``) into MiB.

    A bare number means MiB, as in QEMU's ``-m``.

    :raises VlabError: for anything that is not a positive whole number of MiB.
    """
    if isinstance(value, bool):
        raise VlabError("must be a size such as 512M or 1G", field=field_name, value=value, fix='mem = "512M"')
    if isinstance(value, int):
        mib = float(value)
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise VlabError(
                "is not a size: write a number with an optional unit K, M, G or T",
                field=field_name, value=value, fix=f'{field_name} = "512M" (or "1G")',
            )
        mib = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if mib <= 0:
        raise VlabError("must be positive", field=field_name, value=value, fix=f'{field_name} = "512M"')
    if mib != int(mib):
        raise VlabError("must be a whole number of MiB", field=field_name, value=value, fix="round it, e.g. 512M")
    return int(mib)


def _default_image(name: str, function: str) -> Path:
    """Ask :mod:`vlab.images` for a built guest file; fall back to the cache path if it has no answer."""
    try:
        import vlab.images as images
    except ModuleNotFoundError:  # pragma: no cover - the images sub-package is part of vlab
        images = None  # type: ignore[assignment]
    getter = getattr(images, function, None)
    if getter is not None:
        return Path(getter())
    from vlab.paths import images_dir

    path = images_dir() / name
    if not path.is_file():
        raise VlabError("the default guest image is not built", field=name, value=str(path), fix=_IMAGES_FIX)
    return path


def default_kernel() -> Path:
    """The built guest kernel (``vmlinuz`` in :func:`vlab.paths.images_dir`)."""
    return _default_image("vmlinuz", "default_kernel")


def default_initrd() -> Path:
    """The built busybox initramfs (``initramfs.cpio.gz`` in :func:`vlab.paths.images_dir`)."""
    return _default_image("initramfs.cpio.gz", "default_initrd")


def _host_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _host_available_mib() -> int:
    """MemAvailable from /proc/meminfo, in MiB (what QEMU can really get without swapping)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // (1024 * 1024)  # pragma: no cover


@dataclass(frozen=True)
class Disk:
    """A virtio block device.

    :param path: the image file on the host.
    :param overlay: if True the VM writes to a throwaway qcow2 overlay whose read-only backing file is
        ``path``, so the image itself is never modified. Default: True for plain images, False for
        encrypted ones (the guest writes through to the LUKS image, so its ciphertext can be inspected).
    :param secret: the LUKS passphrase of an encrypted qcow2 (see :func:`vlab.qemu.disks.create_image`);
        QEMU receives it through a ``secret`` object read from a private file.
    :param readonly: present the disk read-only to the guest.
    """

    path: Path
    overlay: bool | None = None
    secret: str | None = None
    readonly: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).expanduser())
        if self.overlay is None:
            object.__setattr__(self, "overlay", self.secret is None)
        elif self.overlay and self.secret is not None:
            raise VlabError("an encrypted disk cannot have a plain overlay", field="disks.overlay", value=True,
                            fix="Disk(path, secret=..., overlay=False)")
        if not self.path.is_file():
            raise VlabError(
                "disk image does not exist", field="disks", value=str(self.path),
                fix="create one with vlab.qemu.disks.create_image(path, '64M')",
            )

    @property
    def format(self) -> str:
        """``qcow2`` or ``raw``, read from the file's magic bytes (never guessed from the name)."""
        with open(self.path, "rb") as image:
            return "qcow2" if image.read(4) == b"QFI\xfb" else "raw"


@dataclass(frozen=True)
class Nic:
    """A virtio-net NIC.

    :param mode: ``"user"`` (QEMU's slirp NAT: no privileges, works on Binder) or ``"bridge"``
        (a tap on a vlab-managed bridge inside a network namespace; needs root).
    :param bridge: the bridge name for ``mode="bridge"``; VMs on the same bridge reach each other.
    :param ip: ``ADDR/PREFIX`` the guest's init gives this NIC (``vlab.ipN=`` on the kernel command line).
    :param mac: the MAC address; derived from the VM name and NIC index when None.
    """

    mode: Literal["user", "bridge"] = "user"
    bridge: str | None = None
    ip: str | None = None
    mac: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("user", "bridge"):
            raise VlabError("NIC mode must be 'user' or 'bridge'", field="nics.mode", value=self.mode,
                            fix='Nic(mode="user")')
        if self.mode == "bridge" and not (self.bridge and re.fullmatch(r"[a-z0-9]{1,8}", self.bridge)):
            raise VlabError("a bridge NIC needs a bridge name of 1-8 lowercase letters/digits",
                            field="nics.bridge", value=self.bridge, fix='Nic(mode="bridge", bridge="lab")')
        if self.ip is not None and not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2}", self.ip):
            raise VlabError("must be ADDR/PREFIX", field="nics.ip", value=self.ip, fix='ip="10.0.0.1/24"')
        if self.mac is not None and not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", self.mac):
            raise VlabError("must be six lowercase hex pairs", field="nics.mac", value=self.mac,
                            fix='mac="52:54:00:12:34:56"')


@dataclass(frozen=True)
class LaunchIO:
    """How a launched QEMU talks to vlab: inherited fds for QMP and the serial console.

    :param qmp_fd: a connected socket fd carrying QMP for the ``qemu.qmp`` client (``-chardev socket,fd=…``).
    :param console_fd: a connected socket fd carrying ttyS0.
    :param qmp_sync_fd: a second QMP monitor, for vlab's direct synchronous calls (None: none).
    :param disk_paths: per disk, the file QEMU opens (the overlay when the disk has one).
    :param secret_files: per disk, the file holding its LUKS passphrase (None if not encrypted).
    :param nic_fds: per NIC, the tap fd for bridge NICs (None for user-mode NICs).
    :param incoming: a migration URI to wait on (``-incoming``), or None.
    """

    qmp_fd: int
    console_fd: int
    disk_paths: Sequence[Path] = ()
    secret_files: Sequence[Path | None] = ()
    nic_fds: Sequence[int | None] = ()
    incoming: str | None = None
    qmp_sync_fd: int | None = None


# vm.conf keys as textbooks print them -> VMConfig fields
_CONF_KEYS = {
    "name": "name", "kernel": "kernel", "initrd": "initrd", "appended": "append", "append": "append",
    "root": "root", "mem": "mem", "memory": "mem", "vcpus": "vcpus", "accel": "accel", "machine": "machine",
    "balloon": "balloon",
}


@dataclass(frozen=True)
class VMConfig:
    """A validated description of a VM. ``VMConfig()`` is the built default vlab guest.

    :param name: a short name (letters, digits, ``_.-``), shown by QEMU and used for MAC addresses.
    :param kernel: the kernel image; None means the built default (:func:`default_kernel`).
    :param initrd: the initramfs; None means the built default (:func:`default_initrd`).
    :param append: the kernel command line (``appended`` in vm.conf). ``console=ttyS0`` is added if absent,
        because vlab reads the guest through its first serial port.
    :param root: the root device (``root=`` on the kernel command line), or None.
    :param mem: guest memory in MiB (strings with units are accepted: ``"512M"``, ``"1G"``).
    :param vcpus: number of virtual CPUs (at most the host's CPUs).
    :param accel: ``"auto"`` (hardware KVM only where it really works, else TCG), ``"tcg"`` or ``"kvm"``.
    :param machine: ``"pc"`` (i440FX) or ``"q35"``; both give PCI virtio devices and ACPI.
    :param disks: virtio block devices.
    :param nics: virtio-net NICs.
    :param balloon: add a virtio-balloon device.
    :param cpu: the ``-cpu`` model, or None for QEMU's default.
    :param extra_args: extra QEMU arguments appended verbatim (e.g. ``["-device", "virtio-rng-pci"]``).
    """

    name: str = "vlab"
    kernel: Path | None = None
    initrd: Path | None = None
    # no_timer_check: under host load TCG can be slow enough for the kernel's IO-APIC timer check to fail and
    # panic ("IO-APIC + timer doesn't work"), seen with several guests booting at once on 2 cores.
    append: str = "console=ttyS0 quiet panic=-1 no_timer_check"
    root: str | None = None
    mem: int = 256
    vcpus: int = 1
    accel: AccelName = "auto"
    machine: str = "pc"
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    balloon: bool = True
    cpu: str | None = None
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, then never again
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise VlabError("name must be 1-32 letters, digits, '_', '.' or '-'", field="name", value=self.name,
                            fix='name = "vm1"')
        set_(self, "kernel", self._existing_file("kernel", self.kernel, default_kernel))
        set_(self, "initrd", self._existing_file("initrd", self.initrd, default_initrd))
        set_(self, "mem", self._checked_mem(self.mem))
        set_(self, "vcpus", self._checked_vcpus(self.vcpus))
        if self.accel not in ("auto", "tcg", "kvm"):
            raise VlabError("accel must be auto, tcg or kvm", field="accel", value=self.accel, fix='accel = "auto"')
        if self.machine not in _MACHINES:
            raise VlabError("machine must be pc or q35 (labs need PCI virtio devices and ACPI)",
                            field="machine", value=self.machine, fix='machine = "pc"')
        if not isinstance(self.append, str) or "\n" in self.append:
            raise VlabError("the kernel command line must be one line of text", field="append",
                            value=self.append, fix='appended = "console=ttyS0"')
        if self.root is not None and (not self.root or any(c.isspace() for c in self.root)):
            raise VlabError("root must be a device name without spaces", field="root", value=self.root,
                            fix='root = "/dev/sda1"')
        set_(self, "disks", tuple(d if isinstance(d, Disk) else Disk(Path(d)) for d in self.disks))
        set_(self, "nics", tuple(self.nics))
        set_(self, "extra_args", tuple(str(a) for a in self.extra_args))
        set_(self, "balloon", bool(self.balloon))

    # -- validation helpers -------------------------------------------------------------------------

    @staticmethod
    def _existing_file(key: str, value: Path | str | None, default: Any) -> Path:
        if value is None:
            return Path(default())
        path = Path(value).expanduser()
        if not path.is_file():
            raise VlabError(
                f"the {key} file does not exist", field=key, value=str(path),
                fix=f"point {key} at a real file, e.g. {key}=vlab.qemu.default_{key}() ({_IMAGES_FIX})",
            )
        return path

    @staticmethod
    def _checked_mem(value: int | str) -> int:
        mib = parse_size_mib(value, field_name="mem")
        if mib < 32:
            raise VlabError("is too small for a Linux guest (minimum 32M)", field="mem", value=value,
                            fix='mem = "256M"')
        available = _host_available_mib()
        if mib > available:
            raise VlabError(f"is more memory than the host can give ({available} MiB available)",
                            field="mem", value=value, fix=f'mem = "{min(256, available // 2)}M"')
        return mib

    @staticmethod
    def _checked_vcpus(value: int | str) -> int:
        try:
            count = int(str(value).strip())
        except ValueError:
            raise VlabError("vcpus must be a whole number", field="vcpus", value=value, fix='vcpus = "1"') from None
        if isinstance(value, bool) or count < 1:
            raise VlabError("a VM needs at least one vCPU", field="vcpus", value=value, fix='vcpus = "1"')
        host = _host_cpus()
        if count > host:
            raise VlabError(f"is more vCPUs than the host has CPUs ({host})", field="vcpus", value=value,
                            fix=f'vcpus = "{host}"')
        return count

    # -- vm.conf ------------------------------------------------------------------------------------

    @classmethod
    def from_conf(cls, source: str | os.PathLike[str], **overrides: Any) -> VMConfig:
        """Read the classic ``vm.conf`` (a path or the text itself), e.g.::

            kernel = "/boot/vmlinuz"
            initrd = "/boot/initrd.img"
            appended = "console=ttyS0"
            root = "/dev/sda1"
            mem = "512M"
            vcpus = "1"

        ``#`` starts a comment; values may be double-quoted, single-quoted or bare. ``overrides`` replace
        keys after parsing, e.g. ``from_conf(text, kernel=vlab.qemu.default_kernel())`` to boot a textbook
        file with the built guest.

        :raises VlabError: on a malformed line, an unknown or repeated key, or an invalid value.
        """
        text, origin = cls._read_conf_source(source)
        values: dict[str, Any] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            parsed = _parse_conf_line(raw, number, origin)
            if parsed is None:
                continue
            key, value = parsed
            target = _CONF_KEYS[key]
            if target in values:
                raise VlabError(f"is set twice (again on line {number} of {origin})", field=key, value=value,
                                fix="keep one line per key")
            values[target] = value
        if "balloon" in values:
            values["balloon"] = _parse_bool("balloon", values["balloon"])
        values.update(overrides)
        return cls(**values)

    @staticmethod
    def _read_conf_source(source: str | os.PathLike[str]) -> tuple[str, str]:
        if isinstance(source, str) and ("\n" in source or "=" in source):
            return source, "the vm.conf text"
        path = Path(source).expanduser()
        if not path.is_file():
            raise VlabError("vm.conf file not found", field="conf", value=str(path),
                            fix="pass the path of an existing vm.conf, or its text")
        return path.read_text(), str(path)

    # -- argv ---------------------------------------------------------------------------------------

    def replace(self, **changes: Any) -> VMConfig:
        """A copy with some fields changed (and validated again)."""
        return replace(self, **changes)

    def kernel_cmdline(self) -> str:
        """The kernel command line: ``append`` + ``root=`` + ``console=ttyS0`` + the NICs' ``vlab.ipN=``."""
        words = self.append.split()
        if not any(w.startswith("console=ttyS0") for w in words):
            words.insert(0, "console=ttyS0")
        if self.root and not any(w.startswith("root=") for w in words):
            words.append(f"root={self.root}")
        if not any(w.startswith("vlab.hostname=") for w in words):
            words.append(f"vlab.hostname={self.name}")
        words += [f"vlab.ip{i}={nic.ip}" for i, nic in enumerate(self.nics) if nic.ip]
        return " ".join(words)

    def mac_address(self, index: int) -> str:
        """The MAC of NIC ``index``: explicit, or a stable locally administered one derived from the name."""
        nic = self.nics[index]
        if nic.mac:
            return nic.mac
        digest = sum((i + 1) * ord(c) for i, c in enumerate(self.name)) & 0xFFFF
        return f"52:54:00:{digest >> 8:02x}:{digest & 0xFF:02x}:{index:02x}"

    def qemu_argv(self, io: LaunchIO | None = None, *, accel: str | None = None) -> list[str]:
        """The exact QEMU command line for this config.

        Without ``io`` it is a command a student can paste into a terminal (console and QEMU monitor on
        stdio, like ``-nographic``; disks shown as their own files). :class:`~vlab.qemu.vm.VM` passes ``io``
        to put QMP and the console on inherited sockets instead.

        :param accel: ``"tcg"`` or ``"kvm"``; defaults to the config's accel, with ``auto`` shown as tcg
            (the VM resolves ``auto`` with the host probe before launching).
        """
        chosen = accel or ("tcg" if self.accel == "auto" else self.accel)
        # debug-threads=on names the vCPU threads ("CPU 0/TCG"), so `top -H` and /proc show which is which.
        argv = [QEMU_BINARY, "-name", f"{self.name},debug-threads=on", "-M", self.machine, "-accel", chosen]
        if self.cpu:
            argv += ["-cpu", self.cpu]
        argv += ["-m", str(self.mem), "-smp", str(self.vcpus)]
        argv += ["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none"]
        argv += ["-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.kernel_cmdline()]
        argv += self._io_args(io)
        argv += self._disk_args(io)
        argv += self._nic_args(io)
        if self.balloon:
            argv += ["-device", "virtio-balloon-pci,id=balloon0"]
        if io is not None and io.incoming:
            argv += ["-incoming", io.incoming]
        return argv + list(self.extra_args)

    def shell_command(self) -> str:
        """:meth:`qemu_argv` as one shell-quoted line."""
        return shlex.join(self.qemu_argv())

    @staticmethod
    def _io_args(io: LaunchIO | None) -> list[str]:
        if io is None:
            return ["-serial", "mon:stdio"]
        argv = ["-chardev", f"socket,id=qmp,fd={io.qmp_fd}", "-mon", "chardev=qmp,mode=control"]
        if io.qmp_sync_fd is not None:
            argv += ["-chardev", f"socket,id=qmp-sync,fd={io.qmp_sync_fd}", "-mon", "chardev=qmp-sync,mode=control"]
        return [*argv, "-chardev", f"socket,id=console,fd={io.console_fd}", "-serial", "chardev:console"]

    def _disk_args(self, io: LaunchIO | None) -> list[str]:
        argv: list[str] = []
        for i, disk in enumerate(self.disks):
            path = io.disk_paths[i] if io and io.disk_paths else disk.path
            secret_file = io.secret_files[i] if io and io.secret_files else None
            fmt = "qcow2" if (io and disk.overlay) else disk.format
            node = f"driver={fmt},node-name=disk{i},file.driver=file,file.filename={path}"
            if disk.secret is not None:
                secret = secret_file if secret_file is not None else Path(f"<passphrase-file-{i}>")
                argv += ["-object", f"secret,id=sec{i},file={secret}"]
                node += f",encrypt.format=luks,encrypt.key-secret=sec{i}"
            if disk.readonly:
                node += ",read-only=on"
            argv += ["-blockdev", node, "-device", f"virtio-blk-pci,drive=disk{i},id=vd{i}"]
        return argv

    def _nic_args(self, io: LaunchIO | None) -> list[str]:
        argv: list[str] = []
        for i, nic in enumerate(self.nics):
            if nic.mode == "user":
                netdev = f"user,id=net{i}"
            else:
                fd = io.nic_fds[i] if io and io.nic_fds else None
                netdev = f"tap,id=net{i},fd={fd}" if fd is not None else f"tap,id=net{i},ifname=<tap-on-{nic.bridge}>"
            argv += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net{i},mac={self.mac_address(i)}"]
        return argv


def _parse_conf_line(raw: str, number: int, origin: str) -> tuple[str, str] | None:
    """One ``key = value`` line -> (key, value); None for blank and comment lines."""
    line = _strip_comment(raw).strip()
    if not line:
        return None
    where = f"line {number} of {origin}"
    key, sep, value = line.partition("=")
    key = key.strip().lower()
    if not sep or not key:
        raise VlabError(f"malformed line ({where}): expected key = \"value\"", field="vm.conf", value=raw.strip(),
                        fix='write each setting as key = "value", e.g. mem = "512M"')
    if key not in _CONF_KEYS:
        known = ", ".join(sorted(set(_CONF_KEYS)))
        raise VlabError(f"unknown key ({where})", field=key, value=value.strip(), fix=f"use one of: {known}")
    return key, _unquote(key, value.strip(), where)


def _strip_comment(raw: str) -> str:
    """Drop a ``#`` comment that is not inside quotes."""
    quote = ""
    for i, char in enumerate(raw):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#":
            return raw[:i]
    return raw


def _unquote(key: str, value: str, where: str) -> str:
    if value[:1] in ("'", '"'):
        if len(value) < 2 or value[-1] != value[0]:
            raise VlabError(f"unterminated quote ({where})", field=key, value=value,
                            fix=f'close the quote: {key} = "…"')
        return value[1:-1]
    if not value:
        raise VlabError(f"has no value ({where})", field=key, value=value, fix=f'{key} = "…"')
    return value


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise VlabError("must be yes or no", field=key, value=value, fix=f'{key} = "yes"')

