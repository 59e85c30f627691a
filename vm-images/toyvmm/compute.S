# compute: a CPU-bound loop (an LCG hash) that never traps; progress counter in MAILBOX[hart].
        .include "kernel.inc"
main:
        la a0, banner
        call uart_puts
        li s1, MAILBOX
        slli t0, tp, 3
        add s1, s1, t0
        li s2, 6364136223846793005
        li s3, 1442695040888963407
        li s4, 0
1:      mul s4, s4, s2
        add s4, s4, s3
        ld t0, 0(s1)
        addi t0, t0, 1
        sd t0, 0(s1)
        j 1b
banner:
        .asciz "compute: running\n"
