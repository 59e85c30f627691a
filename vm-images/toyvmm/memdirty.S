# memdirty: turns on Sv39 paging, drops to U-mode and dirties 64 pages per round. After each
# round it yields through a syscall; the kernel then reloads satp like a process switch, which
# costs a shadow-page-table flush (and refill exits) under shadow paging but only TLB refills
# (2-D walks) under nested paging.
        .include "kernel.inc"
        .equ BUF, 0x80040000
        .equ PAGES, 64
        .equ ROUNDS, 40
main:
        la a0, banner
        call uart_puts
        li a0, 0x100000                 # map the first MiB
        call enable_paging
        la a0, user_main
        j enter_user
user_main:                              # runs in the guest's U-mode
        li s1, MAILBOX
        li s5, ROUNDS
1:      li s2, BUF
        li s3, PAGES
2:      ld t0, 0(s1)
        sd t0, 0(s2)                    # dirty one word of the page
        addi t0, t0, 1
        sd t0, 0(s1)
        li t1, 4096
        add s2, s2, t1
        addi s3, s3, -1
        bnez s3, 2b
        li a7, SYS_YIELD                # syscall -> kernel -> HC_YIELD
        ecall
        addi s5, s5, -1
        bnez s5, 1b
        li a0, 0
        li a7, SYS_EXIT
        ecall
banner:
        .asciz "memdirty: paging on\n"
