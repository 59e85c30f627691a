from __future__ import annotations

from tests.toyvmm.toyvmm_guests import kernel_program
from vlab.toyvmm import RAM_BASE, Machine
from vlab.toyvmm.memory import PAGE

BALLOON = kernel_program("""
    li a0, RAM_BASE + 0x80000
    li a1, 16
    HYPERCALL HC_BALLOON_GIVE
    mv s0, a0
    li a0, RAM_BASE + 0x80000
    li a1, 8
    HYPERCALL HC_BALLOON_TAKE
    add s0, s0, a0
    li t0, RAM_BASE + 0x88000
    ld t1, 0(t0)                # still ballooned: faults, the kernel skips it
    li t0, RAM_BASE + 0x80000
    li t1, 5
    sd t1, 0(t0)                # taken back: usable again
    ld a0, 0(t0)
    add a0, s0, a0
    j shutdown
""")


def test_balloon_gives_pages_to_the_host_and_takes_them_back() -> None:
    with Machine() as machine:
        guest = machine.add_guest(BALLOON)
        machine.run(ms=2)
        assert guest.exit_code == 16 + 8 + 5
        report = machine.memory_report()
        assert report.ballooned_pages == 8
        assert report.frames_used == 256 - 8 and report.saved_bytes == 8 * PAGE
        assert [v.addr for v in machine.violations] == [RAM_BASE + 0x88000]


def test_identical_pages_are_shared_across_guests_and_copied_on_write() -> None:
    with Machine() as machine:
        guests = [machine.add_guest("compute", name=f"c{i}") for i in range(3)]
        machine.run(ms=30)
        before = machine.memory_report()
        freed = machine.share_pages()
        after = machine.memory_report()
        # identical deterministic guests: every page is the zero page, the code, or the same data
        assert after.frames_used == before.frames_used - freed == 3
        assert after.saved_bytes == (768 - 3) * PAGE and after.shared_pages == 768
        progress = [g.mailbox() for g in guests]
        machine.run(ms=30)
        assert all(g.mailbox() > p for g, p in zip(guests, progress, strict=True))  # still computing
        # the mailbox page was shared by three: the first two writers copy, the last keeps it
        assert machine.cow_copies == 2
        assert machine.memory_report().frames_used == 5


def test_vmm_side_write_breaks_sharing_instead_of_changing_every_guest() -> None:
    with Machine() as machine:
        a, b = machine.add_guest("hello", name="a"), machine.add_guest("hello", name="b")
        machine.share_pages()
        assert a.memory.p2m[0] == b.memory.p2m[0]
        assert a.memory.write(RAM_BASE, b"\xff\xff\xff\xff")
        assert a.memory.p2m[0] != b.memory.p2m[0]
        assert b.memory.read(RAM_BASE, 4) != b"\xff\xff\xff\xff"


ALIAS = kernel_program("""
    li a0, 0x100000
    call enable_paging
    li t0, PT_L2
    li t1, (RAM_BASE >> 2) | 0xcf     # L2[1]: a 1 GiB alias of RAM at VA 0x40000000
    sd t1, 8(t0)
    call switch_address_space
    li t0, 0x80040000
    li t2, 0x40040000
    ld t1, 0(t2)                      # read through the alias: it is cached read-only (shared)
    li t1, 77
    sd t1, 0(t0)                      # write through the main mapping: copy-on-write
    ld a0, 0(t2)                      # the alias must see the private copy, not the old frame
    j shutdown
""")


def test_copy_on_write_is_seen_through_every_virtual_alias() -> None:
    with Machine() as machine:
        guests = [machine.add_guest(ALIAS, name=name) for name in "ab"]
        machine.share_pages()
        machine.run(ms=5)
        assert [g.exit_code for g in guests] == [77, 77] and machine.cow_copies > 0
