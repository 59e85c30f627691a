"""Lab 05's logic: real attacks on the toy VMM, real namespaces and cgroups, real QEMU guests."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.labs import isolation as lab
from vlab.toyvmm import RAM_BASE

PARAMS = lab.params_for(2026)
NEIGHBOUR = RAM_BASE + lab.TOY_RAM  # the first address past a 1 MiB toy guest


def sound_check(gpa: int, base: int, p2m: list[int | None]) -> int | None:
    index = (gpa - base) >> 12
    return p2m[index] if 0 <= index < len(p2m) else None


def lower_bound_only(gpa: int, base: int, p2m: list[int | None]) -> int | None:
    """The weakened VMM's mistake, written as a student might: no upper bound, frames assumed contiguous
    (like the weakened VMM, it still keeps to the host's 8192-frame pool)."""
    index = (gpa - base) >> 12
    first = p2m[0]
    return None if index < 0 or first is None or first + index >= 8192 else first + index


def beyond_the_pool(gpa: int, base: int, p2m: list[int | None]) -> int | None:
    return (gpa - base) >> 12 if gpa >= base else None


# ---------------------------------------------------------------- parameters


def test_params_are_reproducible_and_differ_between_students() -> None:
    assert lab.params_for(7) == lab.params_for(7)
    assert lab.params_for(7) != lab.params_for(8)


@pytest.mark.parametrize("seed", range(20))
def test_params_give_alpha_exactly_one_bridge_neighbour(seed: int) -> None:
    params = lab.params_for(seed)
    bridges = params["bridges"]
    assert [bridges["beta"], bridges["gamma"]].count(bridges["alpha"]) == 1
    assert set(params["attacks"]) <= set(lab.ATTACKS) and len(params["attacks"]) == 7
    assert 0 <= params["secret_offset"] <= 4096 - len(params["victim_secret"])


# ---------------------------------------------------------------- the toy VMM


def test_sound_vmm_stops_and_records_every_probe() -> None:
    report = lab.toy_attack(PARAMS)
    assert not report.secret_leaked and not report.victim_damaged
    assert report.victim_state == "running"
    assert "2222222" in report.attacker_output  # each of 7 probes: load and store both faulted
    accesses = {(v.addr, v.access) for v in report.violations if v.guest == "attacker"}
    assert {(NEIGHBOUR, "read"), (NEIGHBOUR, "write")} <= accesses
    assert any("hypercall" in v.what for v in report.violations)
    assert any("ILLEGAL_ACCESS" in line for line in report.audit)
    assert report.exit_counts["ILLEGAL_ACCESS"] == 14


def test_weakened_vmm_leaks_the_secret_and_misses_the_neighbour_probe() -> None:
    report = lab.toy_attack(PARAMS, weak_bounds=True)
    assert report.secret_leaked and report.victim_damaged
    assert report.victim_state == "killed"  # its first instruction was zeroed: it faults in its own trap handler
    assert PARAMS["victim_secret"] in report.spy_output
    assert NEIGHBOUR not in report.blocked_addresses


def test_a_sound_check_installed_in_the_weakened_vmm_stops_the_attack() -> None:
    report = lab.toy_attack(PARAMS, weak_bounds=True, check=sound_check)
    assert not report.secret_leaked and not report.victim_damaged
    assert NEIGHBOUR in report.blocked_addresses
    assert report.mode.endswith("your check")


def test_the_installed_check_is_really_the_one_used() -> None:
    # the same bug in a student's check breaks the sound VMM too
    report = lab.toy_attack(PARAMS, check=lower_bound_only)
    assert report.secret_leaked


def test_a_check_returning_a_frame_outside_the_pool_is_a_clear_error() -> None:
    with pytest.raises(VlabError, match="pool has frames"):
        lab.toy_attack(PARAMS, check=beyond_the_pool)


# ---------------------------------------------------------------- containers

namespaces_ok, cgroups_ok, _why = lab.container_support()
needs_namespaces = pytest.mark.skipif(not namespaces_ok, reason="no namespaces for this user here")
needs_cgroups = pytest.mark.skipif(not (namespaces_ok and cgroups_ok), reason="no memory/pids cgroups here")


def _lab_cgroups() -> list[str]:
    found = []
    for root in Path("/sys/fs/cgroup").glob("*"):
        found += [str(p) for p in root.rglob(f"vlab-lab05-{os.getpid()}-*")]
    return found


@needs_namespaces
def test_container_sees_its_own_pids_hostname_and_network_but_the_hosts_kernel(tmp_path: Path) -> None:
    marker = tmp_path / "host-file"
    marker.write_text("host\n")
    host, inside = lab.host_view(marker), lab.container_view(marker, "box-test")
    assert inside.hostname == "box-test" != host.hostname
    assert inside.processes < 10 < host.processes
    assert inside.boot_id == host.boot_id  # one kernel
    assert inside.sees_host_file  # a mount namespace alone hides no file
    run = lab.run_container(["sh", "-c", "echo $$; ip -o link | cut -d: -f2"])
    assert run.status == 0
    assert run.output.split()[1:] == ["lo"]


@needs_cgroups
def test_memory_limit_kills_the_hog_and_the_cgroup_is_removed() -> None:
    run = lab.run_container([lab.python(), "-c", "x = b'1' * (200 << 20); print('survived')"], memory_limit_mib=40)
    assert run.status == 137 and "survived" not in run.output
    assert run.oom_kills == 1
    assert not _lab_cgroups()


@needs_cgroups
@pytest.mark.parametrize("pids_max", [6, 11])
def test_pids_limit_counts_unshare_and_the_init_shell(pids_max: int) -> None:
    program = ("import os\nn = 0\ntry:\n    while n < 50:\n        if os.fork() == 0:\n            import time; "
               "time.sleep(5); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)")
    run = lab.run_container([lab.python(), "-c", program], pids_max=pids_max)
    assert int(run.output.split()[0]) == pids_max - 3  # the answer of question q2
    assert run.pids_refused == 1
    assert not _lab_cgroups()


@needs_namespaces
def test_start_and_memory_of_a_container_are_measured() -> None:
    starts = lab.container_start_seconds(3)
    assert len(starts) == 3 and all(0 < s < 5 for s in starts)
    rss = lab.container_memory_kib()
    assert len(rss) >= 2 and all(r > 0 for r in rss)  # unshare and the container's shell


# ---------------------------------------------------------------- sockets and QMP, without a VM


def test_socket_access_follows_the_socket_and_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(path))
        path.chmod(0o777)
        tmp_path.chmod(0o711)
        assert lab.socket_access(path).who == "its owner and its group and every user"
        tmp_path.chmod(0o700)
        assert lab.socket_access(path).who == "its owner"
        path.chmod(0o000)
        assert lab.socket_access(path).who == "nobody but root"
    finally:
        server.close()


def test_workspace_is_private_and_removed() -> None:
    with lab.workspace() as work:
        assert oct(work.stat().st_mode & 0o777) == "0o700"
        (work / "file").write_text("x")
        assert len(str(work / "qmp.sock")) < 108
    assert not work.exists()


# ---------------------------------------------------------------- real VMs


class _EndOfTest(Exception):
    pass


@pytest.mark.qemu
@pytest.mark.slow
def test_vms_isolation_control_plane_and_data() -> None:
    from vlab.qemu.network import bridge_supported

    bridged, _ = bridge_supported()
    with lab.workspace() as work:
        disk = lab.luks_image(work / "disk.qcow2")
        marker = work / "host-file"
        marker.write_text("host\n")
        sock = work / "qmp.sock"
        with pytest.raises(_EndOfTest), \
                lab.running_vms(lab.lab_vm_configs(PARAMS, bridges=bridged, disk=disk, qmp_socket=sock)) as vms:
            alpha = vms[0]
            view, host = lab.guest_view(alpha, marker), lab.host_view(marker)
            assert view.hostname == "alpha" and view.boot_id != host.boot_id and not view.sees_host_file
            if bridged:
                for other in ("beta", "gamma"):
                    same = PARAMS["bridges"][other] == PARAMS["bridges"]["alpha"]
                    assert lab.ping(alpha, PARAMS["addresses"][other], count=1, wait_s=1).answered is same
            assert lab.socket_access(sock).who == "its owner"
            secret = PARAMS["disk_secret"]
            alpha.console.run(f"echo {secret} | dd of=/dev/vda conv=fsync 2>/dev/null")
            assert secret in alpha.console.run("dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1").output
            assert lab.file_occurrences(disk, secret.encode()) == 0
            with lab.RawQMP(sock) as intruder:
                intruder.execute("stop")
                assert intruder.execute("query-status")["status"] == "paused"
                intruder.execute("cont")
                memory = lab.dump_guest_memory(intruder, alpha.config.mem << 20, work)
            assert len(memory) == alpha.config.mem << 20
            assert secret.encode() in memory
            raise _EndOfTest  # a cell failing half-way: every VM must still be stopped
        assert all(vm.state.value == "stopped" for vm in vms)
    assert not work.exists()
