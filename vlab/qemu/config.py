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

import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from vlab.errors import VlabError
from vlab.host import procfs
from vlab.images import default_initrd, default_kernel  # re-exported: what VMConfig() boots
from vlab.images.build import PVH_KERNEL_NAME
from vlab.qemu.fields import (
    MAX_PATH_BYTES,
    check_bool,
    check_file,
    check_int,
    check_passphrase,
    check_text,
    check_token,
    shown,
)

__all__ = [
    "READY_MARKER",
    "QEMU_BINARY",
    "BASE_FLAGS",
    "MICROVM_MACHINE",
    "host_tsc_khz",
    "pvh_kernel",
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
#: The id of the ``-object`` holding guest RAM (``-M …,memory-backend=ram0``).
RAM_BACKEND_ID = "ram0"
#: The id of the virtio-balloon device.
BALLOON_ID = "balloon0"

AccelName = Literal["auto", "tcg", "kvm"]
_MACHINES = ("auto", "pc", "q35", "microvm")
#: What -M microvm is given: no PCI (virtio-mmio instead), the ISA serial port for ttyS0, the RTC that
#: VM.guest_clock reads, ACPI (the guest finds its virtio-mmio devices and the power button there, so
#: system_powerdown works), the PIT (legacy timer interrupts), no PIC. Firmware: qboot, QEMU's default for it.
MICROVM_MACHINE = "microvm,pcie=off,acpi=on,rtc=on,isa-serial=on,pit=on,pic=off"
#: per machine kind: the virtio transport's suffix of QEMU device names
_VIRTIO_SUFFIX = {"pc": "-pci", "q35": "-pci", "microvm": "-device"}
_UNITS = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
#: x86 Linux's COMMAND_LINE_SIZE (bytes, with the final NUL): a longer command line is cut and the guest hangs.
MAX_CMDLINE = 2048
_MAX_DEVICES = 8
_MAX_CONF_BYTES = 64 * 1024
#: extra_args options allowed under VLAB_DENY_OUTBOUND, with the values they may take
_DENY_MODE_EXTRA = {"-qmp": r"unix:/[A-Za-z0-9/_.-]+,server=on,wait=off", "-device": r"virtio-rng-pci",
                    "-rtc": r"[a-z=,]+"}
_IMAGES_FIX = "build the guest images with: vlab images build"
#: What every VM vlab launches gets (VMConfig.qemu_argv, and VM.from_argv for a student's command line): no
#: default devices or config files, no reboot, no screen; the RTC follows the VM's own clock, so it stands still
#: while the VM is paused (VM.guest_clock() reads it; the panel shows a pause as the guest falling behind).
BASE_FLAGS = ("-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-rtc", "base=utc,clock=vm")


def parse_size_mib(value: str | int, *, field_name: str = "mem") -> int:
    """Parse a memory size as people write it (``512``, ``"512M"``, ``"1G"``, ``"2GiB"``) into MiB.

    A bare number means MiB, as in QEMU's ``-m``.

    :raises VlabError: for anything that is not a positive whole number of MiB.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise VlabError(f"must be a size such as 512M or 1G, not {type(value).__name__}", field=field_name,
                        value=shown(value), fix=f'{field_name} = "512M"')
    if isinstance(value, int):
        if abs(value) > 1 << 40:
            raise VlabError("is far too large", field=field_name, value=shown(value), fix=f'{field_name} = "512M"')
        mib = float(value)
    else:
        match = _SIZE_RE.match(value) if len(value) <= 32 else None
        if not match:
            raise VlabError(
                "is not a size: write a number with an optional unit K, M, G or T",
                field=field_name, value=shown(value), fix=f'{field_name} = "512M" (or "1G")',
            )
        mib = float(match.group(1)) * _UNITS[match.group(2).upper()]
        if mib > 1 << 40:
            raise VlabError("is far too large", field=field_name, value=shown(value), fix=f'{field_name} = "512M"')
    if mib <= 0:
        raise VlabError("must be positive", field=field_name, value=value, fix=f'{field_name} = "512M"')
    if mib != int(mib):
        raise VlabError("must be a whole number of MiB", field=field_name, value=value, fix="round it, e.g. 512M")
    return int(mib)


_TSC_LOG_RE = re.compile(r"tsc: (?:Refined TSC clocksource calibration|Detected) ([0-9]+\.[0-9]+) MHz")


@functools.cache
def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz, or None when it cannot be known for sure.

    A TCG guest's TSC is the host's (QEMU answers ``rdtsc`` with the host's counter), so a microvm guest is
    told this rate (``tsc_early_khz=``) instead of calibrating it. Sources, in order: the kernel log's
    ``tsc: Refined TSC clocksource calibration`` / ``tsc: Detected … MHz`` line (``/dev/kmsg``, readable by
    root, may have rotated away), then ``/proc/cpuinfo``'s ``cpu MHz`` but only when the kernel says the TSC
    rate is known and constant (``tsc_known_freq``, ``constant_tsc``) and nothing measures the current clock
    instead (no ``aperfmperf``, no cpufreq driver): then that line *is* the TSC rate the kernel was given.
    """
    found: list[float] = []
    with contextlib.suppress(OSError):
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        try:
            for _ in range(100_000):  # one record per read, until the ring is drained (EAGAIN)
                try:
                    record = os.read(fd, 8192)
                except BlockingIOError:
                    break
                except OSError:  # EPIPE: a record was overwritten while reading; the next read continues
                    continue
                if not record:
                    break
                match = _TSC_LOG_RE.search(record.decode(errors="replace"))
                if match:
                    found.append(float(match.group(1)))
        finally:
            os.close(fd)
    if found:
        return round(found[-1] * 1000)  # the refined value comes after the first estimate
    with contextlib.suppress(OSError, ValueError):
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
        if {"tsc_known_freq", "constant_tsc"} <= flags and "aperfmperf" not in flags \
                and not Path("/sys/devices/system/cpu/cpufreq/policy0").exists():
            mhz = next(line for line in text.splitlines() if line.startswith("cpu MHz")).split(":", 1)[1]
            return round(float(mhz) * 1000)
    return None


def pvh_kernel(kernel: Path) -> Path | None:
    """The PVH-entry ELF of ``kernel`` when the same image build made both (its manifest lists both), else None."""
    from vlab.images.manifest import Manifest  # the manifest says the two files are one build's

    elf = kernel.parent / PVH_KERNEL_NAME
    with contextlib.suppress(OSError, ValueError):
        manifest = Manifest.load(kernel.parent)
        if manifest is not None and kernel.name in manifest.files and PVH_KERNEL_NAME in manifest.files \
                and kernel.name != PVH_KERNEL_NAME and elf.is_file() and not elf.is_symlink():
            return elf
    return None


def _host_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _host_available_mib() -> int:
    """MemAvailable from /proc/meminfo, in MiB (what QEMU can really get without swapping)."""
    kib = procfs.meminfo_kib("MemAvailable")
    if kib is None:  # pragma: no cover - every Linux since 3.14 has it
        return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // (1024 * 1024)
    return kib // 1024


_ON_ERROR = ("stop", "report", "ignore", "enospc")
#: Set by the grader: no VM in this process may reach anything outside its own user-mode network.
DENY_OUTBOUND_ENV = "VLAB_DENY_OUTBOUND"
_MAX_FORWARDS = 16


def outbound_denied() -> bool:
    """True when ``VLAB_DENY_OUTBOUND=1``: ``Nic(outbound=True)`` and raw network options are refused."""
    return os.environ.get(DENY_OUTBOUND_ENV, "") not in ("", "0")


@dataclass(frozen=True)
class Disk:
    """A virtio block device.

    :param path: the image file on the host (made absolute; a symlink is refused, see
        :func:`vlab.qemu.fields.check_file`).
    :param overlay: if True the VM writes to a throwaway qcow2 overlay whose read-only backing file is
        ``path``, so the image itself is never modified. Default: True for plain images, False for
        encrypted ones (the guest writes through to the LUKS image, so its ciphertext can be inspected).
    :param secret: the LUKS passphrase of an encrypted qcow2: any ``bytes`` (NUL, newlines, not UTF-8…) or
        ``str`` (see :func:`vlab.qemu.disks.luks_passphrase`). QEMU reads it from a mode-0600 memfd it
        inherits (:func:`vlab.qemu.disks.secret_fd`), never from a command line or a named file; ``repr``
        leaves it out.
    :param readonly: present the disk read-only to the guest.
    :param on_error: what QEMU does when a guest write or read fails on the host (disk full…): ``"stop"``
        (default: the VM pauses and :attr:`vlab.VM.pause_reason` says why), ``"report"`` (the guest gets an
        I/O error), ``"ignore"`` or ``"enospc"`` (stop only when the host disk is full).
    """

    path: Path
    overlay: bool | None = None
    secret: str | bytes | None = field(default=None, repr=False)
    readonly: bool = False
    on_error: str = "stop"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", check_file(
            "disks.path", self.path, "an existing image, e.g. vlab.qemu.disks.create_image(path, '64M')"))
        if self.secret is not None:
            check_passphrase("disks.secret", self.secret)
        if self.overlay is None:
            object.__setattr__(self, "overlay", self.secret is None)
        check_bool("disks.overlay", self.overlay, "Disk(path, overlay=False)")
        if self.overlay and self.secret is not None:
            raise VlabError("an encrypted disk cannot have a plain overlay", field="disks.overlay", value=True,
                            fix="Disk(path, secret=..., overlay=False)")
        check_bool("disks.readonly", self.readonly, "Disk(path, readonly=True)")
        if self.on_error not in _ON_ERROR:
            raise VlabError(f"must be one of {', '.join(_ON_ERROR)}", field="disks.on_error",
                            value=shown(self.on_error), fix='Disk(path, on_error="stop")')

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
    :param mac: a unicast MAC address; when None vlab picks one that no other VM of this process uses.
    :param outbound: user-mode only. False (default): QEMU's ``restrict=on`` — the guest reaches nothing
        outside its virtual network: not the host's services (``127.0.0.1`` through the gateway), not the
        internet; the gateway still answers pings and ``forwards`` still work. True: the guest may open
        connections to the host and beyond. Refused when ``VLAB_DENY_OUTBOUND=1`` (the grader sets it).
    :param forwards: user-mode only: ``(host_port, guest_port)`` TCP pairs; the host's ``127.0.0.1:host_port``
        reaches the guest's ``guest_port`` (host port 0: QEMU picks a free one).
    """

    mode: Literal["user", "bridge"] = "user"
    bridge: str | None = None
    ip: str | None = None
    mac: str | None = None
    outbound: bool = False
    forwards: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("user", "bridge"):
            raise VlabError("NIC mode must be 'user' or 'bridge'", field="nics.mode", value=shown(self.mode),
                            fix='Nic(mode="user")')
        if self.mode == "bridge" and self.bridge is None:
            raise VlabError("a bridge NIC needs a bridge name", field="nics.bridge", value=None,
                            fix='Nic(mode="bridge", bridge="lab")')
        if self.mode == "bridge":
            check_token("nics.bridge", self.bridge, r"[a-z0-9]{1,8}",
                        "a bridge name of 1-8 lowercase letters or digits", 'Nic(mode="bridge", bridge="lab")')
        elif self.bridge is not None:
            raise VlabError("only a bridge NIC has a bridge", field="nics.bridge", value=shown(self.bridge),
                            fix='Nic(mode="bridge", bridge="lab")')
        if self.ip is not None:
            object.__setattr__(self, "ip", _checked_ip(self.ip))
        if self.mac is not None:
            object.__setattr__(self, "mac", _checked_mac(self.mac))
        check_bool("nics.outbound", self.outbound, "Nic(outbound=False)")
        if self.outbound and self.mode != "user":
            raise VlabError("outbound applies to user-mode NICs only", field="nics.outbound", value=True,
                            fix='Nic(mode="user", outbound=True)')
        if self.outbound and outbound_denied():
            raise VlabError(f"outbound network access is disabled here ({DENY_OUTBOUND_ENV}=1, e.g. by the grader)",
                            field="nics.outbound", value=True, fix="Nic() without outbound=True")
        object.__setattr__(self, "forwards", _checked_forwards(self.mode, self.forwards))


def _checked_ip(value: Any) -> str:
    fix = 'ip="10.0.2.15/24"'
    check_text("nics.ip", value, max_len=18, fix=fix, allow_space=False)
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise VlabError(f"is not an IPv4 ADDR/PREFIX ({exc})", field="nics.ip", value=shown(value), fix=fix) from None
    if "/" not in value or not 1 <= iface.network.prefixlen <= 30:
        raise VlabError("must be ADDR/PREFIX, with a prefix between /1 and /30", field="nics.ip", value=value, fix=fix)
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address) or iface.ip.is_multicast \
            or iface.ip.is_unspecified or iface.ip.is_loopback:
        raise VlabError("is not a host address of its network", field="nics.ip", value=value, fix=fix)
    return str(iface)


def _checked_mac(value: Any) -> str:
    fix = 'mac="52:54:00:12:34:56" (or leave it out: vlab picks one)'
    mac = check_token("nics.mac", value, r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", "six hex pairs separated by ':'",
                      fix).lower()
    if int(mac[:2], 16) & 1:
        raise VlabError("is a multicast or broadcast address, not one NIC's", field="nics.mac", value=value, fix=fix)
    if mac == "00:00:00:00:00:00":
        raise VlabError("is the all-zero address", field="nics.mac", value=value, fix=fix)
    return mac


def _checked_forwards(mode: str, value: Any) -> tuple[tuple[int, int], ...]:
    fix = "forwards=((2222, 22),)"
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_FORWARDS:
        raise VlabError(f"must be a tuple of at most {_MAX_FORWARDS} (host_port, guest_port) pairs",
                        field="nics.forwards", value=shown(value), fix=fix)
    if value and mode != "user":
        raise VlabError("port forwards apply to user-mode NICs only", field="nics.forwards", value=shown(value),
                        fix='Nic(mode="user", forwards=((2222, 22),))')
    pairs = []
    for pair in value:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise VlabError("each forward is a (host_port, guest_port) pair", field="nics.forwards",
                            value=shown(pair), fix=fix)
        pairs.append((check_int("nics.forwards.host_port", pair[0], 0, 65535, fix),
                      check_int("nics.forwards.guest_port", pair[1], 1, 65535, fix)))
    return tuple(pairs)


@dataclass(frozen=True)
class LaunchIO:
    """How a launched QEMU talks to vlab: inherited fds for QMP and the serial console.

    :param qmp_fd: a connected socket fd carrying QMP for the ``qemu.qmp`` client (``-chardev socket,fd=…``).
    :param console_fd: a connected socket fd carrying ttyS0.
    :param qmp_sync_fd: a second QMP monitor, for vlab's direct synchronous calls (None: none).
    :param disk_paths: per disk, the file QEMU opens (the overlay when the disk has one).
    :param secret_files: per disk, where QEMU reads its LUKS passphrase (``/proc/self/fd/N`` of an inherited
        memfd; None if not encrypted).
    :param nic_fds: per NIC, the tap fd for bridge NICs (None for user-mode NICs).
    :param incoming: a migration URI to wait on (``-incoming``), or None.
    :param macs: per NIC, the MAC the VM claimed (empty: :meth:`VMConfig.mac_address`).
    :param memory_backend: the ``-object`` holding guest RAM instead of :meth:`VMConfig.memory_backend`
        (a snapshot template maps a file here; see :mod:`vlab.qemu.template`).
    :param pci_slots: device id -> PCI slot, for devices that must sit where another QEMU put them (a
        migration destination of a VM whose devices were hot-plugged after a restore).
    :param paused: start with the vCPUs stopped (``-S``).
    :param raw_qmp_path: a UNIX socket path for a spare QMP monitor that QEMU listens on, for someone to speak
        the protocol themselves (:meth:`vlab.VM.raw_qmp`); None: none.
    """

    qmp_fd: int
    console_fd: int
    disk_paths: Sequence[Path] = ()
    secret_files: Sequence[Path | None] = ()
    nic_fds: Sequence[int | None] = ()
    incoming: str | None = None
    qmp_sync_fd: int | None = None
    macs: Sequence[str] = ()
    memory_backend: Mapping[str, Any] | None = None
    pci_slots: Mapping[str, int] = field(default_factory=dict)
    paused: bool = False
    raw_qmp_path: Path | None = None


# vm.conf keys as textbooks print them -> VMConfig fields
_CONF_KEYS = {
    "name": "name", "kernel": "kernel", "initrd": "initrd", "appended": "append", "append": "append",
    "root": "root", "mem": "mem", "memory": "mem", "vcpus": "vcpus", "accel": "accel", "machine": "machine",
    "balloon": "balloon", "cold_boot": "cold_boot",
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
    :param machine: ``"auto"`` (default), ``"pc"`` (i440FX), ``"q35"`` or ``"microvm"``. ``pc`` and ``q35``
        give PCI virtio devices; ``microvm`` (no PCI: virtio-mmio devices, the kernel entered through its PVH
        entry when the image has one) boots in about 0.8x the time. ``auto`` is ``microvm`` for a cold boot whose
        devices all exist there (any disks, NICs and the balloon do; ``extra_args`` may name PCI devices, so
        they mean ``pc``) on a host whose TSC rate is known (:func:`host_tsc_khz`), else ``pc``; a VM restored
        from a snapshot template is always ``pc`` (its disks and NICs are hot-plugged over PCI).
        :meth:`boot_machine` says which.
    :param disks: virtio block devices.
    :param nics: virtio-net NICs.
    :param balloon: add a virtio-balloon device.
    :param cpu: the ``-cpu`` model, or None for QEMU's default.
    :param extra_args: extra QEMU arguments appended verbatim (e.g. ``["-device", "virtio-rng-pci"]``).
    :param cold_boot: always boot the kernel, never restore a snapshot template (see :meth:`vlab.VM.start`).
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
    machine: str = "auto"
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    balloon: bool = True
    cpu: str | None = None
    extra_args: tuple[str, ...] = field(default=())
    cold_boot: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, then never again
        check_token("name", self.name, _NAME_RE.pattern, "1-32 letters, digits, '_', '.' or '-' (first a letter "
                    "or digit)", 'name = "vm1"')
        set_(self, "kernel", self._existing_file("kernel", self.kernel, default_kernel))
        set_(self, "initrd", self._existing_file("initrd", self.initrd, default_initrd))
        set_(self, "mem", self._checked_mem(self.mem))
        set_(self, "vcpus", self._checked_vcpus(self.vcpus))
        if self.accel not in ("auto", "tcg", "kvm"):
            raise VlabError("accel must be auto, tcg or kvm", field="accel", value=shown(self.accel),
                            fix='accel = "auto"')
        if self.machine not in _MACHINES:
            raise VlabError("machine must be auto, pc, q35 or microvm", field="machine",
                            value=shown(self.machine), fix='machine = "auto" (or "pc")')
        check_text("append", self.append, max_len=MAX_CMDLINE - 1, fix='appended = "console=ttyS0"',
                   allow_empty=True)
        if self.append.count('"') % 2:
            # the kernel reads a quote as the start of a value running on to the next quote: it would swallow
            # the words vlab appends (vlab.hostname=, vlab.ipN=)
            raise VlabError("has an unbalanced double quote", field="append", value=shown(self.append),
                            fix='close the quote, e.g. appended = \'console=ttyS0 opt="a b"\'')
        if self.root is not None:
            check_token("root", self.root, r"[A-Za-z0-9/_.:=-]{1,128}",
                        "a device name without spaces (letters, digits, '/_.:=-')", 'root = "/dev/sda1"')
        set_(self, "disks", self._checked_items("disks", self.disks, Disk, "(Disk(path),)"))
        set_(self, "nics", self._checked_items("nics", self.nics, Nic, '(Nic("user"),)'))
        macs = [nic.mac for nic in self.nics if nic.mac]
        if len(set(macs)) != len(macs):
            raise VlabError("two NICs of one VM have the same MAC", field="nics.mac", value=shown(macs),
                            fix="give each NIC its own mac, or leave mac out")
        set_(self, "extra_args", self._checked_extra_args(self.extra_args))
        check_bool("balloon", self.balloon, "balloon = True")
        check_bool("cold_boot", self.cold_boot, "cold_boot = True")
        if self.cpu is not None:
            check_token("cpu", self.cpu, r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a QEMU CPU model name (e.g. max, "
                        "qemu64, host) without options", 'cpu = "max"')
        if self.machine == "microvm":
            self._check_microvm()
        cmdline = self.kernel_cmdline()
        if len(cmdline.encode()) > MAX_CMDLINE - 1:
            raise VlabError(f"the kernel command line would be {len(cmdline.encode())} bytes; x86 Linux takes at "
                            f"most {MAX_CMDLINE - 1} (a longer one never boots)", field="append",
                            value=shown(self.append), fix="shorten appended")

    def _check_microvm(self) -> None:
        """Refuse what cannot work on ``-M microvm`` (no PCI bus, no PCI hot-plug)."""
        for option, argument in zip(self.extra_args[::2], (*self.extra_args[1::2], ""), strict=False):
            if option == "-device" and "pci" in argument.split(",")[0].lower():
                raise VlabError("-M microvm has no PCI bus: a PCI device cannot be plugged into it",
                                field="extra_args", value=shown(f"{option} {argument}"),
                                fix='machine="pc" (or the virtio-mmio form, e.g. "virtio-rng-device")')
        if host_tsc_khz() is None:
            raise VlabError("-M microvm has no HPET, and this host's TSC rate is unknown: the guest kernel would "
                            "calibrate its clock against an emulated timer and can hang under load",
                            field="machine", value="microvm", fix='machine="auto" (or "pc")')

    def microvm_blocker(self) -> str | None:
        """Why ``machine="auto"`` cannot boot this config on ``-M microvm`` (None: it can)."""
        if self.extra_args:
            return "extra_args may name PCI devices"
        if host_tsc_khz() is None:
            return "the host's TSC rate is unknown (see host_tsc_khz)"
        return None

    def boot_machine(self) -> str:
        """The machine a cold boot of this config runs: ``machine``, with ``auto`` resolved (see ``machine``)."""
        if self.machine != "auto":
            return self.machine
        return "pc" if self.microvm_blocker() else "microvm"

    # -- validation helpers -------------------------------------------------------------------------

    @staticmethod
    def _existing_file(key: str, value: Path | str | None, default: Any) -> Path:
        if value is None:
            return Path(default())
        return check_file(key, value, f"point {key} at a real file, e.g. {key}=vlab.qemu.default_{key}() "
                                      f"({_IMAGES_FIX})")

    @staticmethod
    def _checked_items(key: str, value: Any, kind: type[Any], example: str) -> tuple[Any, ...]:
        """A tuple/list of ``kind`` (a Disk may also be given as a path)."""
        if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, (tuple, list)):
            raise VlabError(f"must be a tuple of {kind.__name__}, not {type(value).__name__}", field=key,
                            value=shown(value), fix=f"{key}={example}")
        if len(value) > _MAX_DEVICES:
            raise VlabError(f"at most {_MAX_DEVICES} per VM", field=key, value=len(value), fix=f"{key}={example}")
        items = []
        for item in value:
            if kind is Disk and isinstance(item, (str, os.PathLike)) and not isinstance(item, bytes):
                item = Disk(Path(item))
            if not isinstance(item, kind):
                raise VlabError(f"each item must be a {kind.__name__}, not {type(item).__name__}", field=key,
                                value=shown(item), fix=f"{key}={example}")
            items.append(item)
        return tuple(items)

    @staticmethod
    def _checked_extra_args(value: Any) -> tuple[str, ...]:
        fix = 'extra_args=("-device", "virtio-rng-pci")'
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise VlabError("must be a tuple of strings (one per argv word)", field="extra_args",
                            value=shown(value), fix=fix)
        args = tuple(check_text("extra_args", a, max_len=MAX_PATH_BYTES + 64, fix=fix) for a in value)
        if outbound_denied():
            # a raw -netdev/-chardev could open any connection restrict=on forbids: only harmless options pass
            for option, argument in zip(args[::2], (*args[1::2], ""), strict=False):
                allowed = _DENY_MODE_EXTRA.get(option)
                if allowed is None or not re.fullmatch(allowed, argument):
                    raise VlabError(f"is not allowed while {DENY_OUTBOUND_ENV}=1 (only "
                                    f"{', '.join(sorted(_DENY_MODE_EXTRA))} with plain values)",
                                    field="extra_args", value=shown(f"{option} {argument}"),
                                    fix="leave extra_args out under the grader")
        return args

    @staticmethod
    def _checked_mem(value: int | str) -> int:
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise VlabError(f"must be a size such as 512M, not {type(value).__name__}", field="mem",
                            value=shown(value), fix='mem = "512M"')
        if isinstance(value, str) and len(value) > 32:
            raise VlabError("is not a size", field="mem", value=shown(value), fix='mem = "512M"')
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
        host = _host_cpus()
        count = check_int("vcpus", value, -(1 << 20), 1 << 20, 'vcpus = "1"')
        if count < 1:
            raise VlabError("a VM needs at least one vCPU", field="vcpus", value=value, fix='vcpus = "1"')
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

        ``#`` starts a comment; values may be double-quoted, single-quoted or bare. Without a ``machine`` key the
        VM is the classic ``pc`` (not ``auto``), as the textbook's command line runs it. ``overrides`` replace
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
        for flag in ("balloon", "cold_boot"):
            if flag in values:
                values[flag] = _parse_bool(flag, values[flag])
        # a vm.conf describes the textbook's PC (lab 01 compares its qemu_argv with a student's): no microvm
        # unless it says so
        values.setdefault("machine", "pc")
        values.update(overrides)
        return cls(**values)

    @staticmethod
    def _read_conf_source(source: str | os.PathLike[str]) -> tuple[str, str]:
        if not isinstance(source, (str, os.PathLike)):
            raise VlabError(f"must be the path or the text of a vm.conf, not {type(source).__name__}",
                            field="conf", value=shown(source), fix='VMConfig.from_conf("vm.conf")')
        if isinstance(source, str) and ("\n" in source or "=" in source):
            if len(source) > _MAX_CONF_BYTES:
                raise VlabError(f"vm.conf text is longer than {_MAX_CONF_BYTES} bytes", field="conf",
                                value=shown(source), fix="a vm.conf has a handful of short lines")
            return source, "the vm.conf text"
        path = check_file("conf", source, "pass the path of an existing vm.conf, or its text")
        if path.stat().st_size > _MAX_CONF_BYTES:
            raise VlabError(f"is larger than {_MAX_CONF_BYTES} bytes: not a vm.conf", field="conf",
                            value=str(path), fix="pass the path of a vm.conf")
        try:
            return path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise VlabError(f"cannot be read ({exc})", field="conf", value=str(path),
                            fix="pass a readable UTF-8 vm.conf") from None

    # -- argv ---------------------------------------------------------------------------------------

    def replace(self, **changes: Any) -> VMConfig:
        """A copy with some fields changed (and validated again)."""
        return replace(self, **changes)

    def kernel_cmdline(self) -> str:
        """The kernel command line: ``append`` + ``root=`` + ``console=ttyS0`` + the NICs' ``vlab.ipN=``.

        On ``-M microvm`` also ``tsc_early_khz=<host TSC kHz> tsc=reliable``: microvm has no HPET (nor an ACPI
        PM timer), so the kernel would calibrate the TSC against the emulated PIT, which under TCG and host load
        goes wrong (the guest hung in 2 of 8 boots); under TCG the guest's TSC *is* the host's (QEMU reads
        ``rdtsc``), so the host's rate is exact, and ``tsc=reliable`` skips the clocksource watchdog that has
        no second clock to check against.
        """
        words = self.append.split()
        if not any(w.startswith("console=ttyS0") for w in words):
            words.insert(0, "console=ttyS0")
        if self.root and not any(w.startswith("root=") for w in words):
            words.append(f"root={self.root}")
        if not any(w.startswith("vlab.hostname=") for w in words):
            words.append(f"vlab.hostname={self.name}")
        words += [f"vlab.ip{i}={nic.ip}" for i, nic in enumerate(self.nics) if nic.ip]
        khz = host_tsc_khz()
        if self.machine == "microvm" and khz is not None:
            if not any(w.startswith("tsc_early_khz=") for w in words):
                words.append(f"tsc_early_khz={khz}")
            if not any(w.startswith("tsc=") for w in words):
                words.append("tsc=reliable")
        return " ".join(words)

    def mac_address(self, index: int, attempt: int = 0) -> str:
        """The MAC of NIC ``index``: explicit, or a locally administered one hashed from the name and index.

        ``attempt`` > 0 gives further candidates; a running :class:`~vlab.qemu.vm.VM` takes the first one no
        other VM of this process uses (bridges are per process, so that makes MACs unique on every bridge).
        """
        nic = self.nics[index]
        if nic.mac:
            return nic.mac
        digest = hashlib.sha256(f"{self.name}/{index}/{attempt}".encode()).digest()
        return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])

    def qemu_argv(self, io: LaunchIO | None = None, *, accel: str | None = None) -> list[str]:
        """The exact QEMU command line for this config.

        Without ``io`` it is a command a student can paste into a terminal (console and QEMU monitor on
        stdio, like ``-nographic``; disks shown as their own files). :class:`~vlab.qemu.vm.VM` passes ``io``
        to put QMP and the console on inherited sockets instead.

        Every ``-object``, ``-blockdev``, ``-netdev`` and ``-device`` is QEMU's JSON form of the option, so a
        value (a path with commas, a MAC) is one JSON string and can never add an option. The RAM is an
        explicit ``memory-backend-ram`` object ``ram0``, so a backend of another kind can replace it.

        :param accel: ``"tcg"`` or ``"kvm"``; defaults to the config's accel, with ``auto`` shown as tcg
            (the VM resolves ``auto`` with the host probe before launching).
        """
        chosen = accel or ("tcg" if self.accel == "auto" else self.accel)
        if chosen not in ("tcg", "kvm"):
            raise VlabError("must be tcg or kvm", field="accel", value=shown(chosen), fix='accel="tcg"')
        if self.machine == "auto":
            return self.replace(machine=self.boot_machine()).qemu_argv(io, accel=accel)
        machine = MICROVM_MACHINE if self.machine == "microvm" else self.machine
        # debug-threads=on names the vCPU threads ("CPU 0/TCG"), so `top -H` and /proc show which is which.
        argv = [QEMU_BINARY, "-name", f"{self.name},debug-threads=on",
                "-M", f"{machine},memory-backend={RAM_BACKEND_ID}", "-accel", chosen]
        if self.cpu:
            argv += ["-cpu", self.cpu]
        argv += ["-m", str(self.mem), "-smp", str(self.vcpus)]
        backend = io.memory_backend if io is not None and io.memory_backend is not None else self.memory_backend()
        argv += _json_option("-object", dict(backend))
        argv += list(BASE_FLAGS)
        argv += ["-kernel", str(self.boot_kernel()), "-initrd", str(self.initrd), "-append", self.kernel_cmdline()]
        argv += self.io_args(io)
        for option, value in self.device_options(io):
            argv += _json_option(option, value)
        if self.balloon:
            argv += _json_option("-device", _placed({"driver": self._virtio("balloon"), "id": BALLOON_ID}, io))
        if io is not None and io.paused:
            argv.append("-S")
        if io is not None and io.incoming:
            argv += ["-incoming", io.incoming]
        return argv + list(self.extra_args)

    def device_options(self, io: LaunchIO | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The disks' and NICs' ``(option, JSON value)`` pairs, in command-line order.

        Each pair is also a QMP command (``-object`` -> ``object-add``, ``-blockdev`` -> ``blockdev-add``,
        ``-netdev`` -> ``netdev_add``, ``-device`` -> ``device_add``), so a VM restored from a template can
        hot-plug exactly what a cold boot puts on the command line. Devices named in ``io.pci_slots`` get
        that slot.
        """
        return [(option, _placed(value, io) if option == "-device" and self._virtio("x").endswith("-pci")
                 else value) for option, value in self._disk_options(io) + self._nic_options(io)]

    def _virtio(self, kind: str) -> str:
        """QEMU's name of the virtio ``kind`` (``blk``, ``net``, ``balloon``) device on this machine."""
        machine = self.boot_machine()
        return f"virtio-{kind}{_VIRTIO_SUFFIX[machine]}"

    def boot_kernel(self) -> Path:
        """The kernel file QEMU loads: on microvm the image's PVH ELF (``vmlinux``) of the same kernel when it
        has one (no firmware boot path, no decompressor: ≈ 0.4 s less under TCG), else ``kernel`` itself."""
        assert self.kernel is not None
        if self.boot_machine() == "microvm":
            elf = pvh_kernel(self.kernel)
            if elf is not None:
                return elf
        return self.kernel

    def memory_backend(self) -> dict[str, Any]:
        """The ``-object`` that holds guest RAM (``ram0``): anonymous memory of ``mem`` MiB."""
        return {"qom-type": "memory-backend-ram", "id": RAM_BACKEND_ID, "size": self.mem * 1024 * 1024}

    def shell_command(self) -> str:
        """:meth:`qemu_argv` as one shell-quoted line."""
        return shlex.join(self.qemu_argv())

    @staticmethod
    def io_args(io: LaunchIO | None) -> list[str]:
        """How QEMU reaches vlab: QMP monitors and ttyS0 on inherited sockets (stdio without ``io``)."""
        if io is None:
            return ["-serial", "mon:stdio"]
        # fds are ints vlab made; -chardev has no JSON form in QEMU 7.2 and needs none here
        argv = ["-chardev", f"socket,id=qmp,fd={int(io.qmp_fd)}", "-mon", "chardev=qmp,mode=control"]
        if io.qmp_sync_fd is not None:
            argv += ["-chardev", f"socket,id=qmp-sync,fd={int(io.qmp_sync_fd)}",
                     "-mon", "chardev=qmp-sync,mode=control"]
        if io.raw_qmp_path is not None:  # a path vlab made in the VM's workdir; "," is escaped as QEMU wants
            path = str(io.raw_qmp_path).replace(",", ",,")
            argv += ["-chardev", f"socket,id=qmp-raw,path={path},server=on,wait=off",
                     "-mon", "chardev=qmp-raw,mode=control"]
        return [*argv, "-chardev", f"socket,id=console,fd={int(io.console_fd)}", "-serial", "chardev:console"]

    def _disk_options(self, io: LaunchIO | None) -> list[tuple[str, dict[str, Any]]]:
        argv: list[tuple[str, dict[str, Any]]] = []
        for i, disk in enumerate(self.disks):
            secret_file = io.secret_files[i] if io and io.secret_files else None
            image: dict[str, Any] = {"driver": "file", "filename": str(disk.path)}
            node: dict[str, Any] = {"driver": disk.format, "file": image}
            if io is not None and disk.overlay:
                # the overlay names its backing file in its header; give it explicitly instead, so QEMU never
                # parses a filename stored in a file
                overlay = {"driver": "file", "filename": str(io.disk_paths[i])}
                node = {"driver": "qcow2", "file": overlay, "backing": {**node, "read-only": True}}
            if disk.secret is not None:
                secret = str(secret_file) if secret_file is not None else f"<passphrase-file-{i}>"
                argv.append(("-object", {"qom-type": "secret", "id": f"sec{i}", "file": secret, "format": "raw"}))
                node["encrypt"] = {"format": "luks", "key-secret": f"sec{i}"}
            node = {**node, "node-name": f"disk{i}", "read-only": disk.readonly}
            argv.append(("-blockdev", node))
            argv.append(("-device", {"driver": self._virtio("blk"), "drive": f"disk{i}", "id": f"vd{i}",
                                     "werror": disk.on_error, "rerror": _read_error(disk.on_error)}))
        return argv

    def _nic_options(self, io: LaunchIO | None) -> list[tuple[str, dict[str, Any]]]:
        argv: list[tuple[str, dict[str, Any]]] = []
        for i, nic in enumerate(self.nics):
            netdev: dict[str, Any]
            if nic.mode == "user":
                netdev = {"type": "user", "id": f"net{i}", "restrict": not nic.outbound}
                if nic.forwards:
                    netdev["hostfwd"] = [{"str": f"tcp:127.0.0.1:{host}-:{guest}"} for host, guest in nic.forwards]
            else:
                fd = io.nic_fds[i] if io and io.nic_fds else None
                netdev = {"type": "tap", "id": f"net{i}"}
                netdev.update({"fd": str(int(fd))} if fd is not None else {"ifname": f"<tap-on-{nic.bridge}>"})
            mac = io.macs[i] if io and io.macs else self.mac_address(i)
            argv.append(("-netdev", netdev))
            argv.append(("-device", {"driver": self._virtio("net"), "netdev": f"net{i}", "mac": mac,
                                     "id": f"nic{i}"}))
        return argv


def _json_option(option: str, value: dict[str, Any]) -> list[str]:
    """``[option, '{"…": …}']``: QEMU parses the JSON form as data, so no value can add a key."""
    return [option, json.dumps(value, separators=(",", ":"))]


def _placed(device: dict[str, Any], io: LaunchIO | None) -> dict[str, Any]:
    """``device`` at the PCI slot ``io.pci_slots`` gives its id (unchanged when it gives none)."""
    slot = io.pci_slots.get(str(device.get("id"))) if io is not None else None
    return device if slot is None else {**device, "addr": f"{int(slot):#x}"}


def _read_error(on_error: str) -> str:
    """``rerror`` has no ``enospc`` (a read never fills a disk): report read errors there."""
    return "report" if on_error == "enospc" else on_error


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

