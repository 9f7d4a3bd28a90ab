//! End-to-end tests of the sandbox. This binary is its own compartment: run
//! as `sandbox --role NAME …` it plays a compartment (or a core) in a fresh
//! process, single-threaded like a real one, which libtest's harness (it runs
//! each test on a thread of its own) could not give. Run plainly, it runs the
//! tests below, one after the other, and exits non-zero if any fails.
//!
//! Every test needs root (the core runs as root): as another user they are
//! reported as skipped.

mod cgroups;
mod confinement;
mod roles;
mod spawner;
mod threads;
mod util;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    ("confinement::probe_with_empty_root", confinement::probe_with_empty_root),
    ("confinement::probe_with_landlock_only", confinement::probe_with_landlock_only),
    (
        "confinement::kill_mode_kills_on_a_denied_call",
        confinement::kill_mode_kills_on_a_denied_call,
    ),
    (
        "confinement::filter_covers_threads_started_before",
        confinement::filter_covers_threads_started_before,
    ),
    (
        "confinement::required_mode_refuses_a_thread_it_cannot_restrict",
        confinement::required_mode_refuses_a_thread_it_cannot_restrict,
    ),
    ("confinement::network_layers_each_block_tcp", confinement::network_layers_each_block_tcp),
    ("confinement::data_limit_allows_guest_memory", confinement::data_limit_allows_guest_memory),
    (
        "confinement::user_namespace_maps_root_to_nobody",
        confinement::user_namespace_maps_root_to_nobody,
    ),
    (
        "spawner::spawns_from_a_busy_multithreaded_parent",
        spawner::spawns_from_a_busy_multithreaded_parent,
    ),
    ("spawner::compartment_dies_with_its_core", spawner::compartment_dies_with_its_core),
    ("spawner::only_given_fds_are_open", spawner::only_given_fds_are_open),
    ("spawner::exec_failure_is_reported_and_reaped", spawner::exec_failure_is_reported_and_reaped),
    ("spawner::legacy_clone_works", spawner::legacy_clone_works),
    (
        "spawner::unprivileged_core_reports_missing_namespaces",
        spawner::unprivileged_core_reports_missing_namespaces,
    ),
    ("spawner::spawn_cost", spawner::spawn_cost),
    ("cgroups::pids_limit_stops_a_fork_bomb", cgroups::pids_limit_stops_a_fork_bomb),
    ("cgroups::memory_limit_ooms_an_allocation", cgroups::memory_limit_ooms_an_allocation),
    ("cgroups::cpu_quota_caps_a_busy_loop", cgroups::cpu_quota_caps_a_busy_loop),
    ("cgroups::cpuset_pins_to_one_cpu", cgroups::cpuset_pins_to_one_cpu),
    ("cgroups::nested_vm_and_vcpu_thread_cgroups", cgroups::nested_vm_and_vcpu_thread_cgroups),
    ("cgroups::v2_hierarchy_create_join_remove", cgroups::v2_hierarchy_create_join_remove),
    (
        "threads::a_violation_names_the_thread_and_ends_the_process",
        threads::a_violation_names_the_thread_and_ends_the_process,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--role")
        && args.get(2).map(String::as_str) == Some("confined-thread")
    {
        std::process::exit(threads::role());
    }
    if args.get(1).map(String::as_str) == Some("--role") {
        std::process::exit(roles::run(&args[2..]));
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    let options = Options::parse(&args[1..]);
    let selected: Vec<&Test> = TESTS.iter().filter(|(name, _)| options.selects(name)).collect();
    println!("\nrunning {} tests", selected.len());
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the sandbox tests need root (the core runs as root)");
        return;
    }
    let mut failed = Vec::new();
    for (name, test) in selected.iter() {
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(test));
        let ms = start.elapsed().as_millis();
        match outcome {
            Ok(()) => println!("test {name} ... ok ({ms} ms)"),
            Err(_) => {
                println!("test {name} ... FAILED ({ms} ms)");
                failed.push(*name);
            }
        }
    }
    let passed = selected.len() - failed.len();
    println!(
        "\ntest result: {}. {passed} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if !failed.is_empty() {
        for name in &failed {
            println!("    {name}");
        }
        std::process::exit(101);
    }
}

/// The libtest options that make sense here: filters, `--skip`, `--exact`,
/// `--ignored` (there is no ignored test); the others are accepted and
/// ignored, with their values.
struct Options {
    filters: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    ignored: bool,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        const WITH_VALUE: &[&str] =
            &["--test-threads", "--color", "--format", "-Z", "--logfile", "--shuffle-seed"];
        let mut options =
            Options { filters: Vec::new(), skip: Vec::new(), exact: false, ignored: false };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--skip" => options.skip.extend(args.next().cloned()),
                "--exact" => options.exact = true,
                "--ignored" => options.ignored = true,
                a if WITH_VALUE.contains(&a) => {
                    args.next();
                }
                a if a.starts_with('-') => {}
                filter => options.filters.push(filter.to_string()),
            }
        }
        options
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| if self.exact { name == f } else { name.contains(f.as_str()) };
        !self.ignored
            && (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skip.iter().any(|s| name.contains(s.as_str()))
    }
}
