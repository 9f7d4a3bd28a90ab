//! `bulkhead ctl` and VMs found by name in the run folder.
//!
//! One test only: it sets `BULKHEAD_RUN_DIR` for the whole process, before any other thread
//! runs.

mod common;

use bulkhead_api::paths::{self, PathError};
use bulkhead_api::{Payload, Reply, Request, Server, ServerError};
use bulkhead_ctl::cli::{self, CtlCommand};
use bulkhead_ctl::client::{self, ClientError};
use clap::{Parser, Subcommand};
use common::{sample_status, FakeVm};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

/// The binary as the lead mounts the subcommand.
#[derive(Parser)]
#[command(name = "bulkhead")]
struct Bulkhead {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Talk to running VMs.
    #[command(subcommand)]
    Ctl(CtlCommand),
}

fn ctl(args: &[&str]) -> anyhow::Result<i32> {
    let argv = ["bulkhead", "ctl"].iter().chain(args).map(OsString::from);
    let Top::Ctl(command) = Bulkhead::try_parse_from(argv).unwrap().command;
    cli::run(command)
}

fn error_of(result: anyhow::Result<i32>) -> String {
    format!("{:#}", result.expect_err("the command succeeded"))
}

#[test]
fn ctl_finds_vms_by_name_in_the_run_folder() {
    let scratch = tempfile::Builder::new().prefix("bh-ctl").tempdir_in("/tmp").unwrap();
    let run = scratch.path().join("run");
    std::env::set_var(paths::RUN_DIR_ENV, &run);
    assert_eq!(paths::run_dir(), run);

    // Names are checked before anything is created.
    let target = || Arc::new(FakeVm::default());
    assert!(matches!(
        Server::start("list", target()),
        Err(ServerError::Path(PathError::Reserved { .. }))
    ));
    assert!(matches!(
        Server::start("../x", target()),
        Err(ServerError::Path(PathError::BadName { .. }))
    ));

    let server = Server::start("vm0", target()).unwrap();
    assert_eq!(server.path(), run.join("vm0.sock"));
    assert_eq!(std::fs::metadata(&run).unwrap().permissions().mode() & 0o777, 0o700);
    let reply = client::request("vm0", &Request::Status).unwrap();
    assert_eq!(reply, Reply::Ok { result: Payload::Status(sample_status()) });
    let by_path = client::request(server.path().to_str().unwrap(), &Request::Status).unwrap();
    assert_eq!(by_path, reply);

    // A second VM of that name is refused; the first goes on.
    let second = Server::start("vm0", target()).err().unwrap().to_string();
    assert!(second.contains("already running"), "{second}");

    commands_succeed_with_0();
    failures_say_what_to_do(&run);
    listing(&run);

    drop(server);
    assert!(std::fs::read_dir(&run).unwrap().next().is_none(), "the run folder is not empty");
    assert_eq!(ctl(&["list"]).unwrap(), 0);
}

fn commands_succeed_with_0() {
    let path = paths::run_dir().join("vm0.sock");
    for args in [
        &["vm0", "status"][..],
        &["vm0", "status", "--json"],
        &[path.to_str().unwrap(), "status"],
        &["vm0", "device", "restart", "blk0"],
        &["vm0", "device", "restart", "rng0", "--json"],
        &["vm0", "device", "upgrade", "blk0", "--binary", "/bin/true"],
        &["vm0", "ctrl-alt-del"],
        &["vm0", "ctrl-alt-del", "--json"],
        &["vm0", "--help"],
        &["list"],
        &["list", "--json"],
    ] {
        assert_eq!(ctl(args).unwrap(), 0, "{args:?}");
    }
    // Usage errors are 2 (clap prints them).
    assert_eq!(ctl(&["vm0"]).unwrap(), 2);
    assert_eq!(ctl(&["vm0", "device", "upgrade", "blk0"]).unwrap(), 2);
}

fn failures_say_what_to_do(run: &std::path::Path) {
    let message = error_of(ctl(&["vm0", "device", "restart", "blk9"]));
    assert_eq!(message, "vm0: no device named blk9; this VM has blk0, rng0");

    let message = error_of(ctl(&["nope", "status"]));
    let expected = format!(
        "no VM named nope is running (looked in {}); `bulkhead ctl list` shows those that are",
        run.display()
    );
    assert_eq!(message, expected);
    assert!(matches!(client::request("nope", &Request::Status), Err(ClientError::NoSuchVm { .. })));

    let message = error_of(ctl(&["bad/name/x.sock", "status"]));
    assert!(message.starts_with("there is no control socket at bad/name/x.sock"), "{message}");

    // The client makes a relative binary path absolute before sending it.
    let message = error_of(ctl(&["vm0", "device", "upgrade", "blk0", "--binary", "no-such-bin"]));
    let absolute = std::env::current_dir().unwrap().join("no-such-bin");
    let expected = format!("vm0: upgrade refused: cannot find the binary {}", absolute.display());
    assert_eq!(message, expected);
}

fn listing(run: &std::path::Path) {
    // A socket left by a VM that ended is listed as not answering, and skipped by `ctl list`.
    drop(UnixListener::bind(run.join("gone.sock")).unwrap());
    let found = client::list().unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].socket, run.join("gone.sock"));
    let why = found[0].status.as_ref().unwrap_err();
    assert_eq!(why, "nobody answers: the VM that made it has ended");
    assert_eq!(found[1].status.as_ref().unwrap(), &sample_status());
    assert_eq!(ctl(&["list"]).unwrap(), 0);
    std::fs::remove_file(run.join("gone.sock")).unwrap();
}
