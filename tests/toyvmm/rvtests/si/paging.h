/* paging.h -- a page table and a recording trap handler for the supervisor tests (vlab's own).

   PT_ON turns on Sv39 with these mappings (VA -> PA):
     0x00000000 1 GiB  devices (UART), U, RW
     0x40000000 2 MiB  the L1/L0 tables below: 4 KiB pages a test edits (l0_table entries)
     0x80000000 1 GiB  RAM, not U, RWX          (where S-mode code runs)
     0xC0000000 1 GiB  RAM, U, RWX              (USER(x) is x's address there)
     0x100000000 1 GiB RAM, not U, X only       (XONLY(x))
   The trap handler records scause in s11, stval in s10, sepc in s9; it resumes an exception
   s8 bytes past sepc (s8 = 4 unless a test says otherwise; a fetch fault resumes at ra) and an
   interrupt where it struck, after clearing sie. */
#define USER(x) ((x) + 0x40000000)
#define XONLY(x) ((x) + 0x80000000)
#define PAGE4K(i) (0x40000000 + (i) * 0x1000)

#define PT_ON                                                         \
        la t0, record_trap; csrw stvec, t0; li s8, 4;                 \
        la t0, pt_root; srli t0, t0, 12; li t1, SATP_SV39;            \
        or t0, t0, t1; csrw satp, t0; sfence.vma;

#define PT_HANDLER                                                    \
        .align 2;                                                     \
record_trap:                                                          \
        csrr s11, scause; csrr s10, stval; csrr s9, sepc;             \
        bltz s11, 2f;                                                 \
        li t6, 12; bne s11, t6, 1f; csrw sepc, ra; sret;              \
1:      add t6, s9, s8; csrw sepc, t6; sret;                          \
2:      csrw sie, zero; sret;

#define PT_TABLES                                                     \
        .align 12;                                                    \
pt_root:                                                              \
        .dword (0 << 10) | PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D; \
        .dword 0; /* -> pt_l1, filled by PT_LINK */                   \
        .dword (0x80000 << 10) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D; \
        .dword (0x80000 << 10) | PTE_V | PTE_R | PTE_W | PTE_X | PTE_U | PTE_A | PTE_D; \
        .dword (0x80000 << 10) | PTE_V | PTE_X | PTE_A;               \
        .fill 507, 8, 0;                                              \
pt_l1:  .fill 512, 8, 0;                                              \
pt_l0:  .fill 512, 8, 0;                                              \
pt_page: .dword 0x1111111111111111, 0x2222222222222222;               \
        .align 12;

/* PT_LINK: root[1] -> pt_l1[0] -> pt_l0 (pointer PTEs: V only). Call before PT_ON. */
#define PT_LINK                                                       \
        la t0, pt_l1; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, PTE_V; \
        la t1, pt_root; sd t0, 8(t1);                                 \
        la t0, pt_l0; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, PTE_V; \
        la t1, pt_l1; sd t0, 0(t1);

/* PT_MAP(i, target, flags): l0 entry i (VA PAGE4K(i)) -> the page holding `target`. */
#define PT_MAP(i, target, flags)                                      \
        la t0, target; srli t0, t0, 12; slli t0, t0, 10; ori t0, t0, flags; \
        la t1, pt_l0; sd t0, (i) * 8(t1); sfence.vma;
