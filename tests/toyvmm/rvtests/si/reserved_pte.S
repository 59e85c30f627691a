# A leaf PTE with a reserved bit set (bits 54..60) makes the access a page fault. Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        PT_LINK
        PT_MAP(0, pt_page, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D)
        la t1, pt_l0; ld t0, 0(t1); li t2, 1; slli t2, t2, 57; or t0, t0, t2; sd t0, 0(t1)
        PT_ON
        li s1, PAGE4K(0)
        TEST_CASE(2, s11, 13, li s11, 0; ld a0, 0(s1))
        TEST_CASE(3, s10, PAGE4K(0), nop)
        TEST_CASE(4, s11, 15, li s11, 0; sd zero, 0(s1))
        TEST_PASSFAIL
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
