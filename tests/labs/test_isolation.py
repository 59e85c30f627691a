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


def reference_argv(command: list[str], hostname: str) -> list[str]:
    """A container's command line as a student would write it (lab 05 q2)."""
    flags = ["--user", "--map-root-user"] if lab.needs_user_namespace() else []
    flags += ["--pid", "--fork", "--mount-proc", "--mount", "--net", "--uts", "--ipc"]
    return ["unshare", *flags, "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *command]


def reference_limits(memory_mib: int, pids_max: int) -> dict[str, str]:
    limit = str(memory_mib << 20)
    if lab.cgroup_version() == 2:
        return {"memory.max": limit, "memory.swap.max": "0", "pids.max": str(pids_max)}
    return {"memory.limit_in_bytes": limit, "memory.memsw.limit_in_bytes": limit, "pids.max": str(pids_max)}


@needs_namespaces
def test_container_sees_its_own_pids_hostname_and_network_but_the_hosts_kernel(tmp_path: Path) -> None:
    marker = tmp_path / "host-file"
    marker.write_text("host\n")
    host = lab.host_view(marker)
    inside = lab.container_view(reference_argv(lab.view_command(marker), "box-test"))
    assert inside.hostname == "box-test" != host.hostname
    assert inside.processes < 10 < host.processes
    assert inside.boot_id == host.boot_id  # one kernel
    assert inside.sees_host_file  # a mount namespace alone hides no file
    run = lab.run_container(reference_argv(["sh", "-c", "echo $$; ip -o link | cut -d: -f2"], "box"))
    assert run.status == 0
    assert run.output.split()[1:] == ["lo"]


@needs_namespaces
def test_a_command_line_missing_a_namespace_shows_what_it_leaks(tmp_path: Path) -> None:
    """The lab grades a container by what it sees: without --mount-proc the new PID namespace still reads the
    host's /proc, without --net it has the host's interfaces."""
    marker = tmp_path / "m"
    marker.write_text("x")
    no_proc = [w for w in reference_argv(lab.view_command(marker), "box") if w != "--mount-proc"]
    assert lab.container_view(no_proc).processes > 10
    no_net = [w for w in reference_argv(["sh", "-c", "ip -o link | wc -l"], "box") if w != "--net"]
    assert int(lab.run_container(no_net).output.split()[-1]) > 1


@needs_namespaces
@pytest.mark.parametrize(("argv", "field"), [
    ([], "argv"), ("unshare --pid", "argv"), ([b"unshare"], "argv"), (["unshare", 5], "argv"), (None, "argv"),
    (["unshare", "--pid\0"], "argv"),
])
def test_malformed_command_lines_are_refused(argv: object, field: str) -> None:
    with pytest.raises(VlabError) as caught:
        lab.run_container(argv)  # type: ignore[arg-type]
    assert caught.value.field == field


@needs_cgroups
@pytest.mark.parametrize("limits", [
    {"cgroup.procs": "1"}, {"../../../../etc/passwd": "1"}, {"memory.limit_in_bytes/../tasks": "1"},
    {"pids.max": "-1"}, {"pids.max": "1; echo"}, {"pids.max": True}, {"pids.max": 1.5}, {"pids.max": "٣"},
    {"pids.max": None}, ["pids.max"], "pids.max=5", {"memory.high": "1"},
])
def test_limits_outside_the_allow_list_or_not_numbers_are_refused_and_write_nothing(limits: object) -> None:
    with pytest.raises(VlabError) as caught:
        lab.run_container(["true"], limits=limits)  # type: ignore[arg-type]
    assert (caught.value.field or "").startswith("limits")
    assert not _lab_cgroups()


@needs_cgroups
def test_the_other_versions_file_name_says_which_version_this_host_has() -> None:
    other = "memory.max" if lab.cgroup_version() == 1 else "memory.limit_in_bytes"
    with pytest.raises(VlabError, match=f"cgroup v{lab.cgroup_version()}"):
        lab.run_container(["true"], limits={other: "41943040"})
    assert not _lab_cgroups()


@needs_cgroups
def test_memory_limit_kills_the_hog_and_the_cgroup_is_removed() -> None:
    hog = reference_argv(lab.reporting_status([lab.python(), "-c", "x = b'1' * (200 << 20); print('survived')"]), "box")
    run = lab.run_container(hog, limits=reference_limits(40, 100))
    assert run.status == 137 and "survived" not in run.output
    assert run.oom_kills == 1
    assert not _lab_cgroups()


@needs_cgroups
@pytest.mark.parametrize("pids_max", [6, 11])
def test_pids_limit_counts_unshare_and_the_init_shell(pids_max: int) -> None:
    program = ("import os\nn = 0\ntry:\n    while n < 50:\n        if os.fork() == 0:\n            import time; "
               "time.sleep(5); os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)")
    command = lab.reporting_status([lab.python(), "-c", program])
    run = lab.run_container(reference_argv(command, "box"), limits={"pids.max": str(pids_max)})
    assert int(run.output.split()[-1]) == pids_max - 3  # the answer of question q3
    assert run.pids_refused == 1 and run.oom_kills is None
    assert not _lab_cgroups()


@needs_namespaces
def test_start_and_memory_of_a_container_are_measured() -> None:
    starts = lab.container_start_seconds(reference_argv(["true"], "box"), 3)
    assert len(starts) == 3 and all(0 < s < 5 for s in starts)
    rss = lab.container_memory_kib(reference_argv(lab.IDLE_COMMAND, "box"))
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
        disk = lab.blank_disk(work / "disk.img")
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
            secret, passphrase = PARAMS["disk_secret"], PARAMS["passphrase"]
            key = f"printf %s {passphrase} |"
            for command in (f"{key} cryptsetup luksFormat --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "
                            "--key-file=- /dev/vda", f"{key} cryptsetup open --key-file=- /dev/vda secret",
                            f"printf %s {secret} | dd of=/dev/mapper/secret conv=fsync 2>/dev/null"):
                assert alpha.console.run(command, timeout=120).ok, command
            assert alpha.console.run("head -c 21 /dev/mapper/secret").output.strip() == secret
            volume_key = lab.volume_key(alpha.console, "/dev/vda", passphrase)
            assert len(volume_key) == 64  # aes-xts-plain64, 512 bits: two AES-256 keys
            with pytest.raises(VlabError, match="could not dump"):
                lab.volume_key(alpha.console, "/dev/vda", passphrase + "x")
            with lab.RawQMP(sock, timeout=60) as intruder:
                intruder.send({"execute": "qmp_capabilities"})
                intruder.send({"execute": "stop"})
                assert intruder.send({"execute": "query-status"})["return"]["status"] == "paused"
                intruder.send({"execute": "cont"})
                dump = work / "ram.bin"
                assert "return" in intruder.send({"execute": "pmemsave", "arguments": {
                    "val": 0, "size": alpha.config.mem << 20, "filename": str(dump)}})
                memory = dump.read_bytes()
            image = disk.read_bytes()
            assert image.startswith(lab.LUKS_MAGIC) and secret.encode() not in image
            assert volume_key[:32] not in image and volume_key[32:] not in image
            assert len(memory) == alpha.config.mem << 20
            assert secret.encode() in memory
            assert volume_key[:32] in memory and volume_key[32:] in memory  # each half starts its AES key schedule
            raise _EndOfTest  # a cell failing half-way: every VM must still be stopped
        assert all(vm.state.value == "stopped" for vm in vms)
    assert not work.exists()
