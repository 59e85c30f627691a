# memdirty: turns on Sv39 paging, drops to U-mode and dirties 64 pages per round. After each
# round it yields through a syscall; the kernel then reloads satp like a process switch, which
# costs a shadow-page-table flush (and refill exits) under shadow paging but only TLB refills
# (2-D walks) under nested paging.
#
# Knobs: the image builds this file as it stands; lab 03 (vlab.labs.memory.paging_program) builds
# variants of it by defining some of these symbols first (vlab.toyvmm.programs.build_program).
        .include "kernel.inc"
        .equ BUF, 0x80040000
        .ifndef PAGES
        .equ PAGES, 64                  # pages dirtied per round
        .endif
        .ifndef ROUNDS
        .equ ROUNDS, 40
        .endif
        .ifndef LEVELS
        .equ LEVELS, 3                  # 4: Sv48, one more level above the kernel's Sv39 table
        .endif
        .ifndef RELOAD
        .equ RELOAD, 1                  # 0: the syscall after a round prints a dot, satp stays
        .endif
        .ifndef PROGRESS
        .equ PROGRESS, 1                # 0: no banner, no MAILBOX counter: U-mode touches only BUF
        .endif
        .equ PT_L3, 0x80015000          # the Sv48 root (LEVELS = 4)
        .if LEVELS == 4 && RELOAD
        .error "RELOAD reloads the kernel's Sv39 satp: use LEVELS = 3 with it"
        .endif
main:
        .if PROGRESS
        la a0, banner
        call uart_puts
        .endif
        li a0, 0x100000                 # map the first MiB
        call enable_paging
        .if LEVELS == 4
        li t0, PT_L3
        li t1, PT_L2
        srli t1, t1, 2
        ori t1, t1, 1
        sd t1, 0(t0)                    # L3[0] -> the Sv39 root, now one level down
        li t0, (9 << 60) | (PT_L3 >> 12)
        csrw satp, t0
        sfence.vma
        .endif
        la a0, user_main
        j enter_user
user_main:                              # runs in the guest's U-mode
        .if PROGRESS
        li s1, MAILBOX
        .endif
        li s5, ROUNDS
1:      li s2, BUF
        li s3, PAGES
        .if PROGRESS
2:      ld t0, 0(s1)
        sd t0, 0(s2)                    # dirty one word of the page
        addi t0, t0, 1
        sd t0, 0(s1)
        .else
2:      sd s5, 0(s2)                    # dirty one word of the page
        .endif
        li t1, 4096
        add s2, s2, t1
        addi s3, s3, -1
        bnez s3, 2b
        .if RELOAD
        li a7, SYS_YIELD                # syscall -> kernel -> HC_YIELD
        .else
        li a0, '.'
        li a7, SYS_PUTC
        .endif
        ecall
        addi s5, s5, -1
        bnez s5, 1b
        li a0, 0
        li a7, SYS_EXIT
        ecall
        .if PROGRESS
banner:
        .asciz "memdirty: paging on\n"
        .endif
