//! Booting Debian's Linux kernel through Bulkhead's core. Linux cannot boot
//! on KVM-PVM hosts (its ring 0 runs in an instruction emulator that fails
//! on instructions Linux uses), so there these tests say loudly that they are
//! skipped; on hosts with VT-x/AMD-V they boot it for real.

mod common;

use std::time::Duration;

use common::{require_kvm, run};

fn linux_guest() -> bulkhead_linux_guest::LinuxGuest {
    bulkhead_linux_guest::build(&Default::default()).expect(
        "cannot build the Linux test guest (scripts/install-deps.sh runs `bulkhead image build`)",
    )
}

/// True (after printing why) when this host cannot boot Linux.
fn skip_on_pvm(test: &str) -> bool {
    if common::host_is_pvm() {
        eprintln!(
            "\n*** SKIPPED {test}: this host's KVM is KVM-PVM (no VT-x/AMD-V); stock Linux does \
             not boot here. This test runs on hosts with hardware virtualization. ***\n"
        );
        return true;
    }
    false
}

#[test]
fn a_debian_kernel_boots_to_its_init_with_two_vcpus() {
    require_kvm();
    let guest = linux_guest();
    if skip_on_pvm("a_debian_kernel_boots_to_its_init_with_two_vcpus") {
        // What can be checked here: the real kernel is recognised and refused.
        let r = run(&["run", "--kernel", guest.kernel.to_str().unwrap()], Duration::from_secs(30));
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("KVM-PVM"), "{}", r.stderr);
        return;
    }
    let cmdline = format!("{} reboot=k pci=off bulkhead.test=cpus,mem", guest.cmdline_hint);
    let r = run(
        &[
            "run",
            "--kernel",
            guest.kernel.to_str().unwrap(),
            "--initrd",
            guest.initrd.to_str().unwrap(),
            "--cpus",
            "2",
            "--memory",
            "512M",
            "--cmdline",
            &cmdline,
        ],
        Duration::from_secs(120),
    );
    assert_eq!(r.code, 0, "stderr: {}\nconsole:\n{}", r.stderr, r.stdout);
    assert_eq!(r.assert_check("cpus")["count"], "2");
    let mem_kb: u64 = r.assert_check("mem")["memtotal_kb"].parse().unwrap();
    assert!(mem_kb > 400 * 1024, "{mem_kb} KiB");
    assert_eq!(r.event("done")["status"], "ok");
}
