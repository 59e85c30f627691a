# Counters: S-mode reads cycle/time/instret/hpmcounter3; U-mode may read one only while its
# scounteren bit is set (CY = 0, TM = 1, IR = 2, HPM3 = 3), else the read is an illegal instruction
# with stval = the instruction. The same code is run under several scounteren values; the i-forms,
# a read at an address 2 mod 4, one that runs on into the next page, and one written into code that
# already ran (then fence.i) are checked too. Written for vlab.
#include "env.h"
#include "si/paging.h"
#define PROBE(enable, code)                                           \
        li t0, enable; csrw scounteren, t0;                           \
        la s3, 1f; la t0, code; li t1, 0x40000000; add t0, t0, t1;    \
        csrw sepc, t0; li t0, SSTATUS_SPP; csrc sstatus, t0; sret;    \
1:
#define RDCYCLE_A0 0xc0002573
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, counter_trap; csrw stvec, t0
        PT_ON
        la t0, counter_trap; csrw stvec, t0
        TEST_CASE(2, a0, 0, li s11, 0; rdcycle a1; rdtime a1; rdinstret a1; csrr a1, hpmcounter3; mv a0, s11)
        TEST_CASE(3, a0, 0, li s11, 0; csrrsi a1, cycle, 0; csrrci a1, instret, 0; mv a0, s11)
        PROBE(2, user_probe)
        TEST_CASE(4, s6, 0, nop)
        TEST_CASE(5, s5, 2, nop)
        TEST_CASE(6, s4, 2, nop)
        TEST_CASE(7, s7, 2, nop)
        TEST_CASE(8, s2, RDCYCLE_A0, nop)
        PROBE(0, user_probe)
        TEST_CASE(9, s6, 2, nop)
        TEST_CASE(10, s5, 2, nop)
        TEST_CASE(11, s4, 2, nop)
        TEST_CASE(12, s7, 2, nop)
        PROBE(15, user_probe)
        TEST_CASE(13, s6, 0, nop)
        TEST_CASE(14, s5, 0, nop)
        TEST_CASE(15, s4, 0, nop)
        TEST_CASE(16, s7, 0, nop)
        PROBE(1, user_probe)
        TEST_CASE(17, s6, 2, nop)
        TEST_CASE(18, s5, 0, nop)
        TEST_CASE(39, s4, 2, nop)
        PROBE(4, user_probe)
        TEST_CASE(19, s6, 2, nop)
        TEST_CASE(20, s5, 2, nop)
        TEST_CASE(21, s4, 0, nop)
        PROBE(8, user_probe)
        TEST_CASE(22, s5, 2, nop)
        TEST_CASE(23, s7, 0, nop)
        PROBE(0, user_iforms)
        TEST_CASE(24, s5, 2, nop)
        TEST_CASE(25, s4, 2, nop)
        TEST_CASE(26, s7, 2, nop)
        PROBE(13, user_iforms)
        TEST_CASE(27, s5, 0, nop)
        TEST_CASE(28, s4, 0, nop)
        TEST_CASE(29, s7, 0, nop)
        PROBE(0, user_odd)
        TEST_CASE(30, s5, 2, nop)
        TEST_CASE(31, s2, RDCYCLE_A0, nop)
        PROBE(1, user_odd)
        TEST_CASE(32, s5, 0, nop)
        PROBE(0, user_cross)
        TEST_CASE(33, s5, 2, nop)
        TEST_CASE(34, s2, RDCYCLE_A0, nop)
        PROBE(0, user_smc)                    # the slot holds a nop: it runs once
        TEST_CASE(35, s5, 0, nop)
        la t0, smc_slot; li t1, RDCYCLE_A0; sw t1, 0(t0); fence.i
        PROBE(0, user_smc)                    # now an rdcycle: it must trap
        TEST_CASE(36, s5, 2, nop)
        TEST_CASE(37, s2, RDCYCLE_A0, nop)
        PROBE(1, user_smc)
        TEST_CASE(38, s5, 0, nop)
        TEST_PASSFAIL
        .align 2
counter_trap:                                 # U-mode ecall: back to S at s3; else skip the insn
        csrr s11, scause
        li t6, 8
        beq s11, t6, 1f
        csrr s10, stval
        csrr t6, sepc; addi t6, t6, 4; csrw sepc, t6; sret
1:      jr s3
user_probe:
        li s11, 0; rdtime a0; mv s6, s11
        li s11, 0; li s10, 0; rdcycle a0; mv s5, s11; mv s2, s10
        li s11, 0; rdinstret a0; mv s4, s11
        li s11, 0; csrr a0, hpmcounter3; mv s7, s11
        ecall
user_iforms:
        li s11, 0; csrrsi a0, cycle, 0; mv s5, s11
        li s11, 0; csrrci a0, instret, 0; mv s4, s11
        li s11, 0; csrrc a0, hpmcounter3, x0; mv s7, s11
        ecall
user_odd:
        .option rvc
        c.nop
        .option norvc
        li s11, 0; li s10, 0; rdcycle a0; mv s5, s11; mv s2, s10    # rdcycle at 2 mod 4
        ecall
        .align 2
user_smc:
        li s11, 0
smc_slot:
        nop
        mv s5, s11
        ecall
        PT_HANDLER
        .balign 4096
        .skip 4096 - 16
user_cross:                                   # the rdcycle starts 2 bytes before a page boundary
        li s11, 0; li s10, 0
        .option rvc
        c.nop
        .option norvc
        nop
        rdcycle a0; mv s5, s11; mv s2, s10
        ecall
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
RVTEST_DATA_END
