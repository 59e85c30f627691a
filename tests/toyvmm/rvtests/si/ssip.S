# Supervisor software interrupts: sip.SSIP is writable from S-mode, the interrupt is taken as soon
# as it is pending and enabled, and wfi wakes on it even with sstatus.SIE clear. Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, record_trap; csrw stvec, t0; li s8, 4
        TEST_CASE(2, a0, 2, csrsi sip, 2; csrr a0, sip; andi a0, a0, 2)
        TEST_CASE(3, a0, 0, csrci sip, 2; csrr a0, sip; andi a0, a0, 2)
        li s11, 0
        csrsi sip, 2
        li t0, 2
        csrw sie, t0
        TEST_CASE(4, s11, 0, nop)                         # SIE clear: not taken
        csrsi sstatus, SSTATUS_SIE
after_enable:
        TEST_CASE(5, s11, (1 << 63) | 1, nop)             # taken right after csrsi
        TEST_CASE(6, s9, 0, la t0, after_enable; sub s9, s9, t0)
        csrci sstatus, SSTATUS_SIE
        csrci sip, 2
        li t0, 2
        csrw sie, t0
        csrsi sip, 2
        wfi                                               # pending & enabled: returns at once
        TEST_CASE(7, a0, 2, csrr a0, sip; andi a0, a0, 2)
        csrci sip, 2
        TEST_PASSFAIL
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
RVTEST_DATA_END
