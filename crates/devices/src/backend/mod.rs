//! The vhost-user backend runtime, shared by every device.
//!
//! # The protocol, as this backend speaks it
//!
//! One frontend connects over a unix stream socket ([`serve`] gets the connected socket). It
//! reads the backend's features (`GET_FEATURES`, `GET_PROTOCOL_FEATURES`), acknowledges a subset
//! (`SET_FEATURES`, `SET_PROTOCOL_FEATURES`), claims the device (`SET_OWNER`), reads the device's
//! configuration space (`GET_CONFIG`), and, when the driver is ready, hands over guest memory
//! (`SET_MEM_TABLE`: one file descriptor per region, mapped shared here) and each queue's setup:
//! `SET_VRING_NUM`, `SET_VRING_ADDR` (the frontend's virtual addresses, translated through the
//! memory table), `SET_VRING_BASE`, `SET_VRING_CALL` (an eventfd that interrupts the guest),
//! `SET_VRING_KICK` (an eventfd the guest's notifications arrive on; the queue's worker starts
//! here), and `SET_VRING_ENABLE` when protocol features were negotiated. `GET_VRING_BASE` stops a
//! queue. With `INFLIGHT_SHMFD`, `GET_INFLIGHT_FD`/`SET_INFLIGHT_FD` share the region that lets a
//! restarted backend resubmit what was in flight ([`inflight`]).
//!
//! Offered protocol features: `MQ`, `CONFIG`, `REPLY_ACK`, `RESET_DEVICE`, and `INFLIGHT_SHMFD`
//! for devices that keep requests in flight. Offered transport features: `VERSION_1`,
//! `RING_INDIRECT_DESC`, `RING_EVENT_IDX`, `VHOST_USER_F_PROTOCOL_FEATURES`.
//!
//! # Threads
//!
//! The thread that calls [`serve`] reads messages; each started queue has a worker thread
//! ([`vring`]). The data path never involves the message thread: guest → kick eventfd → worker →
//! call eventfd → guest.
//!
//! # Hostile input
//!
//! Messages are validated by the `vhost` crate and again here; a refused message gets a failure
//! reply (with `REPLY_ACK`) and the connection goes on, while a malformed or unanswerable one
//! ends the connection ([`ServeEnd::ProtocolError`]) — never the process. Guest-written rings and
//! descriptors are checked in [`chain`]; a bad chain becomes an error status or is skipped.

pub mod chain;
pub mod handler;
pub mod inflight;
pub mod memory;
pub mod queue;
pub mod vring;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::{BackendReqHandler, Error as VuError};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::{Device, DeviceError};
pub use queue::{Limited, Progress, QueueContext, QueueHandler, RequestHandler, Requests};

/// Largest virtqueue a device accepts by default.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Bytes of configuration space `GET_CONFIG` serves (the device's, then zeros).
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Transport feature bits every device offers.
pub const TRANSPORT_FEATURES: u64 = (1 << 32) // VIRTIO_F_VERSION_1
    | (1 << 28) // VIRTIO_RING_F_INDIRECT_DESC
    | (1 << 29) // VIRTIO_RING_F_EVENT_IDX
    | (1 << 30); // VHOST_USER_F_PROTOCOL_FEATURES

/// How long a message may take to arrive whole once its first byte is there.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`serve`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServeEnd {
    /// The frontend closed the connection.
    Disconnected,
    /// The stop eventfd was signalled.
    Stopped,
    /// The frontend sent something malformed or unanswerable; the connection was dropped.
    ProtocolError(String),
}

const CONN: u64 = 1;
const STOP: u64 = 2;

/// Serves one frontend on `conn` until it disconnects, breaks the protocol, or `stop` is
/// signalled. Queue workers are stopped before this returns. The device stays usable: call
/// `serve` again for the next connection.
pub fn serve(
    device: Arc<dyn Device>,
    conn: UnixStream,
    stop: Arc<EventFd>,
) -> Result<ServeEnd, DeviceError> {
    crate::fault::init();
    crate::fault::flood::socket(conn.as_raw_fd());
    conn.set_read_timeout(Some(MESSAGE_TIMEOUT)).map_err(DeviceError::io("setting a timeout"))?;
    let epoll = Epoll::new().map_err(DeviceError::io("epoll_create"))?;
    let add =
        |fd, token| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token));
    add(conn.as_raw_fd(), CONN).map_err(DeviceError::io("epoll_ctl"))?;
    add(stop.as_raw_fd(), STOP).map_err(DeviceError::io("epoll_ctl"))?;
    let handler = Arc::new(Mutex::new(handler::Handler::new(device)));
    let fd = conn.as_raw_fd();
    let mut requests = BackendReqHandler::from_stream(conn, handler.clone());
    let end = message_loop(&epoll, &mut requests, || peek_message(fd, &handler));
    handler.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    end
}

fn message_loop(
    epoll: &Epoll,
    requests: &mut BackendReqHandler<Mutex<handler::Handler>>,
    before_each: impl Fn(),
) -> Result<ServeEnd, DeviceError> {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DeviceError::Io { what: "epoll_wait", source: e }),
        };
        if events[..n].iter().any(|e| e.data() == STOP) {
            return Ok(ServeEnd::Stopped);
        }
        before_each();
        match requests.handle_request() {
            Ok(()) => {}
            Err(VuError::Disconnected | VuError::SocketBroken(_)) => {
                return Ok(ServeEnd::Disconnected)
            }
            Err(VuError::ReqHandlerError(e)) => log::debug!("request refused: {e}"),
            // SET_VRING_ENABLE before SET_FEATURES acknowledged protocol features: QEMU's net
            // device sends it at realize time and expects no reply (QEMU 7.2); it repeats the
            // enable once the device starts. The vhost crate drops it without a reply.
            Err(VuError::InactiveFeature(f)) => log::debug!("ignored a message: {f:?} inactive"),
            Err(e) => {
                log::warn!("dropping the frontend: {e}");
                return Ok(ServeEnd::ProtocolError(e.to_string()));
            }
        }
    }
}

const SET_VRING_ENABLE: u32 = 18;

/// Peeks at the next message before the `vhost` crate reads it: logs it (`BULKHEAD_LOG=debug`
/// shows the frontend's sequence) and applies an early `SET_VRING_ENABLE`.
///
/// QEMU 7.2's net device sends `SET_VRING_ENABLE` when it is realized, before `SET_FEATURES`,
/// and does not repeat it when it starts the device; libvhost-user honours it. The `vhost`
/// crate refuses it (protocol features are not acknowledged yet) without calling the handler.
/// So it is applied to the handler directly while protocol features are not negotiated.
fn peek_message(fd: std::os::fd::RawFd, handler: &Mutex<handler::Handler>) {
    let mut msg = [0u8; 20];
    // SAFETY: recv writes at most 20 bytes into `msg`; MSG_PEEK leaves the message (and any
    // file descriptors) queued for the real read.
    let n = unsafe {
        libc::recv(fd, msg.as_mut_ptr().cast(), msg.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    let word = |i: usize| u32::from_le_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
    if n >= 12 && log::log_enabled!(log::Level::Debug) {
        let code = word(0);
        let name = vhost::vhost_user::message::FrontendReq::try_from(code)
            .map_or_else(|()| "(unknown)".to_string(), |r| format!("{r:?}"));
        let arg = if n >= 20 { format!(" {} {}", word(12), word(16)) } else { String::new() };
        log::debug!("message {code} {name}{arg}");
    }
    if n == 20 && word(0) == SET_VRING_ENABLE && word(8) == 8 {
        let mut h = handler.lock().unwrap_or_else(|p| p.into_inner());
        h.early_vring_enable(word(12), word(16));
    }
}
