//! The console's host side as both queues share it: the connection bytes cross, the guest's
//! output not yet written, and the epoll set the receive queue's worker waits on.
//!
//! **The connection.** A pty's master side, or standard input and output, is the connection
//! for the device's whole life. With a listening socket, the connection is the client accepted
//! last, one at a time: while one is connected, the next waits in the socket's backlog until
//! it leaves. A client that shuts down its writing side stays the console for what the guest
//! writes until it closes; the one that closes, or that cannot be written to, is dropped.
//!
//! **Guest output** goes to the connection as it comes. What cannot be written at once (no
//! client connected, or one that reads slowly) waits here, at most [`OUTPUT_MAX`] bytes, the
//! oldest dropped first, and goes to the connection when it can take it (the next client gets
//! the last [`OUTPUT_MAX`] bytes the guest wrote before it came). So the guest's transmit queue
//! never waits on the host: a console nobody reads never stalls the guest, nor looks hung to
//! the core's watchdog. Output to standard output or a pty that fails (closed) is dropped.
//!
//! **Input** is read only while the guest has receive buffers for it (see `device.rs`).
//!
//! **Readiness.** The receive worker waits on [`Port::epoll_fd`], an epoll set that holds
//! exactly what the device wants to hear about now: the listener while no client is
//! connected, the input while the guest has room for it, the output while bytes wait for it.
//! It is level-triggered, so whatever is in it is acted on when it is ready (or taken out),
//! and the worker never spins. Descriptors epoll refuses (a regular file or `/dev/null` as
//! standard input or output) are taken as always ready for writing, and as no input.
//!
//! Standard input and output share their open file descriptions with other processes, so they
//! stay blocking: they are polled before every read and write, and written at most
//! [`WRITE_MAX`] bytes at a time (`PIPE_BUF`: a pipe that polls writable takes that much).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::host::HostEnds;
use crate::startup::Startup;
use crate::DeviceError;

/// The most guest output kept for a connection that cannot take it yet.
pub const OUTPUT_MAX: usize = 64 << 10;
/// The most bytes one write to a blocking output carries.
pub const WRITE_MAX: usize = 4096;
/// The name the connected client travels under when the core keeps it for a successor.
pub const CLIENT_NAME: &str = "console-client";

/// What the epoll set holds, by slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    /// A client may be accepted.
    Listener = 0,
    /// The connection's input (and its output, when it is the same descriptor).
    Input = 1,
    /// The connection's output, when it is a descriptor of its own.
    Output = 2,
}

impl Token {
    const ALL: [Token; 3] = [Token::Listener, Token::Input, Token::Output];
}

/// The bytes' way to the host and back.
#[derive(Debug)]
struct Connection {
    input: File,
    /// `None`: `input` is written too (a socket, a pty).
    output: Option<File>,
    /// A client accepted on the listener (dropped when it leaves).
    client: bool,
    /// Shared with other processes: never made non-blocking; polled before each read and write.
    blocking: bool,
    input_open: bool,
    output_open: bool,
    /// Whether epoll takes the descriptor (not a regular file).
    input_pollable: bool,
    output_pollable: bool,
}

impl Connection {
    fn client(stream: UnixStream) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        Ok(Connection::new(File::from(OwnedFd::from(stream)), None, true, false))
    }

    fn new(input: File, output: Option<File>, client: bool, blocking: bool) -> Connection {
        Connection {
            input,
            output,
            client,
            blocking,
            input_open: true,
            output_open: true,
            input_pollable: true,
            output_pollable: true,
        }
    }

    fn output(&self) -> &File {
        self.output.as_ref().unwrap_or(&self.input)
    }
}

/// Whether `fd` is ready for `events` now (`POLLHUP` and `POLLERR` count as ready: the read or
/// write then says what happened).
fn ready(fd: RawFd, events: libc::c_short) -> bool {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: poll reads and writes one pollfd that lives for the call.
    unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
}

/// The state both queues share.
struct State {
    listener: Option<UnixListener>,
    conn: Option<Connection>,
    /// Guest output not written yet, oldest first.
    pending: VecDeque<u8>,
    /// Guest output dropped so far (no room, or an output that failed).
    dropped: u64,
    /// The guest has no receive buffer for the input read already: do not watch the input.
    input_paused: bool,
    /// What the receive worker waits on, and what it holds now, by token.
    epoll: Epoll,
    registered: [Option<(RawFd, EventSet)>; 3],
    /// Told which client is connected, so that the core keeps it for a successor.
    core: Option<Startup>,
    /// A pty's terminal side, when this process opened the pair (by hand): kept open, so that
    /// the master side never reads as hung up.
    _terminal: Option<File>,
}

/// The console's host side, shared by its two queues.
pub struct Port {
    state: Mutex<State>,
    epoll_fd: RawFd,
}

/// What the epoll set said, for the receive worker's pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Woken {
    /// The connection's input hung up or failed.
    pub input_hung_up: bool,
}

impl Port {
    /// The port over `ends`, with `client` (handed over by a predecessor) connected.
    pub fn new(ends: HostEnds, client: Option<File>) -> Result<Port, DeviceError> {
        let io = DeviceError::io;
        let mut terminal = None;
        let (listener, conn) = match ends {
            HostEnds::Listener { listener, .. } => {
                let conn = match client {
                    Some(file) => Some(
                        Connection::client(UnixStream::from(OwnedFd::from(file)))
                            .map_err(io("making the console's client non-blocking"))?,
                    ),
                    None => None,
                };
                (Some(listener), conn)
            }
            HostEnds::Pty { master, terminal: kept, .. } => {
                terminal = kept;
                set_nonblocking(&master).map_err(io("making the pty non-blocking"))?;
                (None, Some(Connection::new(master, None, false, false)))
            }
            HostEnds::Stdio { input, output } => {
                (None, Some(Connection::new(input, Some(output), false, true)))
            }
        };
        let epoll = Epoll::new().map_err(io("epoll_create"))?;
        let epoll_fd = epoll.as_raw_fd();
        let mut state = State {
            listener,
            conn,
            pending: VecDeque::new(),
            dropped: 0,
            input_paused: false,
            epoll,
            registered: [None; 3],
            core: None,
            _terminal: terminal,
        };
        state.sync();
        Ok(Port { state: Mutex::new(state), epoll_fd })
    }

    /// What the receive worker waits on.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll_fd
    }

    /// Every descriptor held (for the sandbox to keep).
    pub fn fds(&self) -> Vec<RawFd> {
        let st = self.lock_state();
        let mut fds = vec![self.epoll_fd];
        fds.extend(st.listener.as_ref().map(AsRawFd::as_raw_fd));
        if let Some(c) = &st.conn {
            fds.push(c.input.as_raw_fd());
            fds.extend(c.output.as_ref().map(AsRawFd::as_raw_fd));
        }
        fds
    }

    /// The connected client, for a successor (its descriptor, valid while it is connected).
    pub fn client_fd(&self) -> Option<RawFd> {
        let st = self.lock_state();
        st.conn.as_ref().filter(|c| c.client).map(|c| c.input.as_raw_fd())
    }

    /// From now on, tells the core on `core` which client is connected (see `startup`'s
    /// `uses`), so that it hands it to the next compartment.
    pub fn tell_core(&self, core: Startup) {
        self.lock_state().core = Some(core);
    }

    /// Guest output dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock_state().dropped
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state, for one pass of a queue; the epoll set is brought up to date when the guard
    /// is dropped.
    pub fn lock(&self) -> PortGuard<'_> {
        PortGuard { state: self.lock_state() }
    }
}

/// The port's state, locked for one pass of a queue.
pub struct PortGuard<'a> {
    state: MutexGuard<'a, State>,
}

impl Drop for PortGuard<'_> {
    fn drop(&mut self) {
        self.state.sync();
    }
}

/// What a read or write on the connection came to.
enum Outcome {
    /// Done, or nothing to do now.
    Fine,
    /// The input ended.
    InputEnded,
    /// The connected client is gone (why).
    ClientGone(String),
    /// Standard input or a pty failed: no more input.
    InputFailed(io::Error),
    /// Standard output or a pty failed: its output is dropped.
    OutputFailed(io::Error),
}

impl PortGuard<'_> {
    /// Takes what the epoll set says (without waiting).
    pub fn woken(&mut self) -> Woken {
        let mut events = [EpollEvent::default(); 3];
        let n = self.state.epoll.wait(0, &mut events).unwrap_or(0);
        let hung_up = EventSet::HANG_UP | EventSet::ERROR;
        let input_hung_up = events[..n].iter().any(|e| {
            e.data() == Token::Input as u64
                && EventSet::from_bits_truncate(e.events()).intersects(hung_up)
        });
        Woken { input_hung_up }
    }

    /// Whether the guest has no room for input (the receive queue says so on each pass).
    pub fn set_input_paused(&mut self, paused: bool) {
        self.state.input_paused = paused;
    }

    /// Accepts a waiting client if none is connected, and writes it what waits.
    pub fn accept(&mut self) {
        let st = &mut *self.state;
        if st.conn.is_some() {
            return;
        }
        let Some(listener) = &st.listener else { return };
        loop {
            match listener.accept() {
                Ok((stream, _)) => match Connection::client(stream) {
                    Ok(conn) => {
                        log::info!("a console client connected");
                        st.conn = Some(conn);
                        st.tell_core();
                        st.flush();
                        return;
                    }
                    Err(e) => log::warn!("dropped a console client: {e}"),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("accepting a console client failed: {e}");
                    }
                    return;
                }
            }
        }
    }

    /// Reads input into `buf`: how many bytes (0: none now). `hung_up`: the epoll set said the
    /// input hung up; a client whose input has ended is then dropped.
    pub fn read(&mut self, buf: &mut [u8], hung_up: bool) -> usize {
        let st = &mut *self.state;
        let Some(conn) = st.conn.as_mut() else { return 0 };
        let (n, outcome) = read_from(conn, buf);
        let outcome = match outcome {
            Outcome::InputEnded if hung_up && conn.client => Outcome::ClientGone("it left".into()),
            Outcome::InputEnded => {
                conn.input_open = false;
                Outcome::Fine
            }
            other => other,
        };
        st.settle(outcome);
        n
    }

    /// Adds guest output (see the module documentation) and writes what the connection takes.
    pub fn write(&mut self, bytes: &[u8]) {
        let st = &mut *self.state;
        if st.conn.as_ref().is_some_and(|c| !c.output_open) {
            st.dropped += bytes.len() as u64;
            return;
        }
        st.pending.extend(bytes);
        let excess = st.pending.len().saturating_sub(OUTPUT_MAX);
        if excess > 0 {
            st.pending.drain(..excess);
            st.dropped += excess as u64;
        }
        st.flush();
    }

    /// Writes what waits, as far as the connection takes it.
    pub fn flush(&mut self) {
        self.state.flush();
    }
}

/// One read from the connection's input (polled first if it is blocking).
fn read_from(conn: &mut Connection, buf: &mut [u8]) -> (usize, Outcome) {
    if !conn.input_open || !conn.input_pollable {
        // Nothing more comes; a client that also hung up has left.
        return (0, Outcome::InputEnded);
    }
    if conn.blocking && !ready(conn.input.as_raw_fd(), libc::POLLIN) {
        return (0, Outcome::Fine);
    }
    loop {
        return match (&conn.input).read(buf) {
            Ok(0) => (0, Outcome::InputEnded),
            Ok(n) => (n, Outcome::Fine),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Outcome::Fine),
            Err(e) if conn.client => (0, Outcome::ClientGone(format!("reading failed: {e}"))),
            Err(e) => (0, Outcome::InputFailed(e)),
        };
    }
}

impl State {
    /// Writes what waits, as far as the connection takes it.
    fn flush(&mut self) {
        loop {
            let outcome = match self.conn.as_mut() {
                None => return,
                Some(_) if self.pending.is_empty() => return,
                Some(conn) if !conn.output_open => {
                    self.dropped += self.pending.len() as u64;
                    self.pending.clear();
                    return;
                }
                Some(conn) => match write_to(conn, &self.pending) {
                    Ok(0) => return,
                    Ok(n) => {
                        self.pending.drain(..n);
                        continue;
                    }
                    Err(outcome) => outcome,
                },
            };
            // What a client did not take waits for the next one.
            self.settle(outcome);
        }
    }

    /// Acts on what a read or a write came to.
    fn settle(&mut self, outcome: Outcome) {
        match (outcome, self.conn.as_mut()) {
            (Outcome::Fine, _) | (_, None) => {}
            (Outcome::InputEnded, Some(conn)) => conn.input_open = false,
            (Outcome::ClientGone(why), Some(_)) => self.drop_client(&why),
            (Outcome::InputFailed(e), Some(conn)) => {
                log::warn!("the console's input failed: {e}; no more input");
                conn.input_open = false;
            }
            (Outcome::OutputFailed(e), Some(conn)) => {
                log::warn!("the console's output failed: {e}; its output is dropped");
                conn.output_open = false;
            }
        }
    }

    /// Drops the connected client; the listener accepts the next. It is taken out of the epoll
    /// set first: another process (the core) may hold its socket too, and epoll would go on
    /// reporting it after this descriptor is closed.
    fn drop_client(&mut self, why: &str) {
        let Some(conn) = self.conn.take() else { return };
        let slot = Token::Input as usize;
        if let Some((fd, _)) = self.registered[slot].take() {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        drop(conn);
        log::info!("the console client is gone: {why}");
        self.tell_core();
    }

    /// Tells the core which client is connected (the core keeps it for a successor). Never
    /// waits: a core that does not read does not stall the console.
    fn tell_core(&self) {
        let Some(core) = &self.core else { return };
        let client = self.conn.as_ref().filter(|c| c.client).map(|c| c.input.as_raw_fd());
        let files = client.map(|fd| (std::path::Path::new(CLIENT_NAME), true, fd));
        if let Err(e) = core.uses(files) {
            log::warn!("cannot tell the core about the console's client: {e}");
        }
    }

    /// What the epoll set should hold now (see the module documentation).
    fn wanted(&self) -> [Option<(RawFd, EventSet)>; 3] {
        let mut want = [None; 3];
        if let (Some(listener), None) = (&self.listener, &self.conn) {
            want[Token::Listener as usize] = Some((listener.as_raw_fd(), EventSet::IN));
        }
        let Some(conn) = &self.conn else { return want };
        let output_waits = !self.pending.is_empty() && conn.output_open && conn.output_pollable;
        let mut input = EventSet::empty();
        if conn.input_open && !self.input_paused {
            input |= EventSet::IN;
        }
        if conn.output.is_none() && output_waits {
            input |= EventSet::OUT;
        }
        // A client whose input ended stays in the set for its hang-up: then it is dropped.
        let watch_hangup = conn.client && !conn.input_open;
        if conn.input_pollable && (!input.is_empty() || watch_hangup) {
            want[Token::Input as usize] = Some((conn.input.as_raw_fd(), input));
        }
        if let (Some(output), true) = (&conn.output, output_waits) {
            want[Token::Output as usize] = Some((output.as_raw_fd(), EventSet::OUT));
        }
        want
    }

    /// Brings the epoll set to what [`State::wanted`] says. A descriptor epoll refuses is taken
    /// as not pollable (see the module documentation), and the set worked out again.
    fn sync(&mut self) {
        for _ in 0..3 {
            let want = self.wanted();
            let mut refused = false;
            for token in Token::ALL {
                let slot = token as usize;
                let (had, wanted) = (self.registered[slot], want[slot]);
                if had == wanted {
                    continue;
                }
                let same_fd = had.is_some() && had.map(|h| h.0) == wanted.map(|w| w.0);
                if let (Some((fd, _)), false) = (had, same_fd) {
                    let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                }
                self.registered[slot] = None;
                let Some((fd, events)) = wanted else { continue };
                let op = if same_fd { ControlOperation::Modify } else { ControlOperation::Add };
                match self.epoll.ctl(op, fd, EpollEvent::new(events, token as u64)) {
                    Ok(()) => self.registered[slot] = Some((fd, events)),
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        refused = true;
                        self.not_pollable(token);
                    }
                    Err(e) => log::warn!("cannot watch the console's {token:?}: {e}"),
                }
            }
            if !refused {
                return;
            }
        }
    }

    fn not_pollable(&mut self, token: Token) {
        let Some(conn) = self.conn.as_mut() else { return };
        match token {
            Token::Input => {
                conn.input_pollable = false;
                conn.input_open = false;
            }
            Token::Output => conn.output_pollable = false,
            Token::Listener => {}
        }
    }
}

/// One write of what waits to the connection's output (polled first if it is blocking): bytes
/// written, or what went wrong.
fn write_to(conn: &Connection, pending: &VecDeque<u8>) -> Result<usize, Outcome> {
    let out = conn.output();
    if conn.blocking && !ready(out.as_raw_fd(), libc::POLLOUT) {
        return Ok(0);
    }
    let (front, _) = pending.as_slices();
    let most = if conn.blocking { WRITE_MAX } else { front.len() };
    loop {
        return match (&*out).write(&front[..front.len().min(most)]) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if conn.client => Err(Outcome::ClientGone(format!("writing failed: {e}"))),
            Err(e) => Err(Outcome::OutputFailed(e)),
        };
    }
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor we hold.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we hold, with its flags plus O_NONBLOCK.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
