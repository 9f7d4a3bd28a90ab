//! Who may connect: clients and servers running as other users (needs root to switch uids).
//!
//! The test binary re-runs itself as another uid, as a client (`helper_client`) or as a server
//! (`helper_server`); the helpers do nothing unless their environment variable is set.

mod common;

use bulkhead_api::protocol::{Reply, Request};
use bulkhead_api::server::Server;
use bulkhead_ctl::client::request_at;
use common::{in_dir, socket_dir, FakeVm};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const CONNECT_ENV: &str = "BULKHEAD_API_TEST_CONNECT";
const SERVE_ENV: &str = "BULKHEAD_API_TEST_SERVE";
const NOBODY: u32 = 65534;

/// Helper: connects to `$BULKHEAD_API_TEST_CONNECT`, prints `REPLY <json>` or `ERROR <message>`.
#[test]
fn helper_client() {
    let Some(path) = std::env::var_os(CONNECT_ENV) else { return };
    match request_at(Path::new(&path), &Request::Status, Duration::from_secs(10)) {
        Ok(reply) => print!("REPLY {}", String::from_utf8(reply.encode()).unwrap()),
        Err(e) => println!("ERROR {}", bulkhead_ctl::describe(&e)),
    }
}

/// Helper: serves a fake VM on `$BULKHEAD_API_TEST_SERVE`, prints `READY`, stops when its
/// stdin closes.
#[test]
fn helper_server() {
    let Some(path) = std::env::var_os(SERVE_ENV) else { return };
    let server = Server::start_at(Path::new(&path), Arc::new(FakeVm::default()));
    match server {
        Ok(_server) => {
            println!("READY");
            let _ = std::io::stdin().lines().count();
        }
        Err(e) => println!("ERROR {e}"),
    }
}

/// Held while a copy of the binary is open for writing and while a helper is forked: a child
/// forked by one test while another test writes its copy would inherit the writable fd until it
/// executes, and executing that copy meanwhile fails with `ETXTBSY` ("Text file busy").
static FORK: Mutex<()> = Mutex::new(());

/// A copy of this test binary that any user may run.
fn public_exe(dir: &Path) -> PathBuf {
    let exe = dir.join("api-test");
    let _no_fork = FORK.lock().unwrap_or_else(|p| p.into_inner());
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

/// Starts `command` while no copy of the binary is being written.
fn spawn(command: &mut Command) -> Child {
    let _no_copy = FORK.lock().unwrap_or_else(|p| p.into_inner());
    command.spawn().unwrap()
}

/// Runs `helper` as `uid`, with `env` set.
fn helper(exe: &Path, helper: &str, uid: u32, env: (&str, &Path)) -> Command {
    let mut command = Command::new(exe);
    command
        .args([helper, "--exact", "--nocapture", "--test-threads=1", "--quiet"])
        .env(env.0, env.1)
        .uid(uid)
        .gid(uid)
        .current_dir("/");
    command
}

/// The line the client helper printed, without its prefix: `("REPLY", json)` or `("ERROR", ..)`.
fn client_as(exe: &Path, uid: u32, socket: &Path) -> (String, String) {
    let mut command = helper(exe, "helper_client", uid, (CONNECT_ENV, socket));
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = spawn(&mut command).wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("REPLY ") || l.starts_with("ERROR "))
        .unwrap_or_else(|| panic!("no answer from the helper: {stdout} {:?}", out.stderr));
    let (kind, rest) = line.split_at(5);
    (kind.to_string(), rest.trim().to_string())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Warnings the server logs, kept for the test to read.
struct Captured(Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

fn captured_warnings() -> &'static Captured {
    static LOGGER: OnceLock<&'static Captured> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger: &'static Captured = Box::leak(Box::new(Captured(Mutex::new(Vec::new()))));
        log::set_logger(logger).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        logger
    })
}

#[test]
fn another_user_is_refused_even_when_the_file_lets_it_in() {
    if !is_root() {
        eprintln!("skipped: switching uids needs root");
        return;
    }
    let logs = captured_warnings();
    let dir = socket_dir();
    let exe = public_exe(dir.path());
    let path = in_dir(&dir, "vm0.sock");
    let _server = Server::start_at(&path, Arc::new(FakeVm::default())).unwrap();

    // As created (0600, root's), the file system keeps nobody out.
    let (kind, message) = client_as(&exe, NOBODY, &path);
    assert_eq!(kind, "ERROR");
    assert!(message.starts_with("you (uid 65534) may not connect to"), "{message}");

    // With the file opened to all, the server's own check refuses, and logs it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (kind, reply) = client_as(&exe, NOBODY, &path);
    assert_eq!(kind, "REPLY");
    let expected = "uid 65534 may not control this VM; only its user (uid 0) and root may";
    assert_eq!(Reply::parse(reply.as_bytes()).unwrap(), Reply::error(expected));
    let warnings = logs.0.lock().unwrap().clone();
    assert!(
        warnings.iter().any(|w| w.starts_with("control socket: refused uid 65534")),
        "{warnings:?}"
    );

    // Root (the VM's user here) is still served.
    assert!(matches!(
        request_at(&path, &Request::Status, Duration::from_secs(5)),
        Ok(Reply::Ok { .. })
    ));
}

#[test]
fn a_vm_of_another_user_serves_that_user_and_root_only() {
    if !is_root() {
        eprintln!("skipped: switching uids needs root");
        return;
    }
    let dir = socket_dir();
    let exe = public_exe(dir.path());
    // nobody's run folder, as the server makes it.
    let socket = dir.path().join("nobody/vm0.sock");
    std::fs::create_dir(dir.path().join("nobody")).unwrap();
    std::os::unix::fs::chown(dir.path().join("nobody"), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut server = spawn(
        helper(&exe, "helper_server", NOBODY, (SERVE_ENV, &socket))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.find(|l| l.as_ref().is_ok_and(|l| l == "READY" || l.starts_with("ERROR")));
    assert_eq!(first.unwrap().unwrap(), "READY");

    // Root is served by nobody's VM; nobody too; uid 65533 is not.
    let reply = request_at(&socket, &Request::Status, Duration::from_secs(5)).unwrap();
    assert!(matches!(reply, Reply::Ok { .. }), "{reply:?}");
    assert_eq!(client_as(&exe, NOBODY, &socket).0, "REPLY");
    let (kind, message) = client_as(&exe, NOBODY - 1, &socket);
    assert_eq!(kind, "ERROR");
    assert!(message.contains("may not connect"), "{message}");

    // Its socket belongs to nobody, mode 0600.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));

    // Closing its stdin stops it; it removes its socket.
    drop(server.stdin.take());
    assert!(server.wait().unwrap().success());
    assert!(!socket.exists());
}
