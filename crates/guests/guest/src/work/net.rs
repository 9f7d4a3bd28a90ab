//! Network workloads over the first virtio-net device, with the guest at
//! `bulkhead.ip` (default 10.0.2.15/24) and MAC `bulkhead.mac` (default: the
//! device's, else 52:54:00:12:34:56), talking to `bulkhead.peer` (default
//! 10.0.2.1), which must be on the guest's subnet (there is no routing).
//!
//! The guest first resolves the peer's MAC with ARP (three tries), and all
//! along answers ARP requests for its address and ICMP echo requests to it.
//!
//! - `net-ping`: `bulkhead.count` echo requests, one at a time, each waiting
//!   for its reply up to `bulkhead.timeout_ms`:
//!   `BH check name=net-ping status=ok sent=4 received=4 p50_us=... p99_us=...`.
//! - `net-bench` `mode=pingpong`: echo requests back to back for
//!   `bulkhead.seconds` (or `bulkhead.ops` of them): round trips per second
//!   and the round-trip time's percentiles.
//! - `net-bench` `mode=tx`: UDP datagrams of `bulkhead.size` payload bytes to
//!   the peer's discard port (9), as fast as the device returns transmit
//!   buffers: packets per second and payload MiB per second. A UDP datagram
//!   from the peer to the guest ends the run early (a test's way to say its
//!   work is done); then, as at the end of the time, every transmit buffer
//!   must come back within `bulkhead.timeout_ms`, and the check passes only
//!   if each datagram sent was returned by the device.
//!
//! `BH result workload=net-bench mode=... seconds=... packets=... pps=... ...`.

use crate::arch::rdtsc;
use crate::bh;
use crate::histogram::Histogram;
use crate::options::{Length, Net as NetOptions, NetMode};
use crate::packet::{self, Endpoint, IpDisplay, MacDisplay, Packet, UDP_PAYLOAD};
use crate::report::{per_second, Fixed};
use crate::time;
use crate::virtio::net::{Net, FRAME_MAX};
use crate::virtio::queue::IoError;

use super::{Ctx, Fail};

const DEFAULT_MAC: packet::Mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const ECHO_ID: u16 = 0xb4ed;
const ECHO_PAYLOAD: [u8; 56] = [0x42; 56];
const DISCARD_PORT: u16 = 9;
const SOURCE_PORT: u16 = 40_000;

/// What one received frame turned out to be, for the caller.
enum Event {
    EchoReply {
        id: u16,
        seq: u16,
    },
    /// A UDP datagram from the peer.
    Datagram,
    Other,
}

/// The guest's end of the link.
struct Stack<'n> {
    net: &'n mut Net,
    me: Endpoint,
    peer: Endpoint,
    peer_known: bool,
    frame: [u8; FRAME_MAX],
    /// ARP and echo requests answered.
    answered: u64,
}

impl Stack<'_> {
    /// Handles the next received frame, if any.
    fn poll(&mut self) -> Result<Option<Event>, IoError> {
        let Some(len) = self.net.recv(&mut self.frame)? else {
            return Ok(None);
        };
        let me = self.me;
        let event = match packet::parse(&self.frame[..len]) {
            Some(Packet::ArpRequest { sender, target_ip }) if target_ip == me.ip => {
                self.net.send(true, |b| packet::arp_reply(b, me, sender))?;
                self.answered += 1;
                Event::Other
            }
            Some(Packet::ArpReply { sender, .. }) if sender.ip == self.peer.ip => {
                self.peer.mac = sender.mac;
                self.peer_known = true;
                Event::Other
            }
            Some(Packet::Echo { reply: false, from, to_ip, id, seq, payload })
                if to_ip == me.ip =>
            {
                let data = self.frame.get(payload.0..payload.1).unwrap_or(&[]);
                self.net.send(true, |b| packet::echo(b, true, me, from, id, seq, data))?;
                self.answered += 1;
                Event::Other
            }
            Some(Packet::Echo { reply: true, to_ip, id, seq, .. }) if to_ip == me.ip => {
                Event::EchoReply { id, seq }
            }
            Some(Packet::OtherIp { from, to_ip, protocol: packet::PROTO_UDP })
                if to_ip == me.ip && from.ip == self.peer.ip =>
            {
                Event::Datagram
            }
            _ => Event::Other,
        };
        Ok(Some(event))
    }

    /// Finds the peer's MAC address with ARP.
    fn resolve(&mut self, timeout_ms: u64) -> Result<(), Fail> {
        for _ in 0..3 {
            let (me, peer_ip) = (self.me, self.peer.ip);
            self.net.send(true, |b| packet::arp_request(b, me, peer_ip))?;
            let deadline = time::deadline_ms(timeout_ms.min(1000));
            while !self.peer_known {
                if self.poll()?.is_none() {
                    match self.net.wait_rx(deadline) {
                        Ok(()) => {}
                        Err(IoError::Timeout) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if self.peer_known {
                return Ok(());
            }
        }
        Err(Fail::Text("the peer did not answer ARP"))
    }

    /// Sends a frame, waiting for a transmit buffer if all are in flight.
    fn send(&mut self, deadline: u64, build: impl Fn(&mut [u8]) -> usize) -> Result<(), Fail> {
        loop {
            if self.net.send(true, &build)? {
                return Ok(());
            }
            self.net.wait_tx(deadline)?;
            self.net.reclaim()?;
        }
    }

    /// One echo request and its reply: the round trip in TSC ticks, or
    /// `None` if no reply came before the deadline.
    fn ping(&mut self, seq: u16, timeout_ms: u64) -> Result<Option<u64>, Fail> {
        let deadline = time::deadline_ms(timeout_ms);
        let (me, peer) = (self.me, self.peer);
        let start = rdtsc();
        self.send(deadline, |b| packet::echo(b, false, me, peer, ECHO_ID, seq, &ECHO_PAYLOAD))?;
        loop {
            match self.poll()? {
                Some(Event::EchoReply { id: ECHO_ID, seq: s }) if s == seq => {
                    return Ok(Some(rdtsc() - start))
                }
                Some(_) => {}
                None => match self.net.wait_rx(deadline) {
                    Ok(()) => {}
                    Err(IoError::Timeout) => return Ok(None),
                    Err(e) => return Err(e.into()),
                },
            }
        }
    }
}

/// Brings up the device and the addresses, and resolves the peer.
fn setup<'c>(ctx: &'c mut Ctx) -> Result<(Stack<'c>, NetOptions, u64), Fail> {
    let o = NetOptions::parse(ctx.cmdline)?;
    let timeout_ms = ctx.common()?.timeout_ms;
    if !o.on_link(o.peer) {
        return Err(Fail::Text("bulkhead.peer is not on the guest's subnet"));
    }
    let net = ctx.devices().net()?;
    let mac = o.mac.or(net.device_mac()).unwrap_or(DEFAULT_MAC);
    let mut stack = Stack {
        net,
        me: Endpoint { mac, ip: o.ip },
        peer: Endpoint { mac: packet::BROADCAST, ip: o.peer },
        peer_known: false,
        frame: [0; FRAME_MAX],
        answered: 0,
    };
    stack.resolve(timeout_ms)?;
    bh!(
        "net mac={} ip={}/{} peer={} peer_mac={}",
        MacDisplay(mac),
        IpDisplay(o.ip),
        o.prefix,
        IpDisplay(o.peer),
        MacDisplay(stack.peer.mac)
    );
    Ok((stack, o, timeout_ms))
}

fn us(ticks: u64) -> Fixed {
    Fixed(time::ticks_to_ns(ticks) / 100, 1)
}

/// net-ping.
pub fn ping(ctx: &mut Ctx) -> Result<(), Fail> {
    let (mut stack, o, timeout_ms) = setup(ctx)?;
    let mut hist = Histogram::new();
    for seq in 1..=o.count {
        if let Some(rtt) = stack.ping(seq as u16, timeout_ms)? {
            hist.record(rtt);
        }
    }
    let answered = stack.answered;
    let received = hist.count();
    bh!(
        "check name=net-ping status={} sent={} received={} p50_us={} p99_us={} answered={}",
        ctx.checks.record(received == o.count),
        o.count,
        received,
        us(hist.percentile(500)),
        us(hist.percentile(990)),
        answered
    );
    Ok(())
}

/// net-bench.
pub fn bench(ctx: &mut Ctx) -> Result<(), Fail> {
    let (mut stack, o, timeout_ms) = setup(ctx)?;
    let (end, limit) = match o.length {
        Length::Millis(ms) => (time::deadline_ms(ms), u64::MAX),
        Length::Ops(n) => (u64::MAX, n),
    };
    let counters = stack.net.counters();
    let start = rdtsc();
    let (mut figures, ok) = match o.mode {
        NetMode::PingPong => pingpong(&mut stack, end, limit, timeout_ms)?,
        NetMode::Tx => tx(&mut stack, &o, end, limit, timeout_ms)?,
    };
    let ns = time::ticks_to_ns(rdtsc() - start);
    let now = stack.net.counters();
    figures.counters = (now.0 - counters.0, now.1 - counters.1);
    let answered = stack.answered;
    bh!(
        "check name=net-bench status={} mode={} answered={}",
        ctx.checks.record(ok),
        mode_name(o.mode),
        answered
    );
    figures.report(&o, ns);
    Ok(())
}

fn mode_name(m: NetMode) -> &'static str {
    match m {
        NetMode::PingPong => "pingpong",
        NetMode::Tx => "tx",
    }
}

/// What a net-bench run measured.
struct Figures {
    sent: u64,
    packets: u64,
    hist: Histogram,
    /// QueueNotify writes and interrupts during the run.
    counters: (u64, u64),
}

impl Figures {
    fn report(&self, o: &NetOptions, ns: u64) {
        let seconds = Fixed(ns / 1_000_000, 3);
        let pps = per_second(self.packets, ns, 0);
        match o.mode {
            NetMode::PingPong => bh!(
                "result workload=net-bench mode=pingpong seconds={} sent={} packets={} pps={} p50_us={} p99_us={} max_us={} kicks={} irqs={}",
                seconds,
                self.sent,
                self.packets,
                pps,
                us(self.hist.percentile(500)),
                us(self.hist.percentile(990)),
                us(self.hist.max()),
                self.counters.0,
                self.counters.1
            ),
            NetMode::Tx => bh!(
                "result workload=net-bench mode=tx size={} seconds={} sent={} packets={} pps={} mib_s={} kicks={} irqs={}",
                o.size,
                seconds,
                self.sent,
                self.packets,
                pps,
                Fixed(per_second(self.packets * o.size, ns, 1) >> 20, 1),
                self.counters.0,
                self.counters.1
            ),
        }
    }
}

fn pingpong(
    stack: &mut Stack,
    end: u64,
    limit: u64,
    timeout_ms: u64,
) -> Result<(Figures, bool), Fail> {
    let mut f = Figures { sent: 0, packets: 0, hist: Histogram::new(), counters: (0, 0) };
    while f.sent < limit && rdtsc() < end {
        f.sent += 1;
        if let Some(rtt) = stack.ping(f.sent as u16, timeout_ms)? {
            f.hist.record(rtt);
            f.packets += 1;
        }
    }
    let ok = f.packets > 0;
    Ok((f, ok))
}

fn tx(
    stack: &mut Stack,
    o: &NetOptions,
    end: u64,
    limit: u64,
    timeout_ms: u64,
) -> Result<(Figures, bool), Fail> {
    let (me, peer, size) = (stack.me, stack.peer, o.size as usize);
    let build = |b: &mut [u8]| {
        b[UDP_PAYLOAD..UDP_PAYLOAD + size].fill(0x5a);
        packet::udp(b, me, peer, (SOURCE_PORT, DISCARD_PORT), size)
    };
    let mut f = Figures { sent: 0, packets: 0, hist: Histogram::new(), counters: (0, 0) };
    let before = stack.net.tx_done;
    let mut stopped = false;
    while !stopped && f.sent < limit && rdtsc() < end {
        stack.net.reclaim()?;
        let mut batch = 0;
        while f.sent < limit && stack.net.send(false, build)? {
            f.sent += 1;
            batch += 1;
        }
        if batch > 0 {
            stack.net.kick_tx();
        }
        while let Some(event) = stack.poll()? {
            stopped |= matches!(event, Event::Datagram);
        }
        if batch == 0 {
            stack.net.wait_tx(time::deadline_ms(timeout_ms))?;
        }
    }
    let deadline = time::deadline_ms(timeout_ms);
    while stack.net.tx_in_flight() > 0 {
        stack.net.reclaim()?;
        if stack.net.tx_in_flight() > 0 {
            stack.net.wait_tx(deadline)?;
        }
    }
    stack.net.reclaim()?;
    // Frames sent in answer to the peer (ARP, echo) are not datagrams.
    f.packets = (stack.net.tx_done - before).min(f.sent);
    let ok = f.packets == f.sent && f.sent > 0;
    Ok((f, ok))
}
