# Faults on compressed instructions at an address = 2 (mod 4) report the exact sepc/stval.
# Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        PT_ON
        li s8, 2
        li a1, 0x40000000                   # not mapped: PT_LINK was not done
        li s11, 0
        .option push
        .option rvc
        .align 2
        c.nop
ld_at:  c.ld a0, 0(a1)                      # load page fault at an address = 2 (mod 4)
        c.mv s6, s11
        c.mv s5, s9
        c.mv s4, s10
brk_at: c.ebreak                            # breakpoint at an address = 2 (mod 4)
        .align 2
        .option pop
        li s8, 4
        TEST_CASE(2, s6, 13, nop)
        TEST_CASE(3, s5, 0, la t0, ld_at; sub s5, s5, t0)
        TEST_CASE(4, s4, 0x40000000, nop)
        TEST_CASE(5, s11, 3, nop)
        TEST_CASE(6, s9, 0, la t0, brk_at; sub s9, s9, t0)
        TEST_PASSFAIL
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
