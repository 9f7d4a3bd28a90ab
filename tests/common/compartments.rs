//! Finding a core's compartments among its children, and waiting for one to serve.

use std::time::{Duration, Instant};

/// The PIDs of the core's children running `bulkhead device KIND`.
pub fn compartments(core: u32, kind: &str) -> Vec<i32> {
    children(core as i32, |args| {
        args.windows(2).any(|w| w[0] == b"device" && w[1] == kind.as_bytes())
    })
}

/// The live (not zombie) children of `parent` whose arguments satisfy `wanted`.
pub fn children(parent: i32, wanted: impl Fn(&[&[u8]]) -> bool) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // State and parent are the 3rd and 4th fields, after the command.
        let mut fields =
            stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ')).into_iter().flatten();
        let (state, ppid) = (fields.next(), fields.next());
        if ppid != Some(&parent.to_string()) || state == Some("Z") {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if wanted(&args) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until exactly one compartment of `kind` runs, other than `not`;
/// returns its PID.
pub fn wait_compartment_other(core: u32, kind: &str, not: Option<i32>) -> i32 {
    let start = Instant::now();
    loop {
        if let [pid] = compartments(core, kind)[..] {
            if Some(pid) != not && serving(pid) {
                // Give the core the moment it needs to connect.
                std::thread::sleep(Duration::from_millis(20));
                return pid;
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            let found: Vec<String> = compartments(core, kind)
                .into_iter()
                .map(|pid| {
                    let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
                    format!("{pid}: {}", status.unwrap_or_default().replace('\n', "; "))
                })
                .collect();
            panic!("no new {kind} compartment came up in 10 s (found: {found:?})");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether a compartment has entered its sandbox (it does so right before
/// it serves).
pub fn serving(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    entered_sandbox(&status)
}

/// Whether a compartment's `/proc/PID/status` shows it past `enter`: its own
/// two filters installed and no capability left. (`Seccomp: 2` alone is no
/// sign: a compartment inherits the core's launcher thread's filter, and the
/// capabilities it needs to enter, from birth.)
pub fn entered_sandbox(status: &str) -> bool {
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
    };
    let filters: u32 = field("Seccomp_filters").and_then(|v| v.parse().ok()).unwrap_or(0);
    field("Seccomp") == Some("2") && filters >= 2 && field("CapEff") == Some("0000000000000000")
}

pub fn wait_compartment(core: u32, kind: &str) -> i32 {
    wait_compartment_other(core, kind, None)
}

/// A pseudo-random delay in [lo, hi) ms, from a simple LCG.
pub fn jitter(state: &mut u64, lo: u64, hi: u64) -> Duration {
    *state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    Duration::from_millis(lo + (*state >> 33) % (hi - lo))
}
