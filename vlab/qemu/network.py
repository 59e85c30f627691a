"""Bridged NICs without libvirt: one network namespace per bridge, one tap per NIC.

A bridge NIC (``Nic(mode="bridge", bridge="lab")``) is wired like this::

    QEMU --fd--> tap vt<pid>n<k> ==moved into==> netns vlab<pid>-lab: bridge br-lab

vlab opens ``/dev/net/tun`` itself (``TUNSETIFF``), which creates the tap in
the host namespace, moves the tap into the bridge's namespace and enslaves it to
the bridge there, then hands the fd to QEMU (``-netdev tap,fd=N``). QEMU itself
stays in the host namespace, so user-mode NICs and migration sockets keep
working. VMs whose taps share a bridge are on one Ethernet segment; different
bridges live in different namespaces and cannot reach each other, and nothing
touches the host's own interfaces.

Cleanup: a tap opened this way is not persistent, so the kernel deletes it when
the last fd (QEMU's) closes. The namespace, with its bridge, is deleted when
the last VM using it releases it; :func:`sweep_orphan_namespaces` removes those
of dead vlab processes. This needs root (``CAP_NET_ADMIN``); user-mode NICs never do.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shlex
import struct
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlab.errors import VlabError
from vlab.host import procfs
from vlab.qemu.config import VMConfig

if TYPE_CHECKING:
    from vlab.qemu.vm import VM

__all__ = ["TapHandle", "open_tap", "release_bridge", "bridge_supported", "sweep_orphan_namespaces",
           "namespace_for", "claim_macs", "release_macs", "PingResult", "ping"]

_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_NETNS_DIR = Path("/var/run/netns")

_lock = threading.Lock()
_users: dict[str, int] = {}  # bridge name -> VMs (NICs) using it in this process
_tap_ids = itertools.count()
_macs_in_use: dict[str, list[str]] = {}  # MAC -> names of the VMs (in this process) holding it
_MAC_ATTEMPTS = 64


@dataclass
class TapHandle:
    """An open tap fd (to pass to QEMU), its interface name and the bridge it is attached to."""

    fd: int
    ifname: str
    bridge: str


def namespace_for(bridge: str) -> str:
    """The network namespace holding ``bridge`` for this process."""
    return f"vlab{os.getpid()}-{bridge}"


def bridge_supported() -> tuple[bool, str]:
    """Whether bridge NICs can work here, and why not."""
    if os.geteuid() != 0:
        return False, "bridge NICs need root (CAP_NET_ADMIN) to create namespaces, bridges and taps"
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing"
    return True, "root and /dev/net/tun available"


def _ip(*args: str) -> None:
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        raise VlabError("the ip command is missing", field="network", fix="apt-get install iproute2") from None
    if done.returncode != 0:
        raise VlabError("setting up the bridge failed", field="network", value="ip " + " ".join(args),
                        fix="run as root on a host that allows network namespaces", detail=done.stderr.strip())


def _ensure_bridge(bridge: str) -> None:
    netns = namespace_for(bridge)
    if (_NETNS_DIR / netns).exists():
        return
    _ip("netns", "add", netns)
    try:
        _ip("-n", netns, "link", "add", f"br-{bridge}", "type", "bridge")
        _ip("-n", netns, "link", "set", f"br-{bridge}", "up")
    except VlabError:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        raise


def open_tap(bridge: str) -> TapHandle:
    """Create a tap attached to ``bridge`` (creating the bridge's namespace on first use).

    :raises VlabError: if not root, or the kernel refuses.
    """
    supported, why = bridge_supported()
    if not supported:
        raise VlabError(why, field="nics.mode", value="bridge", fix='use Nic(mode="user") (QEMU user-mode NAT)')
    ifname = f"vt{os.getpid()}n{next(_tap_ids)}"[:15]
    with _lock:
        _ensure_bridge(bridge)
        _users[bridge] = _users.get(bridge, 0) + 1
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", ifname.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR))
        netns = namespace_for(bridge)
        _ip("link", "set", ifname, "netns", netns)
        _ip("-n", netns, "link", "set", ifname, "master", f"br-{bridge}", "up")
    except BaseException:
        os.close(fd)
        release_bridge(bridge)
        raise
    return TapHandle(fd, ifname, bridge)


def claim_macs(config: VMConfig, inherit: Sequence[str] = ()) -> list[str]:
    """Reserve one MAC per NIC of ``config`` that no other VM of this process has.

    Bridges live in per-process namespaces, so unique within the process means unique on every bridge.
    An explicit ``Nic(mac=…)`` already in use is an error; a derived one moves on to the next candidate.

    :param inherit: MACs to take over as they are (a migration destination keeps the source's).
    :raises VlabError: if an explicit MAC is taken.
    """
    claimed: list[str] = []
    with _lock:
        try:
            for index, nic in enumerate(config.nics):
                if index < len(inherit):
                    claimed.append(inherit[index])
                    continue
                for attempt in range(_MAC_ATTEMPTS):
                    mac = config.mac_address(index, attempt)
                    if mac not in _macs_in_use and mac not in claimed:
                        break
                    if nic.mac:
                        raise VlabError(f"this MAC is already used by VM {_macs_in_use.get(mac, [config.name])[0]!r}",
                                        field="nics.mac", value=mac, fix="give each NIC its own mac, or leave "
                                        "mac out (vlab then picks a free one)")
                else:  # pragma: no cover - 64 hash collisions in a row
                    raise VlabError("no free MAC address found", field="nics.mac", fix="set Nic(mac=…)")
                claimed.append(mac)
        except BaseException:
            claimed = []
            raise
        finally:
            for mac in claimed:
                _macs_in_use.setdefault(mac, []).append(config.name)
    return claimed


def release_macs(macs: Sequence[str]) -> None:
    """Give back MACs of a stopped VM."""
    with _lock:
        for mac in macs:
            holders = _macs_in_use.get(mac, [])
            if holders:
                holders.pop()
            if not holders:
                _macs_in_use.pop(mac, None)


def release_bridge(bridge: str) -> None:
    """One user of ``bridge`` is gone; delete its namespace (and bridge) when none is left."""
    with _lock:
        left = _users.get(bridge, 0) - 1
        if left > 0:
            _users[bridge] = left
            return
        _users.pop(bridge, None)
        subprocess.run(["ip", "netns", "del", namespace_for(bridge)], capture_output=True, timeout=15)


def sweep_orphan_namespaces() -> list[str]:
    """Delete ``vlab<pid>-*`` namespaces whose process is gone; return their names."""
    removed: list[str] = []
    if os.geteuid() != 0 or not _NETNS_DIR.is_dir():
        return removed
    for entry in _NETNS_DIR.iterdir():
        match = re.fullmatch(r"vlab(\d+)-[a-z0-9]+", entry.name)
        if match and not procfs.alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", entry.name], capture_output=True, timeout=15)
            removed.append(entry.name)
    return removed


@dataclass(frozen=True)
class PingResult:
    """What ``ping -c N`` in a guest reported."""

    target: str
    sent: int
    received: int
    rtt_ms: tuple[float, ...]
    output: str

    @property
    def answered(self) -> bool:
        """At least one reply came back."""
        return self.received > 0

    def __str__(self) -> str:
        rtts = ", ".join(f"{r:.1f}" for r in self.rtt_ms)
        return f"ping {self.target}: {self.received}/{self.sent} answered, RTT ms: {rtts or '-'}"


def ping(vm: VM, target: str, count: int = 3, wait_s: int = 2) -> PingResult:
    """Ping ``target`` from inside ``vm`` (the guest's busybox ping) and parse the replies.

    :raises VlabError: for a count or wait outside 1..100, or a target that is not a host name or address.
    """
    for name, value in (("count", count), ("wait_s", wait_s)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
            raise VlabError(f"{name} must be a whole number from 1 to 100", field=name, value=value,
                            fix=f"e.g. ping(vm, target, {name}=3)")
    if not isinstance(target, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}", target):
        raise VlabError("the target is not a host name or an IP address", field="target", value=target,
                        fix='e.g. "10.0.2.2" or "gateway"')
    result = vm.console.run(f"ping -c {count} -W {wait_s} {shlex.quote(target)}", timeout=count * wait_s + 15)
    text = result.output
    rtts = tuple(float(ms) for ms in re.findall(r"time=([\d.]+) ms", text))
    summary = re.search(r"(\d+) packets transmitted, (\d+) packets received", text)
    sent, received = (int(summary.group(1)), int(summary.group(2))) if summary else (count, len(rtts))
    return PingResult(target, sent, received, rtts, text)
