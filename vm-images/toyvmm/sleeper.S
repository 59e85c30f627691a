# sleeper: an I/O-bound-looking guest: a little work, then sleep 2 ms of virtual time (wfi).
        .include "kernel.inc"
main:
        li s1, MAILBOX
        slli t0, tp, 3
        add s1, s1, t0
1:      li t2, 200
2:      addi t2, t2, -1
        bnez t2, 2b
        ld t0, 0(s1)
        addi t0, t0, 1
        sd t0, 0(s1)
        li a0, 20000                    # 2 ms at 10,000 instructions per virtual ms
        call sleep
        j 1b
