"""LUKS passphrases (issue 12, "Secrets"): any bytes unlock a disk, and the passphrase never shows.

Real qemu-img and QEMU throughout. Where a passphrase could show: ``/proc/PID/cmdline`` and ``environ`` of
qemu-img and QEMU while they run, files in the runtime directory (the VM's workdir is in it), the text of
VlabErrors, ``repr`` of Disk and VMConfig, the console, vlab's log and the VM panel. The attacker: another
user (``nobody``) reading QEMU's fds, symlinks where vlab once wrote key files, a runtime directory others can
write, ``kill -9`` in the middle of a LUKS creation.

Every secret here carries the marker ``VLAB-PW``, so a leak shows whether it is raw, ``repr``-escaped or cut at
a NUL or newline; base64 and hex forms (of the secret and of what LUKS gets) are looked for as well.
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from vlab.dashboards import VMPanel
from vlab.errors import VlabError
from vlab.host import procfs
from vlab.paths import runtime_dir
from vlab.qemu import VM, Disk, VMConfig
from vlab.qemu.disks import BYTES_PREFIX, create_image, luks_passphrase, passphrase_opens

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

MARK = "VLAB-PW"
#: not UTF-8, QEMU option syntax, a newline and a NUL: QEMU itself takes none of this as a LUKS passphrase
NASTY = b"\xff\xfe VLAB-PW-1,format=base64\n\0id=x\x80"
#: text with option and JSON syntax, a newline and non-ASCII: the wrong passphrase for the NASTY image
WRONG = 'VLAB-PW-2,a,format=base64 "}{\nü'
MEMFD = "/memfd:vlab-secret"


def _traces(secret: str | bytes) -> list[bytes]:
    """The secret, and what LUKS gets from it, raw (the marker), in base64 and in hex."""
    forms = [secret if isinstance(secret, bytes) else secret.encode(), luks_passphrase(secret)]
    return [MARK.encode()] + [base64.b64encode(form) for form in forms] + [form.hex().encode() for form in forms]


TRACES = _traces(NASTY) + _traces(WRONG)


def _leaks(blob: str | bytes) -> list[bytes]:
    """Which traces of the test's secrets ``blob`` holds (none, if nothing leaked)."""
    data = blob if isinstance(blob, bytes) else blob.encode("utf-8", "surrogateescape")
    return [trace for trace in TRACES if trace in data]


def _proc_blob(pid: int) -> bytes:
    """Raw cmdline + environ of ``pid`` (empty once it is gone)."""
    with suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
    return b""


def _holds_secret_fd(pid: int) -> bool:
    with suppress(OSError):
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(MEMFD) for fd in os.listdir(f"/proc/{pid}/fd"))
    return False


def _watch(action: Callable[[], Any]) -> tuple[Any, dict[int, tuple[bytes, bool]]]:
    """Run ``action``; meanwhile poll every descendant's raw cmdline + environ and whether it holds a memfd.

    :returns: what ``action`` returned (its exception is raised), and per pid (cmdline, environ, memfd).
    """
    seen: dict[int, tuple[bytes, bool]] = {}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(action)
        while not future.done():
            for pid in procfs.descendants(os.getpid()):
                blob = _proc_blob(pid) or seen.get(pid, (b"", False))[0]
                seen[pid] = (blob, seen.get(pid, (b"", False))[1] or _holds_secret_fd(pid))
            time.sleep(0.002)
        return future.result(), seen


def _files_with_leaks(*roots: Path) -> list[Path]:
    """Regular files under ``roots`` holding a trace (other VMs' workdirs may vanish meanwhile: skipped)."""
    found = []
    for root in roots:
        for folder, _, names in os.walk(root):
            for path in (Path(folder) / name for name in names):
                with suppress(OSError):
                    if path.is_file() and not path.is_symlink() and _leaks(path.read_bytes()):
                        found.append(path)
    return found


def _error_text(error: VlabError) -> str:
    return "\n".join([str(error), repr(error), str(error.value), error.detail or "", error.fix or ""])


def _panel_text(panel: VMPanel) -> str:
    """Everything the panel shows: its text form and the value of every widget in it."""
    texts, todo = [panel.text()], [panel.widget]
    while todo:
        widget = todo.pop()
        texts += [str(getattr(widget, name, "")) for name in ("value", "description", "tooltip")]
        todo += list(getattr(widget, "children", ()))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def nasty_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, tuple[bytes, bool]]]:
    """A LUKS image made with NASTY, and what every process looked like while qemu-img made it."""
    image = tmp_path_factory.mktemp("luks") / "nasty.qcow2"
    return _watch(lambda: create_image(image, "16M", secret=NASTY, iter_time_ms=10))


# ------------------------------------------------------------------------------------------ any bytes


def test_any_bytes_unlock_their_image_and_no_near_miss_does(
        nasty_image: tuple[Path, dict[int, tuple[bytes, bool]]]) -> None:
    image, seen = nasty_image
    helpers = [blob for blob, _ in seen.values() if blob.startswith(b"qemu-img\0")]
    assert helpers, "qemu-img never ran"
    assert any(holds for blob, holds in seen.values() if blob.startswith(b"qemu-img\0"))  # it read a memfd
    assert [blob for blob, _ in seen.values() if _leaks(blob)] == []
    assert _files_with_leaks(runtime_dir(), image.parent) == []
    assert passphrase_opens(image, NASTY)
    assert passphrase_opens(image, NASTY.decode("utf-8", "surrogateescape"))  # os.fsdecode's str of the bytes
    near_misses: list[str | bytes] = [
        NASTY.split(b"\0")[0],  # what QEMU would have used had vlab passed the bytes as they are
        NASTY.replace(b"\0", b""), NASTY.rstrip(b"\x80"), NASTY + b"\n", NASTY.decode("latin-1"),
        luks_passphrase(NASTY),  # the encoded form is a different passphrase to vlab: one to one
        WRONG,
    ]
    assert [passphrase_opens(image, other) for other in near_misses] == [False] * len(near_misses)


#: the host's cryptsetup (cryptsetup-bin, in binder/apt.txt); /sbin is not on every user's PATH
CRYPTSETUP = shutil.which("cryptsetup") or next(
    (path for path in ("/usr/sbin/cryptsetup", "/sbin/cryptsetup") if os.access(path, os.X_OK)), None)
#: qcow2 header extension "full disk encryption header pointer": where the LUKS header lies in the file
QCOW2_CRYPTO_HEADER = 0x0537BE77


def _luks_header(qcow2: Path) -> bytes:
    """The LUKS header (with its keyslots) that QEMU keeps inside an encrypted qcow2, as bytes cryptsetup reads."""
    data = qcow2.read_bytes()
    assert data[:4] == b"QFI\xfb"
    version = struct.unpack_from(">I", data, 4)[0]
    position = struct.unpack_from(">I", data, 100)[0] if version >= 3 else 72  # header extensions follow
    while True:
        kind, length = struct.unpack_from(">II", data, position)
        assert kind != 0, "no encryption header extension: not a LUKS qcow2"
        if kind == QCOW2_CRYPTO_HEADER:
            offset, size = struct.unpack_from(">QQ", data, position + 8)
            return data[offset:offset + size]
        position += 8 + (length + 7) // 8 * 8


def test_the_hosts_cryptsetup_opens_a_bytes_passphrase_image_with_the_documented_bytes_only(
        nasty_image: tuple[Path, Any], tmp_path: Path) -> None:
    """Issue 12: ``luks_passphrase(secret)`` is the passphrase another LUKS tool needs, byte for byte."""
    if CRYPTSETUP is None:
        pytest.skip("cryptsetup is not installed on the host: apt-get install cryptsetup-bin (binder/apt.txt)")
    header = tmp_path / "luks-header.img"  # QEMU's LUKS1 header; --test-passphrase needs nothing else
    header.write_bytes(_luks_header(nasty_image[0]))

    def opens(key: bytes) -> bool:
        # --key-file=-: every byte of stdin is the passphrase (no newline handling), and it is on no command line
        done = subprocess.run([CRYPTSETUP, "open", "--test-passphrase", "--key-file=-", str(header)], input=key,
                              capture_output=True, timeout=60, check=False)
        assert done.returncode in (0, 2), done.stderr  # 2: "No key available with this passphrase."
        return done.returncode == 0

    assert opens(luks_passphrase(NASTY))
    near_misses = [NASTY, luks_passphrase(NASTY) + b"\n", base64.b64encode(NASTY), luks_passphrase(WRONG)]
    assert [opens(key) for key in near_misses] == [False] * len(near_misses)


def test_text_qemu_takes_is_the_luks_passphrase_as_it_is() -> None:
    # so cryptsetup opens vlab's images with the same text; only what QEMU refuses is encoded
    assert luks_passphrase("correct horse, battery=staple\n") == b"correct horse, battery=staple\n"
    assert luks_passphrase("ü".encode()) == luks_passphrase("ü") == "ü".encode()
    for raw in (NASTY, b"a\0b", b"\xff", BYTES_PREFIX + b"/w=="):
        encoded = luks_passphrase(raw)
        assert encoded == BYTES_PREFIX + base64.b64encode(raw) and b"\0" not in encoded
        encoded.decode("utf-8")  # what QEMU takes


@pytest.mark.parametrize("secret", [b"", "", 5, 5.5, bytearray(b"VLAB-PW"), ["VLAB-PW"],
                                    "VLAB-PW" * 600, "VLAB-PW\ud800"], ids=repr)
def test_refused_passphrases_name_the_field_and_never_the_value(secret: Any, tmp_path: Path) -> None:
    image = tmp_path / "plain.img"
    image.write_bytes(b"\0" * 65536)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("secret", lambda: create_image(tmp_path / "e.qcow2", "16M", secret=secret)),
        ("disks.secret", lambda: Disk(image, secret=secret))]
    for field, call in calls:
        with pytest.raises(VlabError) as caught:
            call()
        assert caught.value.field == field and caught.value.value == "<hidden>" and caught.value.fix
        assert _leaks(_error_text(caught.value)) == []
    assert [p.name for p in tmp_path.iterdir()] == ["plain.img"]


# ------------------------------------------------------------------------------------------ never shown


def test_errors_of_qemu_img_and_qemu_never_quote_the_passphrase(
        config: VMConfig, nasty_image: tuple[Path, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vlab")
    raw = tmp_path / "plain.img"
    raw.write_bytes(b"\0" * 65536)
    with pytest.raises(VlabError) as caught:
        passphrase_opens(raw, NASTY)  # qemu-img fails: a raw image takes no key
    assert caught.value.field == "qemu-img" and _leaks(_error_text(caught.value)) == []

    wrong = config.replace(disks=(Disk(nasty_image[0], secret=WRONG),))
    with pytest.raises(VlabError) as caught:
        VM(wrong).start(cold=True)  # the key on QEMU's command line: -object secret,file=/proc/self/fd/N
    assert "Invalid password" in _error_text(caught.value)  # QEMU read the memfd, and the key was wrong
    assert _leaks(_error_text(caught.value)) == []

    with VMPanel(VM(wrong)) as panel:  # restored: the key is hot-plugged over QMP (object-add, blockdev-add)
        panel.act("start")
        assert panel.action_error and "start" in panel.action_error
        assert _leaks(_panel_text(panel)) == []
    assert _leaks(caplog.text) == []
    assert _files_with_leaks(runtime_dir()) == []


def test_a_guest_on_a_bytes_passphrase_and_nowhere_it_shows(
        config: VMConfig, nasty_image: tuple[Path, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vlab")
    disk = Disk(nasty_image[0], secret=NASTY)
    machine = config.replace(name="luks-guest", disks=(disk,))
    assert _leaks(repr(disk) + repr(machine) + str(machine) + machine.shell_command()) == []
    with VM(machine) as vm, VMPanel(vm) as panel:
        assert vm.pid is not None and vm.workdir is not None
        assert vm.console.run("echo secret-ok > /dev/vda && sync && head -c 9 /dev/vda").output == "secret-ok"
        qemu = vm.pid
        assert _leaks(Path(f"/proc/{qemu}/cmdline").read_bytes() + Path(f"/proc/{qemu}/environ").read_bytes()) == []
        keys = [f"/proc/{qemu}/fd/{fd}" for fd in os.listdir(f"/proc/{qemu}/fd")
                if os.readlink(f"/proc/{qemu}/fd/{fd}").startswith(MEMFD)]
        assert len(keys) == 1 and os.stat(keys[0]).st_mode & 0o777 == 0o600
        if os.geteuid() == 0:  # another user cannot read QEMU's copy
            other = subprocess.run(["cat", keys[0]], capture_output=True, preexec_fn=_as_nobody, cwd="/")
            assert other.returncode != 0 and other.stdout == b""
        panel.refresh(force=True)
        shown = [repr(vm), vm.console.text(), " ".join(vm.argv), _panel_text(panel)]
        assert [text[:80] for text in shown if _leaks(text)] == []
        assert _files_with_leaks(runtime_dir()) == []
    assert b"secret-ok" not in nasty_image[0].read_bytes()  # ciphertext on the host
    assert _leaks(caplog.text) == [] and _files_with_leaks(runtime_dir()) == []


def _as_nobody() -> None:  # pragma: no cover - runs in the forked child
    user = pwd.getpwnam("nobody")
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


# ------------------------------------------------------------------------------------------ attacker


def test_symlinks_where_key_files_once_went_are_not_followed(
        nasty_image: tuple[Path, Any], tmp_path: Path) -> None:
    """vlab once wrote ``luks<pid>-<n>.key`` into the runtime dir; now no passphrase goes to any path."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"VICTIM")
    dead = subprocess.Popen(["true"])
    dead.wait()
    base = runtime_dir()
    planted = [base / f"luks{pid}-{n}.key" for pid in (os.getpid(), dead.pid) for n in range(4)]
    legacy = base / f"luks{dead.pid}-9.key"  # a real key file a killed older vlab left
    try:
        for link in planted:
            link.symlink_to(victim)
        legacy.write_bytes(b"old key")
        create_image(tmp_path / "plain.qcow2", "1M")  # sweeps the runtime dir for dead key files
        assert passphrase_opens(nasty_image[0], NASTY)
        assert victim.read_bytes() == b"VICTIM"
        assert all(link.is_symlink() and link.readlink() == victim for link in planted)  # untouched
        assert not legacy.exists()
    finally:
        for link in planted:
            link.unlink(missing_ok=True)
        legacy.unlink(missing_ok=True)


def test_a_runtime_dir_others_could_write_is_refused_before_a_secret_moves(
        config: VMConfig, nasty_image: tuple[Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o770)  # the group could plant files or read what vlab leaves
    monkeypatch.setenv("VLAB_RUNTIME", str(shared))
    attempts: list[Callable[[], Any]] = [
        lambda: create_image(tmp_path / "new.qcow2", "16M", secret=NASTY, iter_time_ms=10),
        lambda: VM(config.replace(disks=(Disk(nasty_image[0], secret=NASTY),))).start(cold=True),
    ]
    for attempt in attempts:
        with pytest.raises(VlabError) as caught:
            _watch(attempt)
        assert caught.value.field == "runtime_dir" and "VLAB_RUNTIME" in (caught.value.fix or "")
        assert _leaks(_error_text(caught.value)) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["run"]


KILLED_CREATOR = """
import sys
from vlab.qemu.disks import create_image
secret = sys.stdin.buffer.read()  # not in argv: the test looks there
create_image(sys.argv[1], "16M", secret=secret, iter_time_ms=30000)
"""


def test_a_killed_luks_creation_leaves_no_secret_and_no_qemu_img(tmp_path: Path) -> None:
    creator = subprocess.Popen([sys.executable, "-c", KILLED_CREATOR, str(tmp_path / "enc.qcow2")],
                               stdin=subprocess.PIPE)
    assert creator.stdin is not None
    creator.stdin.write(NASTY)
    creator.stdin.close()
    deadline = time.monotonic() + 30
    helpers: set[int] = set()
    watched: list[bytes] = []  # a qemu-img seen alive after its cmdline was read and while it held the memfd
    while time.monotonic() < deadline and not watched:  # qemu-img may be retried: any one of them will do
        for pid in {p for p in procfs.descendants(creator.pid) if _proc_blob(p).startswith(b"qemu-img\0")}:
            helpers.add(pid)
            blob = _proc_blob(pid)
            if blob and _holds_secret_fd(pid) and procfs.alive(pid):
                watched.append(blob)
        time.sleep(0.02)
    assert watched, "qemu-img never ran holding the memfd"
    assert _leaks(b"".join(watched) + _proc_blob(creator.pid)) == []  # the key is in a memfd, nowhere else
    assert _files_with_leaks(runtime_dir(), tmp_path) == []
    os.kill(creator.pid, signal.SIGKILL)
    creator.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(procfs.alive(p) for p in helpers):
        time.sleep(0.05)
    assert not any(procfs.alive(p) for p in helpers)  # qemu-img died with its owner, and the memfd with both
    assert list(runtime_dir().glob(f"luks{creator.pid}-*")) == []
    assert _files_with_leaks(runtime_dir(), tmp_path) == []
    # at most the half-made image (between two qemu-img attempts not even that), and no key in it (above)
    assert {p.name for p in tmp_path.iterdir()} <= {f".enc.qcow2.tmp{creator.pid}"}
    create_image(tmp_path / "other.qcow2", "1M")
    assert [p.name for p in tmp_path.iterdir()] == ["other.qcow2"]  # the next run removes the dead temp
