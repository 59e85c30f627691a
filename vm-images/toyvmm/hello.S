# hello: every vCPU prints a greeting through the UART, then the guest shuts down.
        .include "kernel.inc"
main:
        addi sp, sp, -16
        sd ra, 0(sp)
        la a0, greeting
        call uart_puts
        mv a0, tp
        call uart_hex
        bnez tp, 1f                     # secondary harts idle
        li a0, 0
        j shutdown
1:      wfi
        j 1b
greeting:
        .asciz "hello from toyvmm guest, hart "
