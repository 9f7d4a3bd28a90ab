//! A network namespace made for one test, with a tap inside it; deleted on drop.
//!
//! Only addresses inside the namespace are configured. The namespace is named, so commands run
//! in it with `ip netns exec`, and a thread of the test can enter it (`setns`) to open the tap.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

/// A named network namespace.
pub struct NetNs {
    pub name: String,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} (is iproute2 installed?): {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (these tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates `bh-<tag>-<pid>` with loopback up and IPv6 off (no stray router solicitations).
    pub fn new(tag: &str) -> NetNs {
        let name = format!("bh-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns
    }

    /// Runs a command inside the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Creates a persistent tap `dev` with `addr` (like 10.0.2.1/24), up.
    pub fn add_tap(&self, dev: &str, addr: &str) {
        self.exec(&["ip", "tuntap", "add", "dev", dev, "mode", "tap", "vnet_hdr"]);
        self.exec(&["ip", "addr", "add", addr, "dev", dev]);
        self.exec(&["ip", "link", "set", dev, "up"]);
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("namespace file");
            // SAFETY: setns on this thread only, with a namespace fd we hold.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    /// Opens the tap `dev` inside the namespace and returns its file descriptor, with
    /// virtio-net headers on, once the kernel can send through it.
    ///
    /// Opening the tap turns its carrier on, but the kernel activates the device's transmit
    /// queue (and its operational state) later, from its link-watch work: until then whatever
    /// the kernel sends to the tap (an ARP reply) is dropped. So this waits for the state to
    /// leave DOWN.
    pub fn open_tap(&self, dev: &str) -> OwnedFd {
        let fd = self.attach_tap(dev);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name, "ip", "-o", "link", "show", "dev", dev])
                .output()
                .expect("ip link show");
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains("NO-CARRIER") && !text.contains("state DOWN") {
                return fd;
            }
            assert!(std::time::Instant::now() < deadline, "tap {dev} stays down: {text}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn attach_tap(&self, dev: &str) -> OwnedFd {
        let dev = dev.to_string();
        self.run_in(move || {
            let tap = bulkhead_devices::net::tap::Tap::open(&dev).expect("tap in the namespace");
            // SAFETY: dup of a valid fd.
            let fd = unsafe { libc::dup(tap.fd()) };
            assert!(fd >= 0);
            // SAFETY: a fresh fd we own.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
