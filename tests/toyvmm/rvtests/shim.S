# shim.S -- gives a real RISC-V hart (QEMU's riscv64 `virt`) the toy VMM's machine model, so the
# conformance tests can run on both and their results be compared. Written for vlab.
#
# Runs from the virt machine's flash (0x20000000) in M-mode at reset: opens all memory to S/U
# (PMP), delegates every exception but ecall-from-S and the supervisor interrupts to S-mode,
# lets S/U read the counters, enables Sstc (stimecmp), then enters the test at 0x80000000 in
# S-mode with a0 = hart id, a1 = RAM size (as the VMM does). ecall from S-mode is the VMM's
# hypercall interface: 0 nop, 1 putchar, 4 set timer, 5 shutdown, 8 time. Shutdown prints
# "\n@@exit=<hex>\n" (the harness strips it) and powers off through the sifive_test device.
        .option norvc
        .equ UART, 0x10000000
        .equ FINISHER, 0x100000
        .equ RAM_SIZE, 0x100000
        .text
        .globl _start
_start:
        la t0, m_trap
        csrw mtvec, t0
        li t0, -1
        csrw pmpaddr0, t0
        li t0, 0x1f                     # NAPOT, RWX: everything
        csrw pmpcfg0, t0
        li t0, 0xb1ff                   # exceptions 0-8, 12, 13, 15 (not 9: ecall from S)
        csrw medeleg, t0
        li t0, 0x222                    # SSI, STI, SEI
        csrw mideleg, t0
        li t0, -1
        csrw mcounteren, t0
        li t0, 1
        slli t0, t0, 63                 # menvcfg.STCE: stimecmp for S-mode
        csrw 0x30a, t0
        li t0, (1 << 11)                # MPP = S
        csrw mstatus, t0
        li t0, 0x80000000
        csrw mepc, t0
        csrr a0, mhartid
        li a1, RAM_SIZE
        mret

m_trap:
        csrw mscratch, t0
        csrr t0, mcause
        addi t0, t0, -9
        bnez t0, m_unexpected
        li t0, 1
        beq a7, t0, hc_putchar
        li t0, 4
        beq a7, t0, hc_set_timer
        li t0, 5
        beq a7, t0, hc_shutdown
        li t0, 8
        beq a7, t0, hc_time
        li t0, 0
        beq a7, t0, hc_nop
        li a0, -1
        j m_return
hc_nop:
        li a0, 0
        j m_return
hc_putchar:
        li t0, UART
        sb a0, 0(t0)
        li a0, 0
        j m_return
hc_set_timer:
        csrw 0x14d, a0                  # stimecmp
        li t0, 0x20
        csrs mie, t0                    # sie.STIE, as the VMM's hypercall does
        li a0, 0
        j m_return
hc_time:
        csrr a0, time
m_return:
        csrr t0, mepc
        addi t0, t0, 4
        csrw mepc, t0
        csrr t0, mscratch
        mret

hc_shutdown:                            # prints "\n@@exit=<16 hex digits>\n", then powers off
        mv t1, a0
        la t2, exit_msg
1:      lbu t0, 0(t2)
        beqz t0, 2f
        li t3, UART
        sb t0, 0(t3)
        addi t2, t2, 1
        j 1b
2:      li t2, 60
3:      srl t0, t1, t2
        andi t0, t0, 15
        li t3, 10
        blt t0, t3, 4f
        addi t0, t0, 'a' - '0' - 10
4:      addi t0, t0, '0'
        li t3, UART
        sb t0, 0(t3)
        addi t2, t2, -4
        bgez t2, 3b
        li t0, '\n'
        sb t0, 0(t3)
        li t0, FINISHER
        li t1, 0x5555
        sw t1, 0(t0)
5:      j 5b

m_unexpected:                           # a trap the model has no use for: exit code "m-trap"
        csrr a0, mcause
        li t0, 0x7ff0000
        or a0, a0, t0
        j hc_shutdown

exit_msg: .asciz "\n@@exit="
