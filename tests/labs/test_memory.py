"""Lab 03 logic: seeded page tables checked against the toy VMM's walker, real paging runs, sharing, a balloon."""

from __future__ import annotations

import dataclasses
import time

import pytest

from vlab.errors import VlabError
from vlab.labs import memory as lab
from vlab.toyvmm import handlers
from vlab.toyvmm.exits import Exit, ExitReason
from vlab.toyvmm.isa import CSR
from vlab.toyvmm.mmu import walk


class DictMemory:
    """The toy VMM's walker reads guest memory through ``read_u64``: serve it from a PTE dict."""

    def __init__(self, words: dict[int, int]) -> None:
        self.words = words

    def read_u64(self, address: int) -> int:
        return self.words.get(address, 0)


@pytest.mark.parametrize("seed", [1, 2, 3, 99])
def test_random_tables_agree_with_the_vmms_walker(seed: int) -> None:
    case = lab.random_sv39(seed, mappings=20, holes=6)
    for va, expected in case.expected.items():
        assert walk(DictMemory(case.memory), case.satp, va).gpa == expected  # type: ignore[arg-type]


def test_random_tables_have_superpages_and_holes() -> None:
    levels = set()
    for seed in range(5):
        case = lab.random_sv39(seed)
        assert sum(pa is None for pa in case.expected.values()) == 4
        levels |= {lab._LEVEL_SHIFTS.index(shift) for shift in _leaf_shifts(case)}
    assert levels == {0, 1, 2}


def _leaf_shifts(case: lab.Sv39Case) -> set[int]:
    return {12 + 9 * (3 - walk(DictMemory(case.memory), case.satp, va).pte_reads)  # type: ignore[arg-type]
            for va, pa in case.expected.items() if pa is not None}


def test_memdirty_guest_table_maps_its_ram_one_to_one() -> None:
    memory, satp = lab.guest_page_table("memdirty")
    assert satp >> 60 == 8
    reader = DictMemory(memory)
    assert walk(reader, satp, 0x80040123).gpa == 0x80040123  # type: ignore[arg-type]
    assert walk(reader, satp, 0x10000000).gpa == 0x10000000  # type: ignore[arg-type]
    assert walk(reader, satp, 0x80100000).gpa is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "m"), [(3, 3), (4, 4), (3, 2), (4, 3)])
def test_nested_walks_cost_n_plus_1_times_m_plus_1_minus_1(n: int, m: int) -> None:
    program = lab.paging_program(8, 2, update=False, levels=n)
    run = lab.measure_paging(program, "nested", guest_levels=n, nested_levels=m)
    assert run.nested_walks > 0 and run.shadow_fills == 0
    assert run.nested_refs == run.nested_walks * ((n + 1) * (m + 1) - 1)


def test_satp_reloads_make_shadow_paging_exit_and_tlb_misses_make_nested_walk() -> None:
    update = lab.paging_program(32, 8, update=True)
    tlb = lab.paging_program(32, 8, update=False)
    shadow_update, shadow_tlb = lab.measure_paging(update, "shadow"), lab.measure_paging(tlb, "shadow")
    assert shadow_update.shadow_fills > 5 * shadow_tlb.shadow_fills
    assert shadow_update.exits["SHADOW_FILL"] >= shadow_update.shadow_fills
    nested_tlb = lab.measure_paging(tlb, "nested")
    assert nested_tlb.nested_walks >= shadow_tlb.tlb_fills - 5  # the same misses, each a 2-D walk


@pytest.mark.parametrize("seed", range(24))
def test_seeded_costs_make_each_mode_win_one_workload(seed: int) -> None:
    p = lab.params_for(seed)
    exit_cycles: int = p["exit_cycles"]
    ref_cycles: int = p["ref_cycles"]

    def cycles(run: lab.PagingRun) -> int:
        if run.mode == "shadow":  # an exit per fill, its PTE reads, and a 1-D walk of the shadow table per TLB miss
            refs = run.guest_pte_reads + run.tlb_fills * run.guest_levels
            return run.shadow_fills * exit_cycles + refs * ref_cycles
        return run.nested_refs * ref_cycles

    for update, winner in ((True, "nested"), (False, "shadow")):
        program = lab.paging_program(p["pages"], p["rounds"], update=update)
        costs = {mode: cycles(lab.measure_paging(program, mode)) for mode in ("shadow", "nested")}
        assert min(costs, key=costs.__getitem__) == winner


def test_paging_program_rejects_bad_shapes() -> None:
    with pytest.raises(VlabError):
        lab.paging_program(0, 1, update=False)
    with pytest.raises(VlabError):
        lab.paging_program(8, 1, update=True, levels=4)
    with pytest.raises(VlabError):
        lab.paging_program(8, 1, update=False, levels=5)


@pytest.mark.parametrize(("guests", "fill", "written"), [(3, 8, 2), (5, 12, 4)])
def test_sharing_collapses_identical_guests_and_cow_copies_all_but_the_last_writer(
        guests: int, fill: int, written: int) -> None:
    result = lab.sharing_experiment(guests, fill, written, repeats=1)
    assert result.frames_before == result.guest_pages
    assert result.frames_shared == fill + 2  # the fill pages, the program page, one zero page
    assert result.cow_copies == (guests - 1) * written
    assert result.frames_after_writes == fill + 2 + (guests - 1) * written
    assert result.saved_bytes == (result.guest_pages - fill - 2) * 4096


def test_parse_free_reads_busybox_and_procps_output() -> None:
    busybox = "              total        used        free      shared  buff/cache   available\n" \
              "Mem:            218          17         189           3          12         192\n"
    assert lab.parse_free(busybox) == (218, 17, 189)
    with pytest.raises(VlabError, match="Mem:"):
        lab.parse_free("free: not found")


@pytest.mark.slow
@pytest.mark.qemu
def test_balloon_shrinks_the_guests_total_and_qemus_rss() -> None:
    from vlab import VM

    try:
        vm = VM(mem=256, balloon=True)
    except VlabError as exc:  # no built guest image on this host
        pytest.skip(str(exc))
    with vm:
        lab.fill_guest_memory(vm, 128)
        steps = lab.balloon_steps(vm, [256, 128])
    assert abs((steps[0].guest_total_mib - steps[1].guest_total_mib) - 128) <= 3
    assert steps[1].balloon_mib == 128
    assert steps[1].host_rss_mib < steps[0].host_rss_mib - 32


# ---------------------------------------------------------------- the student's shadow fill and 2-D walk


def fill(exit: Exit, ptes: lab.GuestPTEs) -> None:
    """A right shadow fill (lab 03's q2), Sv39 and Sv48."""
    satp, va = exit.vcpu.csrs[CSR.SATP], exit.addr
    table = (satp & ((1 << 44) - 1)) << 12
    for level in range((satp >> 60) - 6, -1, -1):
        shift = 12 + 9 * level
        address = table + ((va >> shift) & 511) * 8
        pte = ptes.get(address, 0)
        if not pte & 1:
            return
        if pte & 0b1010:
            gpa = (((pte >> 10) & ((1 << 44) - 1)) << 12) | (va & ((1 << shift) - 1))
            exit.vcpu.shadow[va >> 12] = (gpa >> 12, pte & 0xFF, address)
            return
        table = ((pte >> 10) & ((1 << 44) - 1)) << 12


def walk_2d(host: lab.HostTable, satp: int, va: int) -> int | None:
    """A right 2-D walk (lab 03's q3)."""
    table = (satp & ((1 << 44) - 1)) << 12
    for level in range((satp >> 60) - 6, -1, -1):
        shift = 12 + 9 * level
        hpa = host.host_walk(table + ((va >> shift) & 511) * 8)
        pte = 0 if hpa is None else host.read(hpa)
        if not pte & 1:
            return None
        if pte & 0b1010:
            return host.host_walk((((pte >> 10) & ((1 << 44) - 1)) << 12) | (va & ((1 << shift) - 1)))
        table = ((pte >> 10) & ((1 << 44) - 1)) << 12
    return None


@pytest.mark.parametrize("seed", [1, 2, 77])
def test_the_shadow_test_guest_runs_alike_on_the_vmms_fill_a_right_fill_and_nested_paging(seed: int) -> None:
    program = lab.shadow_test_program(seed)
    reference = lab.run_shadow_guest(program)
    assert (reference.state, reference.exit_code, reference.violations) == ("halted", 0, 0)
    assert reference.mailbox[1] == 6  # 3 loads from non-present pages, 3 stores to read-only ones
    assert reference.mailbox[3] == 9 + 6 * 256  # A on the 9 present pages, D on the 6 writable ones
    assert lab.run_shadow_guest(program, fill) == reference
    nested = lab.run_nested_guest(program)
    mine = lab.run_nested_guest(program, walk_2d)
    assert nested["mailbox"] == mine["mailbox"] == reference.mailbox and nested == mine


@pytest.mark.parametrize(("n", "m"), [(3, 2), (4, 4)])
def test_the_students_2d_walk_gives_the_vmms_counts(n: int, m: int) -> None:
    program = lab.paging_program(8, 2, update=False, levels=n)
    theirs = lab.measure_paging(program, "nested", guest_levels=n, nested_levels=m, walk_2d=walk_2d)
    assert theirs == dataclasses.replace(lab.measure_paging(program, "nested", guest_levels=n, nested_levels=m),
                                         seconds=theirs.seconds)


def test_a_fill_that_only_calls_the_vmms_own_is_refused() -> None:
    def delegates(exit: Exit, ptes: lab.GuestPTEs) -> None:
        handlers.shadow_fill(exit)

    with pytest.raises(VlabError, match="shadow-table fill is the part you write"):
        lab.run_shadow_guest("memdirty", delegates)


def test_a_fill_that_raises_surfaces_with_the_handler_named() -> None:
    def raises(exit: Exit, ptes: lab.GuestPTEs) -> None:
        raise ZeroDivisionError("oops")

    with pytest.raises(ZeroDivisionError) as caught:
        lab.run_shadow_guest(lab.shadow_test_program(1), raises)
    assert any("SHADOW_FILL exit handler" in note for note in caught.value.__notes__)


def test_a_fill_outside_the_guest_is_refused_and_the_neighbour_untouched() -> None:
    """The shadow entry names a guest-physical page past the guest's RAM, where a neighbour's frames are: the
    p2m check refuses it (an isolation violation) and the neighbour's memory is unchanged."""
    from vlab.toyvmm import Machine

    def escapes(exit: Exit, ptes: lab.GuestPTEs) -> None:
        fill(exit, ptes)
        if exit.addr >> 12 == 0x80040:  # memdirty's buffer: point it at the next guest's first page
            entry = exit.vcpu.shadow[exit.addr >> 12]
            exit.vcpu.shadow[exit.addr >> 12] = (entry[0] + 256, entry[1], entry[2])

    machine = Machine(paging="shadow")
    try:
        machine.handlers.withhold(ExitReason.SHADOW_FILL, lab.shadow_fill_hook(escapes))
        attacker = machine.add_guest(lab.paging_program(4, 2, update=True), name="attacker")
        victim = machine.add_guest("compute", name="victim")
        before = bytes(victim.memory.read(victim.memory.base, 4096) or b"")
        machine.run(ms=20)
        assert machine.violations and all(v.guest == "attacker" for v in machine.violations)
        assert attacker.state.value == "halted" and attacker.exit_code == 139  # its kernel killed the user program
        assert victim.memory.read(victim.memory.base, 4096) == before
    finally:
        machine.close()


@pytest.mark.parametrize("entry", [(1.5, 0xCF, 0x80012000), (-1, 0xCF, 0x80012000), "page", (0x80040, 0xCF)])
def test_a_malformed_shadow_entry_is_refused_by_name(entry: object) -> None:
    def malformed(exit: Exit, ptes: lab.GuestPTEs) -> None:
        exit.vcpu.shadow[exit.addr >> 12] = entry  # type: ignore[assignment]  # what a student may write

    with pytest.raises(VlabError, match="a shadow entry is"):
        lab.run_shadow_guest(lab.shadow_test_program(1), malformed)


def test_a_fill_that_never_fills_ends_within_its_bound() -> None:
    started = time.perf_counter()
    run = lab.run_shadow_guest(lab.shadow_test_program(1), lambda exit, ptes: None, ms=20)
    assert run.state != "halted" or run.exit_code != 0
    assert time.perf_counter() - started < 10


def test_a_fill_that_reads_without_end_is_stopped() -> None:
    def loops(exit: Exit, ptes: lab.GuestPTEs) -> None:
        while True:
            ptes.get(0x80010000)

    with pytest.raises(VlabError, match="more guest PTEs than any walk"):
        lab.run_shadow_guest(lab.shadow_test_program(1), loops)


def test_a_2d_walk_must_translate_before_it_reads_and_agree_with_the_vmm() -> None:
    def reads_guest_physical(host: lab.HostTable, satp: int, va: int) -> int | None:
        return host.read((satp & ((1 << 44) - 1)) << 12)

    with pytest.raises(VlabError, match="read\\(\\) takes a host-physical address"):
        lab.run_nested_guest("memdirty", reads_guest_physical)

    def forgets_the_data(host: lab.HostTable, satp: int, va: int) -> int | None:
        hpa = walk_2d(host, satp, va)
        return None if hpa is None else va

    with pytest.raises(VlabError, match="walk_2d translated va"):
        lab.run_nested_guest("memdirty", forgets_the_data)

    def loops(host: lab.HostTable, satp: int, va: int) -> int | None:
        while True:
            host.host_walk(0x80010000)

    with pytest.raises(VlabError, match="more memory references"):
        lab.run_nested_guest("memdirty", loops)
