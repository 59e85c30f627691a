# CSR read/modify/write on sscratch (all six forms). Written for vlab.
#include "env.h"
RVTEST_RV64S
RVTEST_CODE_BEGIN
        csrwi sscratch, 5
        TEST_CASE(2, a0, 5, csrr a0, sscratch)
        TEST_CASE(3, a1, 5, csrrci a1, sscratch, 4)
        TEST_CASE(4, a2, 1, csrrsi a2, sscratch, 8)
        TEST_CASE(5, a3, 9, csrrwi a3, sscratch, 3)
        TEST_CASE(6, a1, 3, li a0, 0x1234567; csrrw a1, sscratch, a0)
        TEST_CASE(7, a0, 0x1234567, li a0, 0x0000567; csrrc a0, sscratch, a0)
        TEST_CASE(8, a0, 0x1234000, li a0, 0x89a; csrrs a0, sscratch, a0)
        TEST_CASE(9, a0, 0x123489a, csrr a0, sscratch)
        TEST_PASSFAIL
RVTEST_CODE_END
RVTEST_DATA_BEGIN
RVTEST_DATA_END
