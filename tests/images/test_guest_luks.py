"""LUKS inside the guest (lab 05): the guest's own cryptsetup encrypts a plain virtio disk.

The passphrase is typed at cryptsetup's prompt on the serial console, as a student types it: it is on no
command line (QEMU's or the guest's) and in no host log. The guest formats (LUKS2) and opens the raw disk
and writes a secret through ``/dev/mapper/x``; then the host finds only ciphertext in the disk file, while
a dump of guest RAM (QMP ``pmemsave``) holds the plaintext (the block device's page cache) and both halves
of the XTS volume key, each at the start of its expanded AES key schedule (dm-crypt's two AES contexts:
the data key and the tweak key).

PBKDF choice: ``--pbkdf pbkdf2 --pbkdf-force-iterations 1000`` (cryptsetup's minimum for PBKDF2). Under TCG
``--iter-time`` costs about a second per benchmark, and luksFormat runs two (volume-key digest and keyslot),
with noisy results; argon2id, even at its minimum (4 iterations, 32 MiB) takes about 4 s to format and 2 s
to open, and its default memory cost (half the guest's RAM) would crowd a 256 MiB guest whose root is
tmpfs. A lab shows what encryption protects against, not resistance to a brute-force attack.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from vlab.errors import VlabError
from vlab.qemu import VM, Disk, VMConfig, default_initrd, default_kernel
from vlab.qemu.console import CommandResult, Console

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PASSPHRASE = "lab05 Correct-Horse 7"
SECRET = b"VLAB-LUKS-PLAINTEXT-4f1c9a"
FORMAT = "cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 /dev/vda"
LUKS2_MAGIC = b"LUKS\xba\xbe\x00\x02"
PROMPT = re.compile(r"Enter passphrase for [^\n]*: ")


def type_at_prompt(console: Console, command: str, passphrase: str, timeout: float = 60.0) -> CommandResult:
    """Run ``command`` in the guest and type ``passphrase`` at cryptsetup's prompt, as a person would."""
    start = console.position
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(console.run, command, timeout)
        try:
            console.wait_for(PROMPT, 30, since=start)
            # cryptsetup prints the prompt, then turns echo off with TCSAFLUSH, which drops input typed before:
            # a person never types that fast, so neither does the test
            time.sleep(0.5)
            console.send(passphrase + "\n")
        finally:
            result = future.result()
    return result


def aes256_schedule(key: bytes) -> bytes:
    """The 240-byte expanded AES-256 encryption key (FIPS-197), as the kernel's ``crypto_aes_ctx.key_enc``
    stores it on x86 (little-endian words of the key's bytes in order, so it starts with the key itself)."""
    sbox = [0] * 256
    p = q = 1
    while True:  # the S-box from the multiplicative inverse in GF(2^8) and the affine map
        p = p ^ ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)
        for shift in (1, 2, 4):
            q ^= q << shift
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09
        rotated = q ^ ((q << 1) | (q >> 7)) ^ ((q << 2) | (q >> 6)) ^ ((q << 3) | (q >> 5)) ^ ((q << 4) | (q >> 4))
        sbox[p] = (rotated ^ 0x63) & 0xFF
        if p == 1:
            break
    sbox[0] = 0x63
    words = [list(key[i:i + 4]) for i in range(0, 32, 4)]
    rcon = 1
    for i in range(8, 60):
        word = list(words[i - 1])
        if i % 8 == 0:
            word = [sbox[b] for b in word[1:] + word[:1]]
            word[0] ^= rcon
            rcon = (rcon << 1) ^ (0x11B if rcon & 0x80 else 0)
        elif i % 8 == 4:
            word = [sbox[b] for b in word]
        words.append([a ^ b for a, b in zip(words[i - 8], word, strict=True)])
    return bytes(b for word in words for b in word)


@dataclass
class Guest:
    vm: VM
    disk: Path
    work: Path
    formatted: CommandResult
    logs: list[str]


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(self.format(record))


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """A VM with a blank 64 MiB raw disk (no overlay: the guest writes the file itself), LUKS2-formatted by
    the guest's cryptsetup with the passphrase typed at its prompt."""
    try:
        default_kernel(), default_initrd()
    except VlabError as exc:
        pytest.skip(f"guest images not built: {exc}")
    work = tmp_path_factory.mktemp("luks-guest")
    disk = work / "blank.img"
    with disk.open("wb") as blank:
        blank.truncate(64 << 20)
    logs: list[str] = []
    handler = _Collect(logs)
    logger = logging.getLogger("vlab")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with VM(VMConfig(accel="tcg", name="luks-in-guest", disks=(Disk(disk, overlay=False),))) as vm:
            if "cryptsetup" not in vm.console.run("command -v cryptsetup").output:
                pytest.skip("the guest image has no cryptsetup: rebuild it (vlab images build)")
            formatted = type_at_prompt(vm.console, FORMAT, PASSPHRASE)
            yield Guest(vm, disk, work, formatted, logs)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_the_guests_cryptsetup_formats_the_raw_disk_as_luks2(guest: Guest) -> None:
    assert guest.formatted.status == 0, guest.formatted.output
    assert guest.disk.read_bytes()[:8] == LUKS2_MAGIC  # the guest wrote the header straight into the file
    dump = guest.vm.console.run("cryptsetup luksDump /dev/vda")
    assert dump.status == 0 and "cipher: aes-xts-plain64" in dump.output and "PBKDF:      pbkdf2" in dump.output
    # dm-crypt's modules came on demand, with the first cryptsetup call (the boot does not pay for them)
    loaded = guest.vm.console.run("cat /proc/modules").output
    assert all(f"{name} " in loaded for name in ("dm_mod", "dm_crypt", "xts", "ecb", "algif_skcipher"))


def test_a_wrong_passphrase_is_refused_clearly(guest: Guest) -> None:
    refused = type_at_prompt(guest.vm.console, "cryptsetup open --tries 1 /dev/vda wrong", "not the passphrase")
    assert refused.status == 2, refused.output  # cryptsetup's exit code for "no key available" (EPERM)
    assert "No key available with this passphrase." in refused.output
    assert guest.vm.console.run("test -e /dev/mapper/wrong").status == 1


def test_the_host_sees_ciphertext_while_guest_ram_holds_the_plaintext_and_the_volume_key(guest: Guest) -> None:
    vm, console = guest.vm, guest.vm.console
    opened = type_at_prompt(console, "cryptsetup open --tries 1 /dev/vda x", PASSPHRASE)
    assert opened.status == 0, opened.output
    written = console.run(f"printf '%s' '{SECRET.decode()}' | dd of=/dev/mapper/x conv=fsync 2>/dev/null && "
                          f"head -c {len(SECRET)} /dev/mapper/x")
    assert written.status == 0 and written.output == SECRET.decode()

    dumped = type_at_prompt(console, "cryptsetup luksDump --dump-volume-key --batch-mode /dev/vda", PASSPHRASE)
    assert dumped.status == 0, dumped.output
    key = bytes.fromhex("".join(re.findall(r"\b[0-9a-f]{2}\b", dumped.output.split("MK dump:")[1])))
    assert len(key) == 64  # aes-xts-plain64, 512 bits: the data key, then the tweak key
    halves = {"data key": key[:32], "tweak key": key[32:]}

    image = guest.disk.read_bytes()
    assert image[:8] == LUKS2_MAGIC and SECRET not in image
    assert [name for name, half in halves.items() if half in image] == []  # the keyslot holds it encrypted only

    ram_file = guest.work / "ram.bin"
    try:
        vm.qmp("pmemsave", val=0, size=vm.config.mem << 20, filename=str(ram_file))
        ram = ram_file.read_bytes()
    finally:
        ram_file.unlink(missing_ok=True)  # 256 MiB: not left for pytest's kept temp directories
    assert len(ram) == vm.config.mem << 20
    assert SECRET in ram
    # dm-crypt keeps one AES context per half (aes_generic: TCG's default CPU has no AES-NI); each expanded
    # encryption key starts with the raw half, so the key is in RAM for anyone who can read it
    assert [name for name, half in halves.items() if half not in ram] == []
    assert [name for name, half in halves.items() if aes256_schedule(half) not in ram] == []

    # the passphrase went to the guest by typing only: not on QEMU's command line, in its environment, in the
    # console transcript (echo off), in vlab's log or in the VM's files on the host
    typed = PASSPHRASE.encode()
    assert vm.pid is not None and vm.workdir is not None
    proc = Path(f"/proc/{vm.pid}/cmdline").read_bytes() + Path(f"/proc/{vm.pid}/environ").read_bytes()
    assert typed not in proc and PASSPHRASE not in " ".join(vm.argv)
    assert PASSPHRASE not in console.text() and not any(PASSPHRASE in line for line in guest.logs)
    for folder, _, names in os.walk(vm.workdir):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                assert typed not in path.read_bytes(), path
    assert typed not in image


def test_aes256_schedule_matches_fips_197() -> None:
    # FIPS-197 appendix A.3: the last round key of the AES-256 example key expansion
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    schedule = aes256_schedule(key)
    assert schedule[:32] == key and schedule[-16:] == bytes.fromhex("fe4890d1e6188d0b046df344706c631e")
