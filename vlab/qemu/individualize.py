"""Making a guest restored from a template into *this* VM, before :meth:`vlab.VM.start` returns.

Every restored guest starts as the same saved machine: same hostname, no disks or NICs, the clock of the
moment it was saved, the same random-number generator state. Two steps fix that:

1. :func:`hotplug` adds the VM's own disks and NICs over QMP, exactly as a cold boot puts them on the command
   line (:meth:`VMConfig.device_options`), each at the PCI slot it will keep (so a migration destination can
   be built with the same layout), while the guest is still paused.
2. :func:`individualize` runs one command line on the guest's console that mixes 64 bytes of host
   randomness into the kernel's pool (a shell builtin, before anything forks: the first fork then reseeds the
   CRNG from that pool, see :func:`vlab.qemu.template._settle`), sets the clock from the host, sets the
   hostname, waits for each hot-plugged disk and NIC (a NIC by the MAC vlab gave it) and gives the NICs the
   addresses and default route the guest's init would have read from ``/proc/cmdline`` (``vlab.ipN=``,
   ``vlab.gw=``, ``vlab.hostname=`` of :meth:`VMConfig.kernel_cmdline`), which after a restore still shows
   the template's command line.
"""

from __future__ import annotations

import secrets
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vlab.errors import VlabError
from vlab.qemu.config import LaunchIO, VMConfig
from vlab.qemu.console import Console

__all__ = ["hotplug", "individualize", "settings", "script"]

#: command-line option -> the QMP command that does the same at run time
_QMP = {"-object": "object-add", "-blockdev": "blockdev-add", "-netdev": "netdev_add", "-device": "device_add"}
_WAIT_STEPS = 2500  # x 2 ms: how long the guest waits for a hot-plugged device

Execute = Callable[[str, Mapping[str, Any]], Any]


def hotplug(execute: Execute, config: VMConfig, io: LaunchIO) -> None:
    """Add ``config``'s disks and NICs to a running QEMU, in command-line order."""
    for option, value in config.device_options(io):
        execute(_QMP[option], value)


def settings(config: VMConfig) -> dict[str, Any]:
    """What the guest's init reads from the kernel command line: hostname, ``ipN`` addresses, gateway."""
    values: dict[str, str] = {}
    for word in config.kernel_cmdline().split():
        name, sep, value = word.partition("=")
        if sep and name.startswith("vlab."):
            values[name[len("vlab."):]] = value
    ips = {int(k[2:]): v for k, v in values.items() if k[:2] == "ip" and k[2:].isdigit()}
    return {"hostname": values.get("hostname") or "vlab", "ips": ips, "gw": values.get("gw")}


def script(config: VMConfig, macs: Sequence[str], now: float, seed: bytes) -> str:
    """The one console line that individualizes a restored guest (see the module docstring).

    Under TCG every fork and exec of a restored guest is slow (its translated code is gone), so the line uses
    shell builtins wherever it can: ``printf`` for the seed, ``echo`` into /proc for the hostname, ``test`` and
    ``read`` to wait for devices. It runs in a function of the console's shell, which it removes again.
    """
    wanted = settings(config)
    octal = "".join(f"\\{b:03o}" for b in seed)
    steps = [f"date -s @{round(now)} >/dev/null", f"echo {shlex.quote(wanted['hostname'])} >/proc/sys/kernel/hostname"]
    for i in range(len(config.disks)):
        steps.append(f"_vw test -e /sys/block/vd{chr(ord('a') + i)}")
    for i, mac in enumerate(macs):
        steps.append(f"_vw _vm /sys/class/net/eth{i}/address {mac}")
        if wanted["ips"].get(i):
            steps.append(f"ip addr add {shlex.quote(wanted['ips'][i])} dev eth{i}")
            steps.append(f"ip link set eth{i} up")
    if wanted["gw"]:
        steps.append(f"ip route add default via {shlex.quote(wanted['gw'])}")
    helpers = ("_vm() { local a; read -r a < \"$1\" && [ \"$a\" = \"$2\" ]; }; "
               f"_vw() {{ local n=0; while ! \"$@\" 2>/dev/null; do n=$((n+1)); [ $n -lt {_WAIT_STEPS} ] || "
               "{ echo \"vlab: never ready: $*\"; return 7; }; usleep 2000; done; }; ")
    body = " && ".join(steps)
    # what the console shows afterwards (vlab's framing of this line is hidden): a restored guest printed no boot
    banner = shlex.quote(f"vlab: {wanted['hostname']} restored from a snapshot template, ready")
    # printf is a builtin and its redirect does not fork: the seed is in the pool before the first fork
    return (f"printf '{octal}' >/dev/urandom; {helpers}_vi() {{ {body}; }}; _vi; _vs=$?; "
            f"unset -f _vi _vw _vm; [ $_vs = 0 ] && echo {banner}")


def individualize(console: Console, config: VMConfig, macs: Sequence[str], timeout: float) -> None:
    """Run :func:`script` on the restored guest's console.

    :raises VlabError: if the guest does not finish it (a device never appeared, the shell does not answer).
    """
    line = script(config, macs, time.time() + 0.005, secrets.token_bytes(64))
    result = console.run(line, timeout=timeout)
    if not result.ok:
        raise VlabError(f"the restored guest could not be individualized (status {result.status})",
                        field="start", value=result.output.strip()[-200:],
                        fix="boot cold: vm.start(cold=True)")
