/* env.h -- the S-mode test environment of vlab's RISC-V conformance suite (written for vlab).

   Machine model (the toy VMM's, and the one shim.S gives a real hart): the test starts in
   S-mode at 0x80000000 with a0 = hart id, a1 = RAM size; the UART (16550 THR) is at 0x10000000;
   hypercalls are `ecall` from S-mode with a7 = number (1 putchar, 4 set timer, 5 shutdown).
   Protocol (as the official riscv-tests): TESTNUM (gp) names the running case; a test ends with
   RVTEST_PASS (exit code 0) or RVTEST_FAIL (exit code TESTNUM << 1 | 1). An unexpected trap
   prints scause/sepc/stval and exits with code 2.
   With ENV_USER defined the test body runs in U-mode under Sv39: gigapages 0 (devices) and
   0x80000000 (RAM) are identity-mapped with U set; RAM is also mapped without U at 0xC0000000,
   where the trap vector runs (S-mode never executes a U page). */
#ifndef VLAB_RVTEST_ENV_H
#define VLAB_RVTEST_ENV_H

#define TESTNUM gp
#define UART_BASE 0x10000000
#define HC_PUTCHAR 1
#define HC_SET_TIMER 4
#define HC_SHUTDOWN 5
#define CSR_STIMECMP 0x14d
#define CSR_SENVCFG 0x10a
#define SSTATUS_SIE (1 << 1)
#define SSTATUS_SPIE (1 << 5)
#define SSTATUS_SPP (1 << 8)
#define SSTATUS_FS (3 << 13)
#define SSTATUS_SUM (1 << 18)
#define SSTATUS_MXR (1 << 19)
#define PTE_V 0x01
#define PTE_R 0x02
#define PTE_W 0x04
#define PTE_X 0x08
#define PTE_U 0x10
#define PTE_A 0x40
#define PTE_D 0x80
#define SATP_SV39 (8 << 60)
#define RAM_ALIAS_OFFSET 0x40000000

#define RVTEST_RV64U
#define RVTEST_RV64S

#ifdef ENV_USER
/* Turning on paging makes the next fetch (a U page) fault for S-mode: stvec catches it at the
   non-U alias of 1: (a VMM that lets S-mode run U pages gets there by the jump). Code at 1: runs
   in the alias, so `la` yields alias addresses there. */
#define ENV_ENTER                                                     \
        li t1, RAM_ALIAS_OFFSET; la t0, 1f; add t0, t0, t1;           \
        csrw stvec, t0;                                               \
        la t2, env_root; srli t2, t2, 12; li t1, SATP_SV39;           \
        or t2, t2, t1; csrw satp, t2; sfence.vma; jr t0;              \
        .align 2;                                                     \
1:      la t0, env_trap; csrw stvec, t0;                              \
        li t1, RAM_ALIAS_OFFSET; la t0, test_start; sub t0, t0, t1;   \
        csrw sepc, t0;                                                \
        li t0, SSTATUS_SPP; csrc sstatus, t0; sret;
#define ENV_PAGE_TABLES                                               \
        .align 12;                                                    \
env_root:                                                             \
        .dword (0 << 10) | PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D; \
        .dword 0;                                                     \
        .dword (0x80000 << 10) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_U | PTE_A | PTE_D; \
        .dword (0x80000 << 10) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D; \
        .fill 508, 8, 0;
#else
#define ENV_ENTER
#define ENV_PAGE_TABLES
#endif

#define RVTEST_CODE_BEGIN                                             \
        .option norvc; .option norelax; /* gp is TESTNUM, not a global pointer */ \
        .text;                                                        \
        .globl _start;                                                \
_start: la t0, env_trap; csrw stvec, t0;                              \
        li TESTNUM, 0;                                                \
        ENV_ENTER                                                     \
test_start:

#define RVTEST_PASS                                                   \
        fence; li a0, 0; li a7, HC_SHUTDOWN; ecall;

#define RVTEST_FAIL                                                   \
        fence; slli a0, TESTNUM, 1; ori a0, a0, 1;                    \
        li a7, HC_SHUTDOWN; ecall;

#define RVTEST_CODE_END                                               \
        .align 2;                                                     \
env_trap:                                                             \
        csrr t5, scause; li t6, 8; bne t5, t6, env_unexpected;        \
        ecall; /* the U-mode body's hypercall, forwarded */           \
        csrr t5, sepc; addi t5, t5, 4; csrw sepc, t5; sret;           \
env_unexpected:                                                       \
        li t5, SSTATUS_SUM; csrs sstatus, t5;                         \
        la a1, env_msg_cause; jal env_puts; csrr a0, scause; jal env_puthex; \
        la a1, env_msg_epc; jal env_puts; csrr a0, sepc; jal env_puthex; \
        la a1, env_msg_tval; jal env_puts; csrr a0, stval; jal env_puthex; \
        li a0, '\n'; jal env_putc;                                    \
        li a0, 2; li a7, HC_SHUTDOWN; ecall;                          \
env_puts: /* a1 = NUL-terminated string */                            \
        mv t4, ra;                                                    \
1:      lbu a0, 0(a1); beqz a0, 2f; jal env_putc; addi a1, a1, 1; j 1b; \
2:      mv ra, t4; ret;                                               \
env_puthex: /* a0 = value, 16 hex digits; clobbers t0-t3, a2 */       \
        mv t3, ra; mv a2, a0; li t2, 60;                              \
1:      srl a0, a2, t2; andi a0, a0, 15; li t1, 10; blt a0, t1, 2f;   \
        addi a0, a0, 'a' - '0' - 10;                                  \
2:      addi a0, a0, '0'; jal env_putc; addi t2, t2, -4; bgez t2, 1b; \
        mv ra, t3; ret;                                               \
env_putc: /* a0 = byte, to the UART (MMIO) */                         \
        li t0, UART_BASE; sb a0, 0(t0); ret;

#define RVTEST_DATA_BEGIN                                             \
        .data;                                                        \
        ENV_PAGE_TABLES                                               \
env_msg_cause: .asciz "trap scause=";                                 \
env_msg_epc: .asciz " sepc=";                                         \
env_msg_tval: .asciz " stval=";                                       \
        .align 4;

#define RVTEST_DATA_END

/* ---- checking macros (vlab's own; the protocol of the official ones) ---------------------- */
#define MASK_XLEN(x) ((x) & 0xffffffffffffffff)

/* TEST_CASE(n, reg, expected, code): run `code`, then `reg` must equal `expected`. */
#define TEST_CASE(n, reg, expected, code...)                          \
test_##n:                                                             \
        li TESTNUM, n; code;                                          \
        li x7, MASK_XLEN(expected); bne reg, x7, fail;

#define TEST_PASSFAIL                                                 \
        bne x0, TESTNUM, pass;                                        \
fail:   RVTEST_FAIL;                                                  \
pass:   RVTEST_PASS;

/* PRINT_REG(reg): write `reg` as 16 hex digits and a newline (differential tests). */
#define PRINT_REG(reg)                                                \
        mv a0, reg; jal env_puthex; li a0, '\n'; jal env_putc;

#endif
