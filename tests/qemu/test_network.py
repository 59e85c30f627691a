"""NICs: QEMU user-mode NAT, and bridges in vlab-made network namespaces (root only).

Traffic stays inside QEMU's user-mode network and the namespaces vlab creates.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.qemu import VM, Nic, VMConfig
from vlab.qemu.network import bridge_supported, namespace_for, ping

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _our_namespaces() -> set[str]:
    """Namespaces this test process made (other processes on the host may make their own meanwhile)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in listing.splitlines() if line.strip()}
    return {name for name in names if name.startswith(f"vlab{os.getpid()}-")}


def _our_taps() -> list[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [line for line in links.splitlines() if f": vt{os.getpid()}n" in line]


def test_user_mode_nic_reaches_the_slirp_gateway(guest_images: tuple[Path, Path]) -> None:
    config = VMConfig(accel="tcg", nics=(Nic(ip="10.0.2.15/24"),), append="console=ttyS0 quiet vlab.gw=10.0.2.2")
    with VM(config) as vm:
        assert "inet 10.0.2.15/24" in vm.console.run("ip addr show eth0").output
        assert vm.console.run("ping -c 1 -W 5 10.0.2.2").ok


def test_same_bridge_pings_other_bridge_does_not_and_all_is_removed(guest_images: tuple[Path, Path]) -> None:
    supported, why = bridge_supported()
    if not supported:
        pytest.skip(f"{why}; run the tests as root to cover bridge NICs")

    def on(bridge: str, name: str, ip: str) -> VMConfig:
        return VMConfig(name=name, accel="tcg", nics=(Nic("bridge", bridge, ip),))

    with VM(on("lab", "a", "10.77.0.1/24")) as a, VM(on("lab", "b", "10.77.0.2/24")) as b, \
            VM(on("other", "c", "10.77.0.3/24")) as c:
        assert _our_namespaces() == {namespace_for("lab"), namespace_for("other")}  # one per bridge
        assert a.console.run("ping -c 1 -W 3 10.77.0.2").ok
        assert b.console.run("ping -c 1 -W 3 10.77.0.1").ok
        assert not c.console.run("ping -c 1 -W 1 10.77.0.1").ok
    assert _our_namespaces() == set()
    assert _our_taps() == []


@pytest.mark.parametrize(("target", "count", "wait_s", "field"), [
    ("10.0.2.2; poweroff -f", 1, 1, "target"),       # a shell command after the address
    ("$(reboot)", 1, 1, "target"),
    ("-f", 1, 1, "target"),                          # an option, not an address
    ("10.0.2.2", 10**6, 1, "count"),                 # hours of pinging
    ("10.0.2.2", 1, "1; reboot", "wait_s"),
    ("10.0.2.2", True, 1, "count"),
])
def test_ping_refuses_what_is_not_an_address_or_a_small_count(shared_vm: VM, target: str, count: int, wait_s: int,
                                                               field: str) -> None:
    with pytest.raises(VlabError) as caught:
        ping(shared_vm, target, count=count, wait_s=wait_s)
    assert caught.value.field == field
    assert shared_vm.console.run("echo still-here").output == "still-here\n"  # nothing ran in the guest
