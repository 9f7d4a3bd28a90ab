//! The ring-3 runtime: entry points called from boot.s, the console, the
//! panic and fault reporters, and the memory functions the compiler expects.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::{arch, bh, power, selftest, smp};

static CONSOLE_LOCK: AtomicBool = AtomicBool::new(false);

/// Writes a finished line to the serial console, one CPU at a time.
pub fn console_write(bytes: &[u8]) {
    while CONSOLE_LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    arch::serial_write(bytes);
    CONSOLE_LOCK.store(false, Ordering::Release);
}

/// The bootstrap processor's entry, in ring 3, with the PVH start_info.
#[no_mangle]
pub extern "C" fn guest_main(start_info: u64) -> ! {
    selftest::main(start_info)
}

/// An application processor's entry, in ring 3, with its CPU index.
#[no_mangle]
pub extern "C" fn ap_main(index: u64) -> ! {
    smp::ap_main(index)
}

/// Resumed here after a fault in ring 3, with the interrupt frame saved by
/// boot.s (15 registers, vector, error code, rip, cs, rflags, rsp, ss).
#[no_mangle]
pub extern "C" fn user_fault(frame: *const [u64; 22]) -> ! {
    // SAFETY: boot.s copied the full 22-word frame to this buffer before
    // resuming here; nothing writes it until the next fault, and a fault in
    // this reporter ends the guest.
    let f = unsafe { core::ptr::read_volatile(frame) };
    bh!(
        "fault vector={} error={:#x} rip={:#x} rsp={:#x} cr2={:#x} apic={}",
        f[15],
        f[16],
        f[17],
        f[20],
        arch::last_fault_cr2(),
        arch::apic_id()
    );
    bh!("done status=fail text=the guest faulted");
    power::poweroff()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    bh!("panic text={}", info);
    bh!("done status=fail text=the guest panicked");
    power::poweroff()
}

// The compiler's memory functions, in ring 3 where `rep movsb` and `rep
// stosb` run natively. (compiler_builtins provides none on a libc target.)
global_asm!(
    r#"
    .section .text.mem, "ax"
    .global memcpy, memmove, memset, memcmp, bcmp
memcpy:
    mov %rdi, %rax
    mov %rdx, %rcx
    rep movsb
    ret
memmove:
    mov %rdi, %rax
    cmp %rsi, %rdi
    jbe 1f
    lea (%rsi,%rdx), %rcx
    cmp %rcx, %rdi
    jae 1f
    lea -1(%rdi,%rdx), %rdi
    lea -1(%rsi,%rdx), %rsi
    mov %rdx, %rcx
    std
    rep movsb
    cld
    ret
1:  mov %rdx, %rcx
    rep movsb
    ret
memset:
    mov %rdi, %r9
    mov %esi, %eax
    mov %rdx, %rcx
    rep stosb
    mov %r9, %rax
    ret
memcmp:
bcmp:
    xor %eax, %eax
    test %rdx, %rdx
    jz 2f
1:  movzbl (%rdi), %eax
    movzbl (%rsi), %ecx
    sub %ecx, %eax
    jnz 2f
    inc %rdi
    inc %rsi
    dec %rdx
    jnz 1b
2:  ret
"#,
    options(att_syntax)
);

/// The prebuilt `core` refers to the unwinder's personality routine even
/// with `panic=abort`; nothing unwinds here, so it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
