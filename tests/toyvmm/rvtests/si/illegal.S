# Illegal instructions in S-mode: M-mode instructions and CSRs, unknown CSRs, writes to read-only
# CSRs, an all-zero word; scause = 2, stval = the instruction bits, sepc = its address. Written for vlab.
#include "env.h"
#include "si/paging.h"
#define ILLEGAL(n, word, insn...)                                     \
        TEST_CASE(n, s11, 2, li s11, 0; 1: insn; la t0, 1b; bne s9, t0, fail; li t0, word; bne s10, t0, fail)
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, record_trap; csrw stvec, t0; li s8, 4
        ILLEGAL(2, 0x30200073, mret)
        ILLEGAL(3, 0x30002573, csrr a0, mstatus)
        ILLEGAL(4, 0xc0051073, csrw cycle, a0)
        ILLEGAL(5, 0x5c102573, csrr a0, 0x5c1)
        ILLEGAL(6, 0xffffffff, .word 0xffffffff)
        ILLEGAL(7, 0x60002573, csrr a0, hstatus)
        TEST_PASSFAIL
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
RVTEST_DATA_END
