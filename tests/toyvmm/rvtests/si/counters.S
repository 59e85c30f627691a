# Counters: S-mode reads cycle/time/instret; U-mode may read one only while its scounteren bit is
# set (CY = 0, TM = 1, IR = 2), else the read is an illegal instruction. Written for vlab.
#include "env.h"
#include "si/paging.h"
#define PROBE(enable)                                                 \
        li t0, enable; csrw scounteren, t0;                           \
        la s3, 1f; la t0, user_probe; li t1, 0x40000000; add t0, t0, t1; \
        csrw sepc, t0; li t0, SSTATUS_SPP; csrc sstatus, t0; sret;    \
1:
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, counter_trap; csrw stvec, t0
        PT_ON
        la t0, counter_trap; csrw stvec, t0
        TEST_CASE(2, a0, 0, li s11, 0; rdcycle a1; rdtime a1; rdinstret a1; mv a0, s11)
        PROBE(2)
        TEST_CASE(3, s6, 0, nop)
        TEST_CASE(4, s5, 2, nop)
        TEST_CASE(5, s4, 2, nop)
        PROBE(0)
        TEST_CASE(6, s6, 2, nop)
        TEST_CASE(7, s5, 2, nop)
        TEST_CASE(8, s4, 2, nop)
        PROBE(7)
        TEST_CASE(9, s6, 0, nop)
        TEST_CASE(10, s5, 0, nop)
        TEST_CASE(11, s4, 0, nop)
        PROBE(5)
        TEST_CASE(12, s6, 2, nop)
        TEST_CASE(13, s5, 0, nop)
        TEST_CASE(14, s4, 0, nop)
        TEST_PASSFAIL
        .align 2
counter_trap:                                 # U-mode ecall: back to S at s3; else skip the insn
        csrr s11, scause
        li t6, 8
        beq s11, t6, 1f
        csrr t6, sepc; addi t6, t6, 4; csrw sepc, t6; sret
1:      jr s3
user_probe:
        li s11, 0; rdtime a0; mv s6, s11
        li s11, 0; rdcycle a0; mv s5, s11
        li s11, 0; rdinstret a0; mv s4, s11
        ecall
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
