# hypercalls: a hypercall-heavy loop (HC_NOP), progress counter in MAILBOX[hart].
        .include "kernel.inc"
main:
        li s1, MAILBOX
        slli t0, tp, 3
        add s1, s1, t0
1:      HYPERCALL HC_NOP
        ld t0, 0(s1)
        addi t0, t0, 1
        sd t0, 0(s1)
        j 1b
