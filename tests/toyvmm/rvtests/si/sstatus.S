# sstatus: UXL reads 2 (64-bit U-mode); FS reads 0 and stays 0 (no F/D); SIE/SPIE/SPP/SUM/MXR
# are writable; senvcfg exists. Written for vlab.
#include "env.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        TEST_CASE(2, a0, 2, csrr a0, sstatus; srli a0, a0, 32; andi a0, a0, 3)
        TEST_CASE(3, a0, 2, li a1, -1; slli a1, a1, 32; csrc sstatus, a1; csrr a0, sstatus; srli a0, a0, 32; andi a0, a0, 3)
        TEST_CASE(4, a0, 0, li a1, SSTATUS_FS; csrs sstatus, a1; csrr a0, sstatus; and a0, a0, a1)
        TEST_CASE(5, a0, SSTATUS_SPIE | SSTATUS_SPP | SSTATUS_SUM | SSTATUS_MXR,
                  li a1, SSTATUS_SPIE | SSTATUS_SPP | SSTATUS_SUM | SSTATUS_MXR; csrs sstatus, a1;
                  csrr a0, sstatus; and a0, a0, a1; csrc sstatus, a1)
        TEST_CASE(6, a0, 0, csrr a0, CSR_SENVCFG)
        TEST_PASSFAIL
RVTEST_CODE_END
RVTEST_DATA_BEGIN
RVTEST_DATA_END
