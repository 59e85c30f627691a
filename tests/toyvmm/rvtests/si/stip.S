# sip.STIP shows a pending timer whatever sie.STIE is; a pending, enabled timer interrupt is
# taken right after sstatus.SIE is set and right after an sret that sets it. Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, record_trap; csrw stvec, t0; li s8, 4
        csrw sie, zero
        li t0, -1
        csrw CSR_STIMECMP, t0
        TEST_CASE(2, a0, 0, csrr a0, sip; andi a0, a0, 0x20)
        csrw CSR_STIMECMP, zero                           # due now
        TEST_CASE(3, a0, 0x20, csrr a0, sip; andi a0, a0, 0x20)
        li s11, 0
        li t0, 0x20
        csrw sie, t0
        TEST_CASE(4, s11, 0, nop)
        csrsi sstatus, SSTATUS_SIE
after_sie:
        TEST_CASE(5, s11, (1 << 63) | 5, nop)
        TEST_CASE(6, s9, 0, la t0, after_sie; sub s9, s9, t0)
        # the handler cleared sie; re-arm (SIE off) and return with sret into SIE=1
        csrci sstatus, SSTATUS_SIE
        li s11, 0
        li t0, 0x20
        csrw sie, t0
        li t0, SSTATUS_SPIE | SSTATUS_SPP
        csrs sstatus, t0
        la t0, after_sret
        csrw sepc, t0
        sret
after_sret:
        TEST_CASE(7, s11, (1 << 63) | 5, nop)
        TEST_CASE(8, s9, 0, la t0, after_sret; sub s9, s9, t0)
        csrci sstatus, SSTATUS_SIE
        li t0, -1
        csrw CSR_STIMECMP, t0
        TEST_PASSFAIL
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
RVTEST_DATA_END
