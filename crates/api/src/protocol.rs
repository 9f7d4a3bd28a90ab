//! The wire protocol of a VM's control socket: one JSON request, one JSON reply.
//!
//! # A conversation, step by step
//!
//! 1. The client connects to the VM's unix socket (where it lives: [`crate::paths`]).
//! 2. The server reads the client's credentials from the kernel (`SO_PEERCRED`). A client that
//!    runs neither as the VM's user nor as root gets an `error` reply at once, without a word
//!    of its own being read, and the refusal is logged.
//! 3. The client writes one request: a JSON object on one line, ended by a newline (or by
//!    closing its side of the connection). Every request carries the protocol version and
//!    names what it asks for in `request`:
//!    ```text
//!    {"version":1,"request":"status"}
//!    {"version":1,"request":"device_restart","id":"blk0"}
//!    {"version":1,"request":"device_upgrade","id":"blk0","binary":"/usr/local/bin/bulkhead"}
//!    {"version":1,"request":"disk_replace","id":"blk0","path":"/srv/big.qcow2","format":"qcow2","read_only":null}
//!    {"version":1,"request":"device_limits","id":"blk0","limits":{"ops":{"size":100,"one_time_burst":0,"refill_time":100},"bandwidth":null}}
//!    {"version":1,"request":"ctrl_alt_del"}
//!    ```
//!    `disk_replace` swaps a disk's image under the running guest (what Firecracker's
//!    `PATCH /drives/{id}` with `path_on_host` does): `path` absolute (the client makes it
//!    so); `format` `raw`, `qcow2` or `vmdk`, or absent or null to probe it from the content;
//!    `read_only` absent or null to keep the disk's, else it must be what the disk is (the
//!    guest's driver agreed on it when it started).
//!    `device_limits` changes a device's rate limits while the guest runs ([`crate::limits`]:
//!    an absent key leaves a bucket as it is, `null` removes its limit).
//!    `ctrl_alt_del` presses and releases Ctrl, Alt and Delete on the VM's i8042 keyboard
//!    (what Firecracker's `SendCtrlAltDel` does): a Linux guest reboots, which ends the VM.
//!    It is answered once the scan codes are in the controller's buffer and its interrupt
//!    raised, without waiting for the guest, which may ignore them.
//!    Unknown fields are refused, so that a typo is an error and not a request silently
//!    carried out without it.
//! 4. The server checks the request — at most [`MAX_REQUEST_BYTES`] bytes, all of it within
//!    [`REQUEST_DEADLINE`], valid JSON, a version it speaks, a known request with the fields it
//!    needs, for an upgrade a binary that is safe to run (see [`crate::binary`]), for a disk's
//!    new image an absolute path — then
//!    asks the VM (its [`crate::ControlTarget`]) and writes one reply line:
//!    ```text
//!    {"version":1,"reply":"ok","result":{"status":{"name":"vm0","core_pid":4242,…}}}
//!    {"version":1,"reply":"ok","result":{"device_change":{"id":"blk0","old_pid":4250,"new_pid":4301,"took_ms":12.5}}}
//!    {"version":1,"reply":"ok","result":{"disk_replaced":{"change":{"id":"blk0","old_pid":4301,"new_pid":4377,"took_ms":48.2},"path":"/srv/big.qcow2","capacity_bytes":4294967296}}}
//!    {"version":1,"reply":"ok","result":{"limits_change":{"id":"blk0","limits":{"bandwidth":null,"ops":{"size":100,"one_time_burst":0,"refill_time":100}}}}}
//!    {"version":1,"reply":"ok","result":{"keys_pressed":{"keys":"ctrl-alt-del","queued":true,"interrupt":true}}}
//!    {"version":1,"reply":"error","message":"no device named blk9; this VM has blk0, rng0"}
//!    ```
//!    Anything wrong with the request — garbage, a half-written line, too many bytes, a
//!    client that stalls — is answered by an `error` reply whose message says what was wrong,
//!    and the server goes on serving.
//! 5. The server closes the connection. One connection carries one request; the server
//!    handles one connection at a time, so two restarts of a device never overlap.
//!
//! # Versions
//!
//! Requests and replies carry `"version": 1`. A server refuses a request of a version it does
//! not speak with an `error` reply (in its own version) that names the version it speaks.
//! Fields may be added to replies without a new version; clients ignore fields they do not
//! know. Anything else — a field renamed or removed, a new meaning — is a new version.

use crate::limits::{LimitsChange, RateLimits};
use crate::status::{
    CoreUpdateStarted, DeviceChange, DiskReplaced, KeysPressed, RunState, SnapshotWritten, VmStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// The largest request a server reads, newline included; a longer one is refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The largest reply a client reads (a status of many devices stays far below it).
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// How long a client has, from connecting, to deliver its whole request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A request to a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The VM and each of its devices.
    Status,
    /// Replace a device's backend by a new one running the same binary.
    DeviceRestart {
        /// The device, e.g. `blk0`.
        id: String,
    },
    /// Replace a device's backend by one running another binary.
    DeviceUpgrade {
        /// The device, e.g. `blk0`.
        id: String,
        /// The binary the new backend runs: an absolute path (the client makes it absolute).
        binary: PathBuf,
    },
    /// Change a device's rate limits (its compartment or thread applies them at its next
    /// batch of requests; nothing restarts).
    DeviceLimits {
        /// The device, e.g. `blk0`.
        id: String,
        /// The buckets to change; absent keys stay as they are.
        limits: RateLimits,
    },
    /// Serve a disk from another image while the guest runs: a new backend is started on it,
    /// and the guest is told of the new capacity.
    DiskReplace {
        /// The disk, e.g. `blk0`.
        id: String,
        /// The new image: an absolute path (the client makes it absolute).
        path: PathBuf,
        /// Its format, `raw`, `qcow2` or `vmdk`; `None`: probed from its content.
        #[serde(default)]
        format: Option<String>,
        /// Whether it is served read-only; `None`: as the disk is (it cannot change).
        #[serde(default)]
        read_only: Option<bool>,
    },
    /// Press and release Ctrl-Alt-Del on the VM's keyboard (the guest decides what it does).
    CtrlAltDel,
    /// Pause the VM: its vCPUs stop, its devices' queues stop; the compartments keep running.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Write the VM's state and memory to a folder (`bulkhead run --restore` reads it). A
    /// running VM is paused for it and resumed after.
    Snapshot {
        /// The folder: an absolute path (the client makes it absolute); created if missing.
        to: PathBuf,
    },
    /// Hand the running VM to a new core binary in the same process: the guest is paused,
    /// the new binary takes it over and resumes it (or, if it cannot, hands it back).
    UpdateCore {
        /// The new binary: an absolute path (the client makes it absolute), checked as for
        /// [`Request::DeviceUpgrade`].
        binary: PathBuf,
    },
}

/// A disk's new image, as [`Request::DiskReplace`] names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    /// An absolute path.
    pub path: PathBuf,
    /// `raw`, `qcow2` or `vmdk`; `None`: probed.
    pub format: Option<String>,
    /// `None`: as the disk is.
    pub read_only: Option<bool>,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The request was carried out.
    Ok {
        /// What it produced.
        result: Payload,
    },
    /// The request was refused or failed; nothing was changed unless the message says so.
    Error {
        /// What went wrong and, where there is something to do, what to do: one sentence.
        message: String,
    },
}

/// What a successful request produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// The answer to [`Request::Status`].
    Status(VmStatus),
    /// The answer to [`Request::DeviceRestart`] and [`Request::DeviceUpgrade`].
    DeviceChange(DeviceChange),
    /// The answer to [`Request::DiskReplace`].
    DiskReplaced(DiskReplaced),
    /// The answer to [`Request::DeviceLimits`]: the limits now in force.
    LimitsChange(LimitsChange),
    /// The answer to [`Request::CtrlAltDel`].
    KeysPressed(KeysPressed),
    /// The answer to [`Request::Pause`] and [`Request::Resume`].
    RunState(RunState),
    /// The answer to [`Request::Snapshot`].
    SnapshotWritten(SnapshotWritten),
    /// The answer to [`Request::UpdateCore`].
    CoreUpdateStarted(CoreUpdateStarted),
}

/// Why a request or a reply could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// More bytes than the limit.
    #[error("the message is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Nothing but white space.
    #[error("the message is empty; send one JSON object on one line")]
    Empty,
    /// Not JSON, not an object, or not the fields of a known message.
    #[error("the message is malformed: {reason}")]
    Malformed {
        /// What is wrong, as serde_json or this module says it.
        reason: String,
    },
    /// A version other than [`PROTOCOL_VERSION`].
    #[error(
        "protocol version {got} is not spoken here; this side speaks version {PROTOCOL_VERSION}"
    )]
    Version {
        /// The version the message carried.
        got: String,
    },
}

impl Request {
    /// The request as one line: JSON with the version, and a newline.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Reads a request line (with or without its newline); never panics, whatever the bytes.
    pub fn parse(line: &[u8]) -> Result<Request, ProtocolError> {
        parse(line, MAX_REQUEST_BYTES, true)
    }
}

impl Reply {
    /// An error reply.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Error { message: message.into() }
    }

    /// The reply as one line: JSON with the version, and a newline.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Reads a reply line (with or without its newline); never panics, whatever the bytes.
    pub fn parse(line: &[u8]) -> Result<Reply, ProtocolError> {
        parse(line, MAX_REPLY_BYTES, false)
    }

    /// The payload of an `ok` reply, or the message of an `error` one.
    pub fn into_result(self) -> Result<Payload, String> {
        match self {
            Reply::Ok { result } => Ok(result),
            Reply::Error { message } => Err(message),
        }
    }
}

/// A message on the wire: the version first, then the message's own fields.
#[derive(Serialize)]
struct Envelope<'a, T> {
    version: u64,
    #[serde(flatten)]
    message: &'a T,
}

/// Serializes a message with the version in front, as one line.
fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let envelope = Envelope { version: PROTOCOL_VERSION, message };
    // Requests and replies are plain data with string keys: serializing them cannot fail.
    let mut line = serde_json::to_vec(&envelope).expect("a protocol message always serializes");
    line.push(b'\n');
    line
}

/// Checks size, JSON and version, then reads the rest of the object as a `T`. With `strict`,
/// a field that `T` does not have is an error (serde's `deny_unknown_fields` misses those next
/// to a unit variant, like `{"request":"status","force":true}`).
fn parse<T>(line: &[u8], limit: usize, strict: bool) -> Result<T, ProtocolError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    if line.len() > limit {
        return Err(ProtocolError::TooLarge { limit });
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ProtocolError::Empty);
    }
    let malformed = |reason: String| ProtocolError::Malformed { reason };
    // serde_json bounds its recursion (128 levels), so deep nesting is an error, not a crash.
    let value: Value = serde_json::from_slice(line).map_err(|e| malformed(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(malformed("it is not a JSON object".into()));
    };
    match object.remove("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(other) => return Err(ProtocolError::Version { got: shorten(&other.to_string()) }),
        None => return Err(malformed("it has no \"version\" field".into())),
    }
    let keys: Vec<String> = if strict { object.keys().cloned().collect() } else { Vec::new() };
    let message: T =
        serde_json::from_value(Value::Object(object)).map_err(|e| malformed(e.to_string()))?;
    if let Ok(Value::Object(known)) = serde_json::to_value(&message) {
        if let Some(unknown) = keys.iter().find(|key| !known.contains_key(*key)) {
            return Err(malformed(format!("unknown field `{}`", shorten(unknown))));
        }
    }
    Ok(message)
}

/// A value quoted back in an error message, cut to a readable length.
fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DeviceMode, DeviceState, DeviceStatus};

    fn sample_status() -> VmStatus {
        VmStatus {
            name: "vm0".into(),
            core_pid: 4242,
            cpus: 2,
            memory_bytes: 512 << 20,
            uptime_s: 61,
            limits: None,
            devices: vec![DeviceStatus {
                id: "blk0".into(),
                kind: "blk".into(),
                mode: DeviceMode::Compartment,
                pid: Some(4250),
                state: DeviceState::Running,
                restarts: 1,
                last_exit: Some("killed by signal 9".into()),
                uptime_s: 12,
                requests: 1000,
                sandbox: Some("seccomp(filter) nnp caps(none)".into()),
                on_restart: None,
                rate_limits: Some(RateLimits { ops: Some(None), ..Default::default() }),
                standby_pid: None,
            }],
            confinement: Vec::new(),
            paused: false,
            core: None,
        }
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Status,
            Request::DeviceRestart { id: "blk0".into() },
            Request::DeviceUpgrade { id: "net0".into(), binary: "/usr/bin/bulkhead".into() },
            Request::DiskReplace {
                id: "blk0".into(),
                path: "/srv/big.qcow2".into(),
                format: Some("qcow2".into()),
                read_only: Some(false),
            },
            Request::DiskReplace {
                id: "blk1".into(),
                path: "/srv/d.raw".into(),
                format: None,
                read_only: None,
            },
            Request::DeviceLimits { id: "blk0".into(), limits: RateLimits::default() },
            Request::DeviceLimits { id: "net0".into(), limits: sample_limits() },
            Request::CtrlAltDel,
        ];
        for request in requests {
            let line = request.encode();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(Request::parse(&line), Ok(request));
        }
    }

    #[test]
    fn wire_form_is_the_documented_one() {
        let line = Request::DeviceRestart { id: "blk0".into() }.encode();
        assert_eq!(line, b"{\"version\":1,\"request\":\"device_restart\",\"id\":\"blk0\"}\n");
        let reply = Reply::error("no");
        assert_eq!(reply.encode(), b"{\"version\":1,\"reply\":\"error\",\"message\":\"no\"}\n");
        let line = Request::DeviceLimits { id: "net0".into(), limits: sample_limits() }.encode();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"version\":1,\"request\":\"device_limits\",\"id\":\"net0\",\"limits\":\
             {\"rx_ops\":null,\"tx_bandwidth\":{\"size\":1048576,\"one_time_burst\":0,\
             \"refill_time\":1000}}}\n"
        );
    }

    #[test]
    fn ctrl_alt_del_reads_its_documented_forms() {
        let line = br#"{"version":1,"request":"ctrl_alt_del"}"#;
        assert_eq!(Request::parse(line), Ok(Request::CtrlAltDel));
        assert_eq!(Request::CtrlAltDel.encode(), [&line[..], b"\n"].concat());
        let extra = br#"{"version":1,"request":"ctrl_alt_del","keys":"f1"}"#;
        assert!(Request::parse(extra).unwrap_err().to_string().contains("unknown field"));
        let reply = br#"{"version":1,"reply":"ok","result":{"keys_pressed":{"keys":"ctrl-alt-del","queued":true,"interrupt":true}}}"#;
        let Ok(Reply::Ok { result: Payload::KeysPressed(pressed) }) = Reply::parse(reply) else {
            panic!("{:?}", Reply::parse(reply))
        };
        assert!(pressed.queued && pressed.interrupt);
        let again = Reply::Ok { result: Payload::KeysPressed(pressed) };
        assert_eq!(again.encode(), [&reply[..], b"\n"].concat());
    }

    fn sample_limits() -> RateLimits {
        let bucket = crate::TokenBucket { size: 1 << 20, one_time_burst: 0, refill_time: 1000 };
        RateLimits { rx_ops: Some(None), tx_bandwidth: Some(Some(bucket)), ..Default::default() }
    }

    #[test]
    fn disk_replace_reads_its_documented_forms() {
        let full = br#"{"version":1,"request":"disk_replace","id":"blk0","path":"/srv/big.qcow2","format":"qcow2","read_only":null}"#;
        let request = Request::DiskReplace {
            id: "blk0".into(),
            path: "/srv/big.qcow2".into(),
            format: Some("qcow2".into()),
            read_only: None,
        };
        assert_eq!(Request::parse(full), Ok(request.clone()));
        assert_eq!(request.encode(), [&full[..], b"\n"].concat());
        // The options may be left out.
        let short = br#"{"version":1,"request":"disk_replace","id":"blk0","path":"/d.raw"}"#;
        let Ok(Request::DiskReplace { format: None, read_only: None, .. }) = Request::parse(short)
        else {
            panic!("{:?}", Request::parse(short))
        };
        let reply = br#"{"version":1,"reply":"ok","result":{"disk_replaced":{"change":{"id":"blk0","old_pid":4301,"new_pid":4377,"took_ms":48.2},"path":"/srv/big.qcow2","capacity_bytes":4294967296}}}"#;
        let Ok(Reply::Ok { result: Payload::DiskReplaced(done) }) = Reply::parse(reply) else {
            panic!("{:?}", Reply::parse(reply))
        };
        assert_eq!((done.change.new_pid, done.capacity_bytes), (Some(4377), 4 << 30));
        let again = Reply::Ok { result: Payload::DiskReplaced(done) };
        assert_eq!(Reply::parse(&again.encode()), Ok(again));
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            Reply::Ok { result: Payload::Status(sample_status()) },
            Reply::Ok {
                result: Payload::DeviceChange(DeviceChange {
                    id: "blk0".into(),
                    old_pid: Some(1),
                    new_pid: None,
                    took_ms: 2.5,
                }),
            },
            Reply::Ok {
                result: Payload::LimitsChange(LimitsChange {
                    id: "net0".into(),
                    limits: sample_limits(),
                }),
            },
            Reply::Ok {
                result: Payload::KeysPressed(KeysPressed {
                    keys: "ctrl-alt-del".into(),
                    queued: true,
                    interrupt: false,
                }),
            },
            Reply::error("no device named blk9"),
        ];
        for reply in replies {
            assert_eq!(Reply::parse(&reply.encode()), Ok(reply));
        }
    }

    #[test]
    fn durations_read_back_as_the_same_number() {
        // Parsed, written and parsed again, each must be the same f64 (0.5e40 came back one
        // ULP off before serde_json's exact float parsing was turned on).
        for took_ms in
            [0.5e40_f64, 4.9999999999999995e39, 0.1, 1e-300, 2.2250738585072014e-308, 12.5]
        {
            let line = format!(
                r#"{{"version":1,"reply":"ok","result":{{"device_change":{{"id":"blk0","old_pid":null,"new_pid":null,"took_ms":{took_ms:e}}}}}}}"#
            );
            let reply = Reply::parse(line.as_bytes()).unwrap();
            let Reply::Ok { result: Payload::DeviceChange(change) } = &reply else { panic!() };
            assert_eq!(change.took_ms.to_bits(), took_ms.to_bits(), "{line}");
            assert_eq!(Reply::parse(&reply.encode()), Ok(reply));
        }
    }

    #[test]
    fn reply_fields_unknown_to_the_client_are_ignored() {
        let line = br#"{"version":1,"reply":"error","message":"x","hint":"new in a later server"}"#;
        assert_eq!(Reply::parse(line), Ok(Reply::error("x")));
    }

    #[test]
    fn crlf_and_spaces_are_accepted() {
        let line = b"  { \"request\" : \"status\", \"version\" : 1 }\r\n";
        assert_eq!(Request::parse(line), Ok(Request::Status));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b" \n", "empty"),
            (b"garbage\n", "malformed: expected value"),
            (b"[1,2]", "not a JSON object"),
            (b"{\"request\":\"status\"}", "no \"version\""),
            (b"{\"version\":2,\"request\":\"status\"}", "version 2 is not spoken"),
            (b"{\"version\":\"1\",\"request\":\"status\"}", "version \"1\" is not spoken"),
            (b"{\"version\":1.0,\"request\":\"status\"}", "version 1.0 is not spoken"),
            (b"{\"version\":1}", "missing field `request`"),
            (b"{\"version\":1,\"request\":\"reboot\"}", "unknown variant `reboot`"),
            (b"{\"version\":1,\"request\":\"device_restart\"}", "missing field `id`"),
            (b"{\"version\":1,\"request\":\"device_restart\",\"id\":7}", "invalid type"),
            (
                b"{\"version\":1,\"request\":\"device_restart\",\"id\":\"a\",\"x\":1}",
                "unknown field",
            ),
            (b"{\"version\":1,\"request\":\"status\",\"force\":true}", "unknown field"),
            (
                b"{\"version\":1,\"request\":\"device_upgrade\",\"id\":\"a\"}",
                "missing field `binary`",
            ),
            (
                b"{\"version\":1,\"request\":\"disk_replace\",\"id\":\"a\"}",
                "missing field `path`",
            ),
            (
                b"{\"version\":1,\"request\":\"disk_replace\",\"id\":\"a\",\"path\":\"/d\",\"ro\":true}",
                "unknown field",
            ),
            (b"{\"version\":1,\"request\":\"status\"", "EOF while parsing"),
            (b"{\"version\":1,\"request\":\"device_limits\",\"id\":\"a\"}", "missing field `limits`"),
            (
                b"{\"version\":1,\"request\":\"device_limits\",\"id\":\"a\",\"limits\":{\"iops\":null}}",
                "unknown field `iops`",
            ),
            (b"{\"version\":1,\"request\":\"status\"}{}", "trailing characters"),
            (b"\xff\xfe{}", "malformed"),
        ];
        for (line, expected) in cases {
            let message = Request::parse(line).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{:?}: {message:?} does not say {expected:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn oversized_and_deep_requests_are_refused() {
        let mut big = br#"{"version":1,"request":"device_restart","id":""#.to_vec();
        big.resize(MAX_REQUEST_BYTES + 1, b'a');
        assert_eq!(Request::parse(&big), Err(ProtocolError::TooLarge { limit: MAX_REQUEST_BYTES }));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(Request::parse(deep.as_bytes()).unwrap_err().to_string().contains("recursion"));
    }

    #[test]
    fn long_versions_are_shortened_in_messages() {
        let line = format!("{{\"version\":\"{}\",\"request\":\"status\"}}", "9".repeat(1000));
        assert!(Request::parse(line.as_bytes()).unwrap_err().to_string().len() < 200);
    }
}
