"""Lab 03 logic: seeded page tables checked against the toy VMM's walker, real paging runs, sharing, a balloon."""

from __future__ import annotations

import pytest

from vlab.errors import VlabError
from vlab.labs import memory as lab
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
        if run.mode == "shadow":
            return run.shadow_fills * exit_cycles + run.guest_pte_reads * ref_cycles
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
