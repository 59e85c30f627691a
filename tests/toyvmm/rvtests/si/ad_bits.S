# Accessed/dirty bits: the VMM (like QEMU's hart) sets A on any access and D on a store, in the
# guest's own PTE, and never sets D on a load. Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        PT_LINK
        PT_MAP(0, pt_page, PTE_V | PTE_R | PTE_W)
        PT_ON
        li s1, PAGE4K(0)
        la s2, pt_l0
        TEST_CASE(2, a0, 0, ld a0, 0(s2); andi a0, a0, PTE_A | PTE_D)
        TEST_CASE(3, a1, 0x1111111111111111, ld a1, 0(s1))
        TEST_CASE(4, a0, PTE_A, ld a0, 0(s2); andi a0, a0, PTE_A | PTE_D)
        TEST_CASE(5, a0, PTE_A | PTE_D, li a1, 7; sd a1, 8(s1); ld a0, 0(s2); andi a0, a0, PTE_A | PTE_D)
        TEST_CASE(6, a0, 7, ld a0, 8(s1))
        TEST_CASE(7, s11, 0, li s11, 0)
        TEST_PASSFAIL
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
