# Code mapped at virtual address 0 runs. Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        PT_LINK
        la t0, pt_root; ld t1, 8(t0); sd t1, 0(t0)   # root[0] = root[1]: VA 0 = PAGE4K(0)
        PT_MAP(0, zero_code, PTE_V | PTE_X | PTE_A)
        PT_ON
        TEST_CASE(2, a0, 42, li a0, 0; li s11, 0; la t0, zero_code; li t1, 0xfff; and t0, t0, t1; jalr t0)
        TEST_CASE(3, s11, 0, nop)
        TEST_PASSFAIL
        PT_HANDLER
        .align 12
zero_code:
        li a0, 42
        ret
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
