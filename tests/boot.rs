//! Booting the built-in guest through Bulkhead's core, for real: every test
//! starts a VM and reads what the guest reports on its console.

mod common;

use std::time::Duration;

use common::{require_kvm, run, TempDir};

const T: Duration = Duration::from_secs(30);

#[test]
fn boots_with_one_vcpu_and_powers_off() {
    require_kvm();
    let r = run(&["run"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let ready = r.event("ready");
    assert_eq!(ready["guest"], "bulkhead");
    assert_eq!(ready["protocol"], "pvh");
    r.assert_check("memory");
    let smp = r.assert_check("smp");
    assert_eq!((smp["cpus"].as_str(), smp["online"].as_str()), ("1", "1"));
    assert_eq!(r.event("done")["status"], "ok");
}

/// `--boot-timer`: the guest writes 123 to port 0x3f0 once ready and the core logs the time
/// since it started, in Firecracker's words; without the flag the write is ignored.
#[test]
fn the_boot_timer_logs_the_guests_boot_time_only_when_asked() {
    require_kvm();
    let r = run(&["run", "--cmdline", "bulkhead.run=boot", "--boot-timer"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("Guest-boot-time")).expect(&r.stderr);
    let words: Vec<&str> = line.split_whitespace().collect();
    // bulkhead: Guest-boot-time = W us W ms, C CPU us C CPU ms
    assert_eq!(
        (words[1], words[2], words[4], words[8], words[9]),
        ("Guest-boot-time", "=", "us", "CPU", "us")
    );
    let us: u64 = words[3].parse().unwrap();
    assert!((1..30_000_000).contains(&us), "{line}");
    let r = run(&["run", "--cmdline", "bulkhead.run=boot"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(!r.stderr.contains("Guest-boot-time"), "{}", r.stderr);
}

#[test]
fn interrupts_reach_the_guest_through_the_ioapic_and_the_lapic_timer() {
    require_kvm();
    let r = run(&["run", "--cpus", "2"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    // The UART's interrupt, routed by the core's I/O APIC as an MSI.
    assert_eq!(r.assert_check("ioapic")["count"], "1");
    // A 2 ms one-shot of the local APIC timer.
    let us: u64 = r.assert_check("timer")["elapsed_us"].parse().unwrap();
    assert!((1500..100_000).contains(&us), "{us}");
}

#[test]
fn brings_up_two_vcpus() {
    require_kvm();
    let r = run(&["run", "--cpus", "2"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let smp = r.assert_check("smp");
    assert_eq!(smp["cpus"], "2");
    assert_eq!(smp["online"], "2");
    assert_eq!(smp["apic_ids"], "0,1");
}

#[test]
fn brings_up_many_vcpus() {
    require_kvm();
    let r = run(&["run", "--cpus", "8"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let smp = r.assert_check("smp");
    assert_eq!(smp["online"], "8");
    // Listed in the order the APs reported in.
    let mut ids: Vec<u32> = smp["apic_ids"].split(',').map(|i| i.parse().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, (0..8).collect::<Vec<_>>());
}

#[test]
fn the_guest_sees_the_memory_it_was_given() {
    require_kvm();
    let r = run(&["run", "--memory", "512M"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let mem = r.event("memory");
    // Low RAM below the EBDA plus RAM from 1 MiB.
    assert_eq!(mem["ram_bytes"], ((512u64 << 20) - (1 << 20) + 0x9fc00).to_string());
    r.assert_check("memory");
}

#[test]
fn memory_above_the_mmio_hole_is_mapped_above_4g() {
    require_kvm();
    let r = run(&["run", "--memory", "4G"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let mem = r.event("memory");
    assert_eq!(mem["ram_bytes"], ((4u64 << 30) - (1 << 20) + 0x9fc00).to_string());
    assert_eq!(mem["ram_below_4g"], ((3u64 << 30) - (1 << 20) + 0x9fc00).to_string());
    assert_eq!(mem["regions"], "4");
}

#[test]
fn passes_the_command_line_and_initrd() {
    require_kvm();
    let dir = TempDir::new("initrd");
    let data: Vec<u8> =
        (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let initrd = dir.file("initrd.img", &data);
    let r =
        run(&["run", "--initrd", initrd.to_str().unwrap(), "--cmdline", "hello bulkhead.x=1"], T);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(r.event("cmdline")["text"], "hello bulkhead.x=1");
    let initrd =
        r.events().into_iter().find(|(e, kv)| e == "initrd" && kv.contains_key("index")).unwrap().1;
    assert_eq!(initrd["size"], data.len().to_string());
    assert_eq!(initrd["fnv1a64"], format!("{:#018x}", common::fnv1a64(&data)));
}

#[test]
fn exit_codes_say_how_the_guest_ended() {
    require_kvm();
    let reboot = run(&["run", "--cmdline", "bulkhead.run=reboot"], T);
    assert_eq!(reboot.code, 3, "reboot: {}", reboot.stderr);
    assert!(reboot.stderr.contains("rebooted"), "{}", reboot.stderr);
    let crash = run(&["run", "--cmdline", "bulkhead.run=crash"], T);
    assert_eq!(crash.code, 4, "crash: {}", crash.stderr);
    assert!(crash.stderr.contains("triple-faulted"), "{}", crash.stderr);
    let fault = run(&["run", "--cmdline", "bulkhead.run=fault"], T);
    assert_eq!(fault.event("fault")["vector"], "14", "a page fault is reported");
    assert_eq!(fault.event("fault")["cr2"], "0x100000000");
    assert_eq!(fault.event("done")["status"], "fail");
}

#[test]
fn sigint_stops_the_vm_cleanly() {
    require_kvm();
    let child = common::bulkhead()
        .args(["run", "--cmdline", "bulkhead.run=boot bulkhead.hold_ms=20000"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let r = common::wait(child, Duration::from_secs(10));
    assert_eq!(r.code, 130, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("BH hold"), "the guest was running: {}", r.stdout);
}

#[test]
fn malformed_kernels_are_refused_with_a_clear_error() {
    require_kvm();
    let dir = TempDir::new("bad-kernel");
    let junk = dir.file("junk", b"this is not a kernel");
    let r = run(&["run", "--kernel", junk.to_str().unwrap()], T);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is not a kernel Bulkhead can boot"), "{}", r.stderr);

    // A valid ELF header whose program headers lie past the end of the file.
    let mut elf = bulkhead_guest_elf::GUEST_ELF[..64].to_vec();
    elf[32..40].copy_from_slice(&0x10_0000u64.to_le_bytes()); // e_phoff
    let truncated = dir.file("truncated.elf", &elf);
    let r = run(&["run", "--kernel", truncated.to_str().unwrap()], T);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot load the kernel"), "{}", r.stderr);

    let missing = dir.0.join("missing");
    let r = run(&["run", "--kernel", missing.to_str().unwrap()], T);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("cannot read the kernel"), "{}", r.stderr);
}

/// A bzImage that linux-loader accepts and whose 64-bit entry executes
/// `ud2` with no IDT: it triple-faults wherever it runs.
fn fake_bzimage() -> Vec<u8> {
    let setup_sects = 4usize;
    let mut bz = vec![0u8; (setup_sects + 1) * 512 + 0x1000];
    bz[0x1f1] = setup_sects as u8;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    bz[0x211] = 1; // LOADED_HIGH
    bz[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    let entry64 = (setup_sects + 1) * 512 + 0x200;
    bz[entry64..entry64 + 2].copy_from_slice(&[0x0f, 0x0b]);
    bz
}

#[test]
fn a_linux_kernel_on_a_pvm_host_is_refused() {
    require_kvm();
    let dir = TempDir::new("bzimage");
    let kernel = dir.file("bzImage", &fake_bzimage());
    let r = run(&["run", "--kernel", kernel.to_str().unwrap()], T);
    if common::host_is_pvm() {
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("KVM-PVM"), "{}", r.stderr);
        assert!(r.stderr.contains("--force"), "{}", r.stderr);
    } else {
        // On a hardware host it boots, and this image's one instruction faults.
        assert_eq!(r.code, 4, "{}", r.stderr);
    }
}

#[test]
fn a_bzimage_enters_in_64_bit_mode() {
    require_kvm();
    let dir = TempDir::new("bzimage64");
    let kernel = dir.file("bzImage", &fake_bzimage());
    // --force: on PVM hosts too; ud2 at the entry point with no IDT is a
    // triple fault at exactly the 64-bit entry (load address + 0x200).
    let r = run(&["run", "--force", "--kernel", kernel.to_str().unwrap()], T);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("rip=0x100200"), "{}", r.stderr);
    assert!(r.stderr.contains("efer=0x500"), "long mode: {}", r.stderr);
}

#[test]
fn bad_flags_are_refused() {
    let r = run(&["run", "--memory", "lots"], T);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("is not a size"), "{}", r.stderr);
    let r = run(&["run", "--memory", "1M"], T);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("too small"), "{}", r.stderr);
    let r = run(&["run", "--cpus", "1000"], T);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--cpus must be between 1 and 254"), "{}", r.stderr);
}

/// A VM started with `--name` under a private run folder, its console read line by line.
struct Named {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    run_dir: TempDir,
    name: String,
}

impl Named {
    fn start(tag: &str, cmdline: &str) -> Named {
        let run_dir = TempDir::new(tag);
        let name = format!("{tag}-{}", std::process::id());
        let mut child = common::bulkhead()
            .args(["run", "--name", &name, "--cmdline", cmdline])
            .env("BULKHEAD_RUN_DIR", &run_dir.0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = common::lines_of(child.stdout.take().unwrap());
        Named { child: Some(child), lines, seen: Vec::new(), run_dir, name }
    }

    /// The next console line that starts with `prefix` (generous: the host is shared).
    fn next(&mut self, prefix: &str) -> String {
        loop {
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(120)) else {
                panic!("no line {prefix:?}; the console had:\n{}", self.seen.join("\n"))
            };
            self.seen.push(line.clone());
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<&str> =
            std::iter::once(self.name.as_str()).chain(args.iter().copied()).collect();
        common::ctl(&self.run_dir.0, &args)
    }

    /// Its end, and the console lines not read yet.
    fn end(mut self) -> (common::Run, Vec<String>) {
        let r = common::wait(self.child.take().unwrap(), Duration::from_secs(120));
        let rest = self.lines.iter().collect();
        (r, rest)
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `bulkhead ctl VM ctrl-alt-del` presses the keys on the core's i8042; the guest, waiting in
/// `wait-cad` with its keyboard set up as Linux's drivers set it up, reads them on IRQ 1,
/// says so and resets through the i8042, and the VM ends with the reboot exit.
#[test]
fn ctrl_alt_del_from_ctl_reboots_a_waiting_guest() {
    require_kvm();
    let mut vm = Named::start("cad", "bulkhead.run=wait-cad bulkhead.wait_s=300");
    let listening = vm.next("BH kbd listening");
    // Linux's view: no translation, so scan code set 2; keyboard interrupt on.
    assert!(listening.contains("set=2 ctr=0x05"), "{listening}");
    let out = vm.ctl(&["ctrl-alt-del", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pressed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pressed["keys"], "ctrl-alt-del");
    assert_eq!(
        (pressed["queued"].as_bool(), pressed["interrupt"].as_bool()),
        (Some(true), Some(true))
    );
    vm.next("BH ctrl-alt-del");
    let (r, _) = vm.end();
    assert_eq!(r.code, 3, "the reboot exit: {}", r.stderr);
    assert!(r.stderr.contains("the guest rebooted"), "{}", r.stderr);
}

/// The same while the guest holds (`hold_ms`), through the plain command; and a guest that
/// waits in vain says so and powers off.
#[test]
fn ctrl_alt_del_ends_a_holding_guest_and_waiting_in_vain_fails_the_check() {
    require_kvm();
    let mut vm = Named::start("cadhold", "bulkhead.run=boot bulkhead.hold_ms=300000");
    vm.next("BH hold");
    vm.next("BH kbd listening");
    let out = vm.ctl(&["ctrl-alt-del"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("ctrl-alt-del pressed (IRQ 1 raised"), "{said}");
    vm.next("BH ctrl-alt-del");
    let (r, _) = vm.end();
    assert_eq!(r.code, 3, "{}", r.stderr);

    let r = run(&["run", "--cmdline", "bulkhead.run=wait-cad bulkhead.wait_s=0.2"], T);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let check = r.event("check");
    assert_eq!((check["name"].as_str(), check["status"].as_str()), ("wait-cad", "fail"));
    assert!(!r.stdout.contains("BH ctrl-alt-del"), "{}", r.stdout);
}
