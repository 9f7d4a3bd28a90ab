//! `vsock`: stream connections over the first virtio-vsock device, in one of two modes.
//! - `bulkhead.vsock_listen=PORT`: serves connections from the host on PORT, one after the
//!   other, echoing every byte back, until `bulkhead.vsock_conns` (default 1) of them were
//!   shut down by the host (one the peer resets does not count; a new connection to PORT while one is open ends that one: its
//!   peer, or the device behind it, went away without a word), and so does silence on it for
//!   `bulkhead.vsock_idle_ms` (default: `bulkhead.timeout_ms`); only no new connection for
//!   `bulkhead.timeout_ms` fails;
//!   `BH check name=vsock status=ok mode=listen port=P conns=N bytes=B superseded=S
//!   abandoned=A reset=R`.
//! - `bulkhead.vsock_connect=PORT`: connects to the host's PORT, sends `bulkhead.bytes`
//!   (default 65536) of the disk pattern with seed `bulkhead.seed` (default 1), checks that
//!   the host echoes each byte back, then shuts down;
//!   `BH check name=vsock status=ok mode=connect port=P bytes=B seconds=S mib_s=M`.
//! - `bulkhead.vsock_connect=PORT bulkhead.seconds=S` (`bulkhead bench vsock`): timed, to a
//!   host that echoes. With `bulkhead.vsock_msg=M` (1 to 4096), round trips: M bytes sent, their
//!   echo awaited, again until S seconds passed;
//!   `BH result workload=vsock-bench mode=rr msg=M ops=N seconds=S round_trips_s=R p50_us=…
//!   p99_us=… renotified=K`. Without it, a stream: as much as the credit allows, echoed, for
//!   S seconds; `BH result workload=vsock-bench mode=stream bytes=B seconds=S mib_s=M
//!   renotified=K` (K: how often the device was notified again before it answered; bytes echoed
//!   back, so each crossed the device twice). The data is not checked here, only its length
//!   and first byte per packet.
//!
//! Flow control (section 5.10.6.3): the peer may send at most `buf_alloc` bytes beyond what
//! this side has forwarded (`fwd_cnt`); here "forwarded" means echoed back (listen mode), so
//! the bytes waiting to be echoed always fit a buffer of `buf_alloc`, and this side sends
//! only as far as the peer's credit allows, asking for an update when it has none.
//! `bulkhead.timeout_ms` bounds each wait for the peer.

use crate::arch::rdtsc;
use crate::bh;
use crate::histogram::Histogram;
use crate::options::parse_ms;
use crate::pattern;
use crate::report::{per_second, Fixed};
use crate::time;
use crate::virtio::vsock::{op, Hdr, Vsock, HOST_CID, PAYLOAD_MAX, SHUTDOWN_BOTH};

use super::{Ctx, Fail};

/// The receive buffer this side announces, and what listen mode holds to echo.
const BUF_ALLOC: usize = 64 * 1024;
/// The first local port of connections this side opens.
const LOCAL_PORT: u32 = 49152;

/// One connection's state.
struct Conn {
    local_port: u32,
    peer_cid: u64,
    peer_port: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent on this connection.
    tx_cnt: u32,
    /// Payload bytes received and consumed.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the peer.
    told_fwd_cnt: u32,
}

impl Conn {
    fn new(local_port: u32, peer_cid: u64, peer_port: u32) -> Conn {
        Conn {
            local_port,
            peer_cid,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            told_fwd_cnt: 0,
        }
    }

    fn is_of(&self, h: &Hdr) -> bool {
        h.src_cid == self.peer_cid && h.src_port == self.peer_port && h.dst_port == self.local_port
    }

    /// Learns the peer's credit from any packet of the connection.
    fn update(&mut self, h: &Hdr) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the peer can take now.
    fn credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }

    fn hdr(&mut self, guest_cid: u64, op: u16, flags: u32) -> Hdr {
        self.told_fwd_cnt = self.fwd_cnt;
        Hdr {
            src_cid: guest_cid,
            dst_cid: self.peer_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            op,
            flags,
            buf_alloc: BUF_ALLOC as u32,
            fwd_cnt: self.fwd_cnt,
            ..Hdr::default()
        }
    }
}

/// Sends `op` on `conn` with `payload`.
fn send(
    v: &mut Vsock,
    conn: &mut Conn,
    op: u16,
    flags: u32,
    payload: &[u8],
    t: u64,
) -> Result<(), Fail> {
    let hdr = conn.hdr(v.guest_cid, op, flags);
    v.send(hdr, payload, time::deadline_ms(t))?;
    Ok(())
}

/// The next packet, waiting up to `timeout_ms`; `None` when none came.
fn next_packet(
    v: &mut Vsock,
    buf: &mut [u8; PAYLOAD_MAX],
    timeout_ms: u64,
) -> Result<Option<Hdr>, Fail> {
    let deadline = time::deadline_ms(timeout_ms);
    loop {
        if let Some(h) = v.recv(buf)? {
            return Ok(Some(h));
        }
        if time::passed(deadline) {
            return Ok(None);
        }
        v.wait_rx(deadline)?;
    }
}

/// Answers a packet for no connection of this side with a reset, as a peer must.
fn refuse(v: &mut Vsock, h: &Hdr, t: u64) -> Result<(), Fail> {
    if h.op == op::RST {
        return Ok(());
    }
    let mut conn = Conn::new(h.dst_port, h.src_cid, h.src_port);
    send(v, &mut conn, op::RST, 0, &[], t)
}

/// How a listen-mode connection ended.
enum Ended {
    /// The host shut it down: the bytes echoed.
    Closed(u64),
    /// A new connection to the port came while this one was open (its peer, or the device
    /// behind it, went away without a word): the new one's request.
    Superseded(Hdr),
    /// Nothing came on it for `bulkhead.vsock_idle_ms`: its peer is taken to be gone.
    Abandoned,
    /// The peer (or a device that knows the connection no more) reset it.
    Reset,
}

/// Whether `h` asks for a connection to `port` of this guest.
fn is_request(v: &Vsock, h: &Hdr, port: u32) -> bool {
    h.op == op::REQUEST && h.dst_port == port && h.dst_cid == v.guest_cid
}

/// Listen mode: serves one connection to `port` (the one `request` asked for, else the next)
/// to its end.
fn serve_one(
    v: &mut Vsock,
    port: u32,
    request: Option<Hdr>,
    t: u64,
    idle_ms: u64,
) -> Result<Ended, Fail> {
    let mut buf = [0u8; PAYLOAD_MAX];
    let request = match request {
        Some(h) => h,
        None => loop {
            let h = next_packet(v, &mut buf, t)?.ok_or(Fail::Text("no connection came"))?;
            if is_request(v, &h, port) {
                break h;
            }
            refuse(v, &h, t)?;
        },
    };
    let mut conn = Conn::new(port, request.src_cid, request.src_port);
    conn.update(&request);
    send(v, &mut conn, op::RESPONSE, 0, &[], t)?;
    // Bytes received and not yet echoed, in order: a ring of BUF_ALLOC.
    let mut pending = [0u8; BUF_ALLOC];
    let (mut head, mut len) = (0usize, 0usize);
    let mut echoed = 0u64;
    let mut asked = false;
    loop {
        // Echo what the peer's credit allows.
        while len > 0 && conn.credit() > 0 {
            let n = len.min(conn.credit()).min(PAYLOAD_MAX).min(BUF_ALLOC - head);
            let mut chunk = [0u8; PAYLOAD_MAX];
            chunk[..n].copy_from_slice(&pending[head..head + n]);
            conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
            send(v, &mut conn, op::RW, 0, &chunk[..n], t)?;
            conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
            head = (head + n) % BUF_ALLOC;
            len -= n;
            echoed += n as u64;
            asked = false;
        }
        if len > 0 && !asked {
            send(v, &mut conn, op::CREDIT_REQUEST, 0, &[], t)?;
            asked = true;
        }
        let Some(h) = next_packet(v, &mut buf, idle_ms)? else {
            return Ok(Ended::Abandoned);
        };
        // A request, even from this connection's own address: a restarted device numbers its
        // host ports from the start again, so the peer's address can come back.
        if is_request(v, &h, port) {
            return Ok(Ended::Superseded(h));
        }
        if !conn.is_of(&h) {
            refuse(v, &h, t)?;
            continue;
        }
        conn.update(&h);
        match h.op {
            op::RW => {
                let n = h.len as usize;
                if len + n > BUF_ALLOC {
                    return Err(Fail::Text("the host sent beyond the credit it was given"));
                }
                for (i, &b) in buf[..n].iter().enumerate() {
                    pending[(head + len + i) % BUF_ALLOC] = b;
                }
                len += n;
            }
            op::CREDIT_REQUEST => send(v, &mut conn, op::CREDIT_UPDATE, 0, &[], t)?,
            op::SHUTDOWN => {
                send(v, &mut conn, op::RST, 0, &[], t)?;
                return Ok(Ended::Closed(echoed));
            }
            op::RST => return Ok(Ended::Reset),
            _ => {}
        }
    }
}

/// How long connect mode waits for an answer before it notifies the device again.
const RENOTIFY_MS: u64 = 500;

/// Opens a connection to the host's `port`. While no answer comes, the device is notified
/// again every [`RENOTIFY_MS`]: vhost-device-vsock, now and then (1 run in 50 under QEMU,
/// 2026-12-07), leaves a request sent right after the driver started unanswered until it is;
/// without that, the request waited out `bulkhead.timeout_ms`.
/// Returns the connection and how many times the device was notified again.
fn open(v: &mut Vsock, port: u32, t: u64) -> Result<(Conn, u32), Fail> {
    let mut buf = [0u8; PAYLOAD_MAX];
    let mut conn = Conn::new(LOCAL_PORT + (rdtsc() % 4096) as u32, HOST_CID, port);
    send(v, &mut conn, op::REQUEST, 0, &[], t)?;
    let deadline = time::deadline_ms(t);
    let mut renotified = 0;
    loop {
        let Some(h) = next_packet(v, &mut buf, RENOTIFY_MS.min(t))? else {
            if time::passed(deadline) {
                return Err(Fail::Text("the host did not answer"));
            }
            v.renotify();
            renotified += 1;
            continue;
        };
        if !conn.is_of(&h) {
            refuse(v, &h, t)?;
            continue;
        }
        conn.update(&h);
        match h.op {
            op::RESPONSE => return Ok((conn, renotified)),
            op::RST => return Err(Fail::Text("the host refused the connection")),
            _ => {}
        }
    }
}

/// Shuts `conn` down and waits (briefly) for the peer's reset.
fn close(v: &mut Vsock, conn: &mut Conn, t: u64) -> Result<(), Fail> {
    let mut buf = [0u8; PAYLOAD_MAX];
    send(v, conn, op::SHUTDOWN, SHUTDOWN_BOTH, &[], t)?;
    // The peer answers with a reset; a silent one is no failure of this side.
    let _ = next_packet(v, &mut buf, t.min(1000))?;
    Ok(())
}

/// The next packet of `conn` (others are refused), its credit learned, credit requests
/// answered; the payload bytes of an RW packet are counted as forwarded, the room made told
/// to the peer once it is half the buffer. Returns the payload's length (0 for other packets).
fn next_of(
    v: &mut Vsock,
    conn: &mut Conn,
    buf: &mut [u8; PAYLOAD_MAX],
    t: u64,
) -> Result<usize, Fail> {
    loop {
        let h = next_packet(v, buf, t)?.ok_or(Fail::Text("the host stopped echoing"))?;
        if !conn.is_of(&h) {
            refuse(v, &h, t)?;
            continue;
        }
        conn.update(&h);
        return match h.op {
            op::RW => {
                let n = h.len as usize;
                conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                if conn.fwd_cnt.wrapping_sub(conn.told_fwd_cnt) as usize >= BUF_ALLOC / 2 {
                    send(v, conn, op::CREDIT_UPDATE, 0, &[], t)?;
                }
                Ok(n)
            }
            op::CREDIT_REQUEST => {
                send(v, conn, op::CREDIT_UPDATE, 0, &[], t)?;
                Ok(0)
            }
            op::RST | op::SHUTDOWN => Err(Fail::Text("the host closed the connection early")),
            _ => Ok(0),
        };
    }
}

/// Waits until the peer can take `n` bytes on `conn`.
fn await_credit(v: &mut Vsock, conn: &mut Conn, n: usize, t: u64) -> Result<(), Fail> {
    let mut buf = [0u8; PAYLOAD_MAX];
    if conn.credit() < n {
        send(v, conn, op::CREDIT_REQUEST, 0, &[], t)?;
    }
    while conn.credit() < n {
        if next_of(v, conn, &mut buf, t)? > 0 {
            return Err(Fail::Text("the host sent what was not asked for"));
        }
    }
    Ok(())
}

/// Round trips of `msg` bytes on `conn` until `ms` passed: (round trips, ns, latencies in TSC
/// ticks).
fn round_trips(
    v: &mut Vsock,
    conn: &mut Conn,
    msg: usize,
    ms: u64,
    t: u64,
) -> Result<(u64, u64, Histogram), Fail> {
    let mut buf = [0u8; PAYLOAD_MAX];
    let mut payload = [0u8; PAYLOAD_MAX];
    pattern::fill(&mut payload[..msg], 1, 0);
    let mut hist = Histogram::new();
    let (start, end) = (rdtsc(), time::deadline_ms(ms));
    let mut ops = 0u64;
    let mut now = start;
    while now < end {
        await_credit(v, conn, msg, t)?;
        send(v, conn, op::RW, 0, &payload[..msg], t)?;
        conn.tx_cnt = conn.tx_cnt.wrapping_add(msg as u32);
        let mut got = 0;
        while got < msg {
            got += next_of(v, conn, &mut buf, t)?;
        }
        if got > msg {
            return Err(Fail::Text("the host echoed more than was sent"));
        }
        let done = rdtsc();
        hist.record(done - now);
        ops += 1;
        now = done;
    }
    Ok((ops, time::ticks_to_ns(now - start), hist))
}

/// A stream on `conn` for `ms`, echoed: (bytes echoed, ns from the first sent to the last
/// echoed).
fn stream(v: &mut Vsock, conn: &mut Conn, ms: u64, t: u64) -> Result<(u64, u64), Fail> {
    let mut buf = [0u8; PAYLOAD_MAX];
    let mut chunk = [0u8; PAYLOAD_MAX];
    pattern::fill(&mut chunk, 1, 0);
    let (start, end) = (rdtsc(), time::deadline_ms(ms));
    let (mut sent, mut echoed) = (0u64, 0u64);
    let mut asked = false;
    loop {
        let sending = rdtsc() < end;
        while sending && conn.credit() > 0 {
            let n = conn.credit().min(PAYLOAD_MAX);
            send(v, conn, op::RW, 0, &chunk[..n], t)?;
            conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
            sent += n as u64;
            asked = false;
        }
        if sending && !asked {
            send(v, conn, op::CREDIT_REQUEST, 0, &[], t)?;
            asked = true;
        }
        if !sending && echoed == sent {
            break;
        }
        let n = next_of(v, conn, &mut buf, t)?;
        if n > 0 && buf[0] != chunk[(echoed % PAYLOAD_MAX as u64) as usize] {
            return Err(Fail::Text("the echo differs from what was sent"));
        }
        echoed += n as u64;
        if echoed > sent {
            return Err(Fail::Text("the host echoed more than was sent"));
        }
    }
    Ok((echoed, time::ticks_to_ns(rdtsc() - start)))
}

/// The timed modes (`bulkhead.seconds`): round trips of `msg` bytes, or a stream.
fn bench(ctx: &mut Ctx, port: u32, msg: Option<u64>, ms: u64, t: u64) -> Result<(), Fail> {
    let msg = match msg {
        None => None,
        Some(m @ 1..=4096) => Some(m as usize),
        Some(_) => return Err(Fail::Text("bulkhead.vsock_msg is 1 to 4096 bytes")),
    };
    let v = ctx.devices().vsock()?;
    let (mut conn, renotified) = open(v, port, t)?;
    match msg {
        Some(msg) => {
            let (ops, ns, hist) = round_trips(v, &mut conn, msg, ms, t)?;
            close(v, &mut conn, t)?;
            let us = |ticks: u64| Fixed(time::ticks_to_ns(ticks) / 100, 1);
            bh!("check name=vsock status={} mode=rr ops={}", ctx.checks.record(ops > 0), ops);
            bh!(
                "result workload=vsock-bench mode=rr msg={} ops={} seconds={} round_trips_s={} \
                 p50_us={} p99_us={} renotified={}",
                msg,
                ops,
                Fixed(ns / 1_000_000, 3),
                per_second(ops, ns, 0),
                us(hist.percentile(500)),
                us(hist.percentile(990)),
                renotified
            );
        }
        None => {
            let (bytes, ns) = stream(v, &mut conn, ms, t)?;
            close(v, &mut conn, t)?;
            bh!(
                "check name=vsock status={} mode=stream bytes={}",
                ctx.checks.record(bytes > 0),
                bytes
            );
            bh!(
                "result workload=vsock-bench mode=stream bytes={} seconds={} mib_s={} renotified={}",
                bytes,
                Fixed(ns / 1_000_000, 3),
                Fixed(per_second(bytes, ns, 1) >> 20, 1),
                renotified
            );
        }
    }
    Ok(())
}

/// Connect mode: sends `bytes` of the pattern to the host's `port` and checks the echo;
/// returns the nanoseconds from the first byte sent to the last checked.
fn connect(v: &mut Vsock, port: u32, bytes: u64, seed: u64, t: u64) -> Result<u64, Fail> {
    let mut buf = [0u8; PAYLOAD_MAX];
    let (mut conn, _) = open(v, port, t)?;
    let start = rdtsc();
    let (mut sent, mut checked) = (0u64, 0u64);
    let mut chunk = [0u8; PAYLOAD_MAX];
    let mut asked = false;
    while checked < bytes {
        while sent < bytes && conn.credit() > 0 {
            let n = ((bytes - sent) as usize).min(conn.credit()).min(PAYLOAD_MAX);
            pattern::fill(&mut chunk[..n], seed, sent);
            send(v, &mut conn, op::RW, 0, &chunk[..n], t)?;
            conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
            sent += n as u64;
            asked = false;
        }
        if sent < bytes && !asked {
            send(v, &mut conn, op::CREDIT_REQUEST, 0, &[], t)?;
            asked = true;
        }
        let Some(h) = next_packet(v, &mut buf, t)? else {
            return Err(Fail::Text("the host stopped echoing"));
        };
        if !conn.is_of(&h) {
            refuse(v, &h, t)?;
            continue;
        }
        conn.update(&h);
        match h.op {
            op::RW => {
                let n = h.len as usize;
                if checked + n as u64 > bytes {
                    return Err(Fail::Text("the host echoed more than was sent"));
                }
                if pattern::first_mismatch(&buf[..n], seed, checked).is_some() {
                    return Err(Fail::Text("the echo differs from what was sent"));
                }
                checked += n as u64;
                conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                // Tell the peer of the room made, before it runs out of credit.
                if conn.fwd_cnt.wrapping_sub(conn.told_fwd_cnt) as usize >= BUF_ALLOC / 2 {
                    send(v, &mut conn, op::CREDIT_UPDATE, 0, &[], t)?;
                }
            }
            op::CREDIT_REQUEST => send(v, &mut conn, op::CREDIT_UPDATE, 0, &[], t)?,
            op::RST | op::SHUTDOWN => {
                return Err(Fail::Text("the host closed the connection early"))
            }
            _ => {}
        }
    }
    let ns = time::ticks_to_ns(rdtsc() - start);
    close(v, &mut conn, t)?;
    Ok(ns)
}

pub fn run(ctx: &mut Ctx) -> Result<(), Fail> {
    let t = ctx.common()?.timeout_ms;
    let listen = ctx.cmdline.get_u64("bulkhead.vsock_listen");
    let connect_to = ctx.cmdline.get_u64("bulkhead.vsock_connect");
    let conns = ctx.cmdline.get_u64("bulkhead.vsock_conns").unwrap_or(1);
    let idle_ms = ctx.cmdline.get_u64("bulkhead.vsock_idle_ms").unwrap_or(t);
    let bytes = ctx.cmdline.get_u64("bulkhead.bytes").unwrap_or(65536);
    let seed = ctx.cmdline.get_u64("bulkhead.seed").unwrap_or(1);
    let port = |p: u64| u32::try_from(p).map_err(|_| Fail::Text("a vsock port is a 32-bit number"));
    let seconds = match ctx.cmdline.get("bulkhead.seconds") {
        None => None,
        Some(s) => Some(
            parse_ms(s)
                .filter(|&ms| ms > 0)
                .ok_or(Fail::Text("bulkhead.seconds must be a positive number of seconds"))?,
        ),
    };
    if let (None, Some(p), Some(ms)) = (listen, connect_to, seconds) {
        let msg = ctx.cmdline.get_u64("bulkhead.vsock_msg");
        return bench(ctx, port(p)?, msg, ms, t);
    }
    let v = ctx.devices().vsock()?;
    match (listen, connect_to) {
        (Some(p), None) => {
            let p = port(p)?;
            let (mut done, mut total) = (0, 0);
            let (mut superseded, mut abandoned, mut reset) = (0, 0, 0);
            let mut request = None;
            while done < conns {
                match serve_one(v, p, request.take(), t, idle_ms)? {
                    Ended::Closed(bytes) => {
                        done += 1;
                        total += bytes;
                    }
                    Ended::Superseded(h) => {
                        superseded += 1;
                        request = Some(h);
                    }
                    Ended::Abandoned => abandoned += 1,
                    Ended::Reset => reset += 1,
                }
            }
            bh!(
                "check name=vsock status={} mode=listen port={} conns={} bytes={} superseded={} \
                 abandoned={} reset={}",
                ctx.checks.record(true),
                p,
                conns,
                total,
                superseded,
                abandoned,
                reset
            );
            Ok(())
        }
        (None, Some(p)) => {
            let p = port(p)?;
            let ns = connect(v, p, bytes, seed, t)?;
            bh!(
                "check name=vsock status={} mode=connect port={} bytes={} seconds={} mib_s={}",
                ctx.checks.record(true),
                p,
                bytes,
                Fixed(ns / 1_000_000, 3),
                Fixed(per_second(bytes, ns, 1) >> 20, 1)
            );
            Ok(())
        }
        _ => {
            Err(Fail::Text("give one of bulkhead.vsock_listen=PORT or bulkhead.vsock_connect=PORT"))
        }
    }
}
