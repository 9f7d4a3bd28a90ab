# The built-in guest's kernel-mode (CPL 0) code.
#
# Everything here runs in ring 0, which on KVM-PVM hosts goes through a slow
# instruction emulator (~0.8 us per instruction) that rejects some
# instructions. So this file is kept to plain integer instructions and is as
# short as it can be:
#   * the PVH entry point (32-bit protected mode, paging off) that switches to
#     long mode with page tables and descriptor tables built at link time
#     (no set-up loops at boot);
#   * the application-processor trampoline (real mode -> long mode);
#   * interrupt and exception stubs;
#   * the system-call handler: user code executes `ud2` with a call number in
#     rax and arguments in rdi, rsi, rdx; the #UD handler runs the call and
#     returns past the `ud2`.
# All other code is Rust running in ring 3, where it runs natively.
#
# Register/ABI notes: user code calls `bh_syscall(nr, a0, a1, a2)` (see
# syscall.rs), which loads rax/rdi/rsi/rdx and executes ud2.

    .set KERNEL_CS, 0x08
    .set KERNEL_DS, 0x10
    .set USER_DS,   0x1b            # 0x18 | RPL 3
    .set USER_CS,   0x23            # 0x20 | RPL 3
    .set TSS_SEL0,  0x28            # first TSS descriptor; 16 bytes each
    .set KSTACK_SIZE, 4096
    .set USTACK_SIZE, 65536
    .set LAPIC_EOI, 0xfee000b0
    .set LAPIC_SVR, 0xfee000f0
    .set COM1, 0x3f8
    .set GDT_SIZE, 5 * 8 + MAX_CPUS * 16   # the linker script checks it
    .global gdt_size_value
    .set gdt_size_value, GDT_SIZE
    .global max_cpus_value
    .set max_cpus_value, MAX_CPUS   # checked by the linker script

# ---------------------------------------------------------------------------
# ELF notes: the PVH entry point (Xen note type 18, XEN_ELFNOTE_PHYS32_ENTRY)
# and a Bulkhead note that lets a VMM recognise the built-in guest.
    .section .note.pvh, "a"
    .balign 4
    .long 4                         # name size ("Xen\0")
    .long 4                         # descriptor size
    .long 18                        # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long pvh_start

    .section .note.bulkhead, "a"
    .balign 4
    .long 9                         # name size ("Bulkhead\0")
    .long 4
    .long 0x42480001                # Bulkhead guest note, version 1
    .asciz "Bulkhead"
    .balign 4
    .long 1

# ---------------------------------------------------------------------------
    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    mov $0xff, %al                  # mask the 8259 PIC (every line of the master, the
    out %al, $0x21                  # slave's cascade with them): a VMM that has one
                                    # (Firecracker) would deliver its timer on vector 8 once
                                    # interrupts are on. Bulkhead has none: one exit at boot
    mov %ebx, %edi                  # PVH start_info pointer, kept for guest_main
    lgdt gdt_ptr
    mov $0x6a0, %eax                # CR4: PAE | PGE | OSFXSR | OSXMMEXCPT
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx           # EFER.LME
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80000023, %eax           # CR0: PG | NE | MP | PE
    mov %eax, %cr0
    ljmp $KERNEL_CS, $bsp_long_mode

    .code64
bsp_long_mode:
    xor %esi, %esi                  # CPU index 0
    mov $guest_main, %r8            # user entry, arguments in rdi/rsi
    jmp cpu_enter_user

# Common per-CPU set-up, entered in long mode with:
#   rsi = CPU index, rdi = first argument for the user entry, r8 = user entry.
cpu_enter_user:
    mov $KERNEL_DS, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov %rsi, %rax                  # kernel stack = kstacks + (index+1)*KSTACK_SIZE
    inc %rax
    shl $12, %rax
    lea kstacks(%rax), %rsp
    lidt idt_ptr
    mov $LAPIC_SVR, %eax            # (a 32-bit absolute would sign-extend)
    movl $0x1ff, (%rax)             # software-enable the local APIC, spurious vector 0xff
    mov %rsi, %rax                  # TSS selector = TSS_SEL0 + index*16
    shl $4, %rax
    add $TSS_SEL0, %rax
    ltr %ax
    mov %rsi, %rax                  # user stack = ustacks + (index+1)*USTACK_SIZE
    inc %rax
    shl $16, %rax
    lea (ustacks - 8)(%rax), %rax    # entry sees rsp = 8 mod 16, as after a call
    push $USER_DS
    push %rax
    push $0x202                     # RFLAGS: IF
    push $USER_CS
    push %r8
    iretq

# ---------------------------------------------------------------------------
# Application processor trampoline. User code copies [ap_tramp_start,
# ap_tramp_end) to a page below 1 MiB and sends INIT/SIPI with that page as
# the vector. It runs in real mode with CS = page >> 4, IP = 0.
    .code16
    .global ap_tramp_start, ap_tramp_end
ap_tramp_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_tramp_gdt - ap_tramp_start)
    mov $0x6a0, %eax
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov $0x80000023, %eax
    mov %eax, %cr0
    ljmpl *(ap_tramp_target - ap_tramp_start)
    .balign 4
ap_tramp_gdt:
    .word GDT_SIZE - 1
    .long gdt
ap_tramp_target:
    .long ap_long_mode
    .word KERNEL_CS
ap_tramp_end:

    .code64
ap_long_mode:
    mov $1, %esi                    # CPU index = atomic fetch-add on ap_next_index
    lock xadd %esi, ap_next_index
    mov %esi, %edi                  # user argument: the CPU index
    mov $ap_main, %r8
    jmp cpu_enter_user

# ---------------------------------------------------------------------------
# Interrupt and exception stubs: 256 entries of 16 bytes, in three kinds,
# each as short as it can be since every ring-0 instruction is emulated on
# KVM-PVM (~0.8 us each):
#   * vector 6 (#UD) goes to the system-call path;
#   * vectors 32-254 (interrupts) save only rax, count, send the EOI;
#     vector 255 (spurious) just returns;
#   * other exceptions push a dummy error code where the CPU does not, then
#     the vector, and take the slow path that saves every register.
    .balign 16
    .global isr_table
isr_table:
    .set vec, 0
    .rept 256
    .balign 16
    .if vec == 6
    jmp isr_ud
    .elseif vec == 255
    iretq
    .elseif vec >= 32
    push %rax
    mov $vec, %eax
    jmp isr_irq
    .else
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    push $0
    .endif
    push $vec
    jmp isr_common
    .endif
    .set vec, vec + 1
    .endr

# An interrupt: rax (saved by the stub) holds the vector.
isr_irq:
    lock incq irq_counts(,%rax,8)
    mov $LAPIC_EOI, %eax            # (a 32-bit absolute would sign-extend)
    movl $0, (%rax)
    pop %rax
    iretq

# #UD: a system call if it came from ring 3 and the instruction is ud2.
# The call number is in rax, arguments in rdi, rsi, rdx; the result goes in
# rax. The caller treats rcx, rdx, rsi, rdi and r8-r11 as clobbered (see
# arch/mod.rs), so the calls may use them without saving anything. The frame
# is the CPU's: 0 rip, 8 cs, 16 rflags, 24 rsp, 32 ss.
isr_ud:
    testb $3, 8(%rsp)
    jz 1f
    mov (%rsp), %rcx
    cmpw $0x0b0f, (%rcx)
    jne 1f
    addq $2, (%rsp)
    cmp $SYS_COUNT, %rax
    jae sys_bad
    jmp *sys_table(,%rax,8)
1:  push $0                         # not a system call: an ordinary fault
    push $6
    jmp isr_common
sys_bad:
    mov $-1, %rax
    iretq

# Exceptions. Stack on entry (top first): vector, error code, RIP, CS,
# RFLAGS, RSP, SS. Saved registers follow, so the frame is
#   0 r15 8 r14 16 r13 24 r12 32 r11 40 r10 48 r9 56 r8 64 rbp 72 rdi
#   80 rsi 88 rdx 96 rcx 104 rbx 112 rax 120 vector 128 error 136 rip
#   144 cs 152 rflags 160 rsp 168 ss
    .set F_RDI, 72
    .set F_RIP, 136
    .set F_CS, 144
    .set F_RSP, 160
isr_common:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    jmp isr_fault
isr_return:
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp                   # vector and error code
    iretq

    .set SYS_COUNT, 13
    .section .rodata
    .balign 8
sys_table:
    .quad sys_write                 # 0: write(buf, len) to COM1
    .quad sys_outb                  # 1: outb(port, value)
    .quad sys_outw                  # 2: outw(port, value)
    .quad sys_outl                  # 3: outl(port, value)
    .quad sys_inb                   # 4: inb(port)
    .quad sys_inw                   # 5: inw(port)
    .quad sys_inl                   # 6: inl(port)
    .quad sys_wait                  # 7: wait(addr, value): halt while *addr == value
    .quad sys_mmio_write32          # 8: mmio_write32(addr, value)
    .quad sys_mmio_read32           # 9: mmio_read32(addr)
    .quad sys_rep_outsb             # 10: rep_outsb(port, buf, len)
    .quad sys_crash                 # 11: crash(): triple fault, as a broken kernel would
    .quad sys_cpuid                 # 12: cpuid(leaf, subleaf, out[4])
    .section .text.boot, "ax"

sys_write:                          # buffer in rdi, length in rsi
    mov %rsi, %rcx
    mov %rdi, %rsi
    mov $COM1, %dx
    rep outsb
    iretq
sys_rep_outsb:                      # port in rdi, buffer in rsi, length in rdx
    mov %rdx, %rcx
    mov %di, %dx
    rep outsb
    iretq
sys_outb:
    mov %esi, %eax
    mov %di, %dx
    out %al, %dx
    iretq
sys_outw:
    mov %esi, %eax
    mov %di, %dx
    out %ax, %dx
    iretq
sys_outl:
    mov %esi, %eax
    mov %di, %dx
    out %eax, %dx
    iretq
sys_inb:
    mov %di, %dx
    xor %eax, %eax
    in %dx, %al
    iretq
sys_inw:
    mov %di, %dx
    xor %eax, %eax
    in %dx, %ax
    iretq
sys_inl:
    mov %di, %dx
    in %dx, %eax
    iretq
sys_wait:                           # interrupts are off in this handler
    cmp (%rdi), %rsi
    jne 1f
    sti                             # the interrupt shadow covers hlt
    hlt
    cli
1:  iretq
sys_mmio_write32:
    mov %esi, (%rdi)
    iretq
sys_mmio_read32:
    mov (%rdi), %eax
    iretq
sys_cpuid:                          # ring 3's cpuid may not reach the hypervisor
    mov %rdx, %r8
    push %rbx
    mov %edi, %eax
    mov %esi, %ecx
    cpuid
    mov %eax, (%r8)
    mov %ebx, 4(%r8)
    mov %ecx, 8(%r8)
    mov %edx, 12(%r8)
    pop %rbx
    iretq
sys_crash:
    lidt null_idt_ptr
    ud2

# A fault. From ring 3, the frame is rewritten to resume in the user-mode
# reporter `user_fault(info)` on this CPU's fault stack, with info pointing at
# the saved frame (copied into fault_frames). From ring 0 it is a bug in this
# file: print a fixed line and triple-fault.
isr_fault:
    testb $3, F_CS(%rsp)
    jz kernel_fault
    mov %rsp, %rsi                  # copy the 176-byte frame to fault_frame_buf
    mov $fault_frame_buf, %rdi
    mov $22, %ecx
    rep movsq
    mov %cr2, %rax
    mov %rax, fault_cr2
    movq $user_fault, F_RIP(%rsp)
    movq $fault_frame_buf, F_RDI(%rsp)
    lea (fault_stack + 16384 - 8), %rax
    mov %rax, F_RSP(%rsp)
    jmp isr_return

kernel_fault:
    mov $kernel_fault_msg, %rsi
    mov $(kernel_fault_msg_end - kernel_fault_msg), %ecx
    mov $COM1, %dx
    rep outsb
    lidt null_idt_ptr
    ud2

    .section .rodata
kernel_fault_msg:
    .ascii "BH fault where=kernel\n"
kernel_fault_msg_end:
    .balign 8
null_idt_ptr:
    .word 0
    .quad 0

# ---------------------------------------------------------------------------
# Descriptor pointers (the tables themselves are emitted by the linker script).
    .balign 8
gdt_ptr:
    .word GDT_SIZE - 1
    .quad gdt
    .balign 8
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

# ---------------------------------------------------------------------------
# Page tables: the first 4 GiB identity-mapped with 2 MiB pages, present,
# writable and user-accessible (the workloads run in ring 3).
    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd0 + 0x7
    .quad pd1 + 0x7
    .quad pd2 + 0x7
    .quad pd3 + 0x7
    .fill 508, 8, 0
    .set page, 0
pd0:
    .rept 512
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr
pd1:
    .rept 512
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr
pd2:
    .rept 512
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr
pd3:
    .rept 512
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr

# ---------------------------------------------------------------------------
# Task state segments: RSP0 of CPU i is the top of its kernel stack.
    .section .data.tss, "aw"
    .balign 16
    .global tss_array
tss_array:
    .set cpu, 0
    .rept MAX_CPUS
    .long 0
    .quad kstacks + (cpu + 1) * KSTACK_SIZE
    .fill 90, 1, 0                  # RSP1, RSP2, IST1-7, reserved
    .word 104                       # I/O permission bitmap offset: none
    .set cpu, cpu + 1
    .endr

    .section .data
    .balign 8
    .global ap_next_index
ap_next_index:
    .long 1
    .long 0
    .global fault_cr2
fault_cr2:
    .quad 0

    .section .bss
    .balign 4096
    .global kstacks, ustacks, irq_counts, fault_frame_buf
kstacks:
    .fill MAX_CPUS * KSTACK_SIZE, 1, 0
ustacks:
    .fill MAX_CPUS * USTACK_SIZE, 1, 0
fault_stack:
    .fill 16384, 1, 0
irq_counts:
    .fill 256, 8, 0
fault_frame_buf:
    .fill 22, 8, 0
