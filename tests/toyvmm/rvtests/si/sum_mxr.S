# The U bit for S-mode: loads/stores to a U page fault unless sstatus.SUM; S-mode never executes
# a U page; MXR makes execute-only pages readable. Written for vlab.
#include "env.h"
#include "si/paging.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        PT_ON
        la s1, word
        li s2, 0x40000000
        add s3, s1, s2                    # USER(word)
        add s4, s3, s2                    # XONLY(word)
        TEST_CASE(2, s11, 13, li s11, 0; ld a0, 0(s3))
        TEST_CASE(3, s10, 0, sub s10, s10, s3)        # stval = the address
        TEST_CASE(4, s11, 15, li s11, 0; sd zero, 0(s3))
        TEST_CASE(5, a0, 0x5a5a, li s11, 0; li t0, SSTATUS_SUM; csrs sstatus, t0; ld a0, 0(s3); csrc sstatus, t0)
        TEST_CASE(6, s11, 0, nop)
        TEST_CASE(7, s11, 12, li s11, 0; li t0, SSTATUS_SUM; csrs sstatus, t0; la t1, leaf; add t1, t1, s2; jalr t1; csrc sstatus, t0)
        TEST_CASE(8, s11, 13, li s11, 0; ld a0, 0(s4))
        TEST_CASE(9, a0, 0x5a5a, li s11, 0; li t0, SSTATUS_MXR; csrs sstatus, t0; ld a0, 0(s4); csrc sstatus, t0)
        TEST_CASE(10, s11, 0, nop)
        TEST_CASE(11, s11, 13, ld a0, 0(s4))           # MXR off again: faults again
        TEST_PASSFAIL
leaf:   ret
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        PT_TABLES
word:   .dword 0x5a5a
RVTEST_DATA_END
