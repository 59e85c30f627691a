# ebreak raises a breakpoint exception (scause 3) with sepc at the ebreak. Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, record_trap; csrw stvec, t0; li s8, 4
        li s11, 0
brk:    ebreak
        TEST_CASE(2, s11, 3, nop)
        TEST_CASE(3, s9, 0, la t0, brk; sub s9, s9, t0)
        TEST_PASSFAIL
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
RVTEST_DATA_END
