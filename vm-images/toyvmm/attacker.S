# attacker: probes memory outside its own RAM from the guest kernel (paging off), then asks
# the VMM to print memory beyond its RAM through HC_CONSOLE_WRITE. Each probe must fault (the
# kernel counts it and skips the instruction); a weakened VMM leaks a neighbour's memory.
        .include "kernel.inc"
main:
        la a0, banner
        call uart_puts
        la s1, probes
1:      ld s2, 0(s1)
        li t0, -1
        beq s2, t0, 3f
        li t1, FAULTS
        ld s3, 0(t1)
        ld t0, 0(s2)                    # read probe
        sd zero, 0(s2)                  # write probe
        li t1, FAULTS
        ld s4, 0(t1)
        sub a0, s4, s3                  # faults taken: 2 = both blocked
        addi a0, a0, '0'
        call uart_putc
        addi s1, s1, 8
        j 1b
3:      li a0, '\n'
        call uart_putc
        li a0, RAM_BASE + 0x100000      # just past a 1 MiB RAM: the neighbour, if any
        li a1, 32
        HYPERCALL HC_CONSOLE_WRITE
        call uart_hex                   # -1 when the VMM refused
        li a0, 0
        j shutdown
probes:
        .dword 0x0
        .dword 0x7ffff000               # just below RAM
        .dword 0x80100000               # just past a 1 MiB RAM
        .dword 0x80200000
        .dword 0x10001000               # past the UART page
        .dword 0x100000000              # where the VMM keeps host memory (machine addresses)
        .dword 0xfffffffffffff000
        .dword -1
banner:
        .asciz "attacker: probing\n"
