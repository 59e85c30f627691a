# Misaligned accesses: loads and stores (the reference hart performs them; the result is printed
# and compared), AMOs and LR/SC (address-misaligned exceptions 4/6 or access faults 5/7: the scause,
# stval and sepc are printed and compared). Differential; written for vlab.
#include "env.h"
#include "si/paging.h"
#define SHOW(reg) PRINT_REG(reg)
RVTEST_RV64S
RVTEST_CODE_BEGIN
        la t0, record_trap; csrw stvec, t0; li s8, 4
        la s1, buf
        li s11, 0; ld s2, 1(s1); SHOW(s2); SHOW(s11)
        li s11, 0; lw s2, 3(s1); SHOW(s2); SHOW(s11)
        li s11, 0; lhu s2, 7(s1); SHOW(s2); SHOW(s11)
        li s11, 0; li t1, 0x1122334455667788; sd t1, 5(s1); ld s2, 0(s1); SHOW(s2); ld s2, 8(s1); SHOW(s2); SHOW(s11)
        li s11, 0; li s10, 0; li t1, 5; amoadd.d s2, t1, (s1); SHOW(s11); SHOW(s10)
#define TRAPPING(offset, insn...)                                     \
        li s11, 0; li s10, 0; li t1, 5; addi s3, s1, offset; insn;    \
        sub s10, s10, s3; SHOW(s11); SHOW(s10)
        TRAPPING(4, amoadd.d s2, t1, (s3))
        TRAPPING(2, amoswap.w s2, t1, (s3))
        TRAPPING(1, lr.d s2, (s3))
        TRAPPING(4, sc.d s2, t1, (s3))
        RVTEST_PASS
        PT_HANDLER
RVTEST_CODE_END
RVTEST_DATA_BEGIN
        .align 4
buf:    .dword 0x0706050403020100, 0x0f0e0d0c0b0a0908, 0x1716151413121110
RVTEST_DATA_END
