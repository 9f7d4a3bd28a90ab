//! Bulkhead's management API: the control socket of a running VM, served from its core.
//!
//! Each VM's core serves a unix socket ([`Server`]) on which its user (or root) asks for the
//! VM's status, for a device's backend to be restarted or upgraded while the guest runs, or
//! for Ctrl-Alt-Del to be pressed on its keyboard.
//! The core answers through a [`ControlTarget`]; clients — `bulkhead ctl` (the `bulkhead-ctl`
//! crate), scripts — send one JSON request per connection and read one JSON reply.
//!
//! - [`protocol`]: the messages, versioned, and a conversation step by step;
//! - [`server`]: the socket's life, who may connect (`SO_PEERCRED`), limits;
//! - [`paths`]: where sockets live (`/run/bulkhead`, `$XDG_RUNTIME_DIR/bulkhead`) and names;
//! - [`binary`]: the checks an upgrade's binary must pass;
//! - [`limits`]: a device's rate limits, as Firecracker's token buckets.

pub mod binary;
pub mod limits;
pub mod paths;
pub mod peer;
pub mod protocol;
pub mod server;
pub mod status;

pub use limits::{LimitsChange, RateLimits, TokenBucket};
pub use protocol::{NewImage, Payload, ProtocolError, Reply, Request, PROTOCOL_VERSION};
pub use server::{ControlTarget, Server, ServerError};
pub use status::{
    ConfinementStatus, CoreStatus, CoreUpdateStarted, CoreUpdateStatus, DeviceChange, DeviceMode,
    DeviceState, DeviceStatus, DiskReplaced, KeysPressed, RunState, SnapshotWritten, VmStatus,
};
