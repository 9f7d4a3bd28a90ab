//! The few network packets the guest speaks, built and parsed in place:
//! Ethernet II frames carrying ARP (RFC 826) for IPv4 over Ethernet, and
//! IPv4 (RFC 791, no options sent, no fragments) carrying ICMP echo request
//! and reply (RFC 792) or UDP (RFC 768). Checksums are the Internet
//! checksum (RFC 1071): the ones' complement of the ones' complement sum of
//! 16-bit big-endian words.
//!
//! Building writes into a caller's buffer and returns the frame's length;
//! parsing returns what the guest acts on, and `None` for anything it does
//! not understand or that is malformed (short, bad lengths, bad checksums).
//! Nothing here panics on any input.

pub type Mac = [u8; 6];
pub type Ip = [u8; 4];

pub const BROADCAST: Mac = [0xff; 6];
pub const ETH_HEADER: usize = 14;
pub const IP_HEADER: usize = 20;
/// The shortest Ethernet frame without its FCS; shorter frames are padded.
pub const ETH_MIN: usize = 60;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const PROTO_ICMP: u8 = 1;
/// The IPv4 protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// The Internet checksum of `data`, starting from a partial sum.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial);
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ip(s: &str) -> Option<Ip> {
    let mut ip = [0u8; 4];
    let mut parts = s.split('.');
    for b in ip.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// Parses `a.b.c.d/len` (a bare address means /32).
pub fn parse_cidr(s: &str) -> Option<(Ip, u8)> {
    match s.split_once('/') {
        Some((ip, len)) => Some((parse_ip(ip)?, len.parse().ok().filter(|&l: &u8| l <= 32)?)),
        None => Some((parse_ip(s)?, 32)),
    }
}

/// Displays a MAC address as `aa:bb:cc:dd:ee:ff`.
pub struct MacDisplay(pub Mac);

impl core::fmt::Display for MacDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// Displays an IPv4 address as a dotted quad.
pub struct IpDisplay(pub Ip);

impl core::fmt::Display for IpDisplay {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// One end of a conversation: the addresses a frame goes from or to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: Mac,
    pub ip: Ip,
}

/// What [`parse`] understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    /// An ARP request: `sender` asks who has `target_ip`.
    ArpRequest { sender: Endpoint, target_ip: Ip },
    /// An ARP reply: `sender` has `sender.ip`.
    ArpReply { sender: Endpoint, target: Endpoint },
    /// An ICMP echo request or reply; `payload` is the data's range in the frame.
    Echo { reply: bool, from: Endpoint, to_ip: Ip, id: u16, seq: u16, payload: (usize, usize) },
    /// Any other IPv4 packet for the guest (ICMP errors, UDP, ...).
    OtherIp { from: Endpoint, to_ip: Ip, protocol: u8 },
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

fn ethernet(buf: &mut [u8], dst: Mac, src: Mac, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    put16(buf, 12, ethertype);
}

/// Writes an ARP request or reply; returns the frame's length (padded to
/// the Ethernet minimum), or 0 if `buf` is shorter than that.
fn arp(buf: &mut [u8], op: u16, from: Endpoint, to: Endpoint, eth_dst: Mac) -> usize {
    if buf.len() < ETH_MIN {
        return 0;
    }
    buf[..ETH_MIN].fill(0);
    ethernet(buf, eth_dst, from.mac, ETHERTYPE_ARP);
    let a = &mut buf[ETH_HEADER..];
    a[0..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 0]);
    put16(a, 6, op);
    a[8..14].copy_from_slice(&from.mac);
    a[14..18].copy_from_slice(&from.ip);
    a[18..24].copy_from_slice(&to.mac);
    a[24..28].copy_from_slice(&to.ip);
    ETH_MIN
}

/// An ARP request from `me` for `target`'s MAC address, broadcast.
pub fn arp_request(buf: &mut [u8], me: Endpoint, target: Ip) -> usize {
    arp(buf, ARP_REQUEST, me, Endpoint { mac: [0; 6], ip: target }, BROADCAST)
}

/// An ARP reply telling `to` that `me.ip` is at `me.mac`.
pub fn arp_reply(buf: &mut [u8], me: Endpoint, to: Endpoint) -> usize {
    arp(buf, ARP_REPLY, me, to, to.mac)
}

/// Writes Ethernet and IPv4 headers for a payload of `payload_len` bytes;
/// returns the payload's offset, or `None` if it does not fit in `buf`.
fn ipv4(
    buf: &mut [u8],
    from: Endpoint,
    to: Endpoint,
    protocol: u8,
    payload_len: usize,
) -> Option<usize> {
    let total = IP_HEADER + payload_len;
    if ETH_HEADER + total > buf.len() || total > 0xffff {
        return None;
    }
    ethernet(buf, to.mac, from.mac, ETHERTYPE_IPV4);
    let ip = &mut buf[ETH_HEADER..ETH_HEADER + IP_HEADER];
    ip.copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    put16(ip, 2, total as u16);
    ip[12..16].copy_from_slice(&from.ip);
    ip[16..20].copy_from_slice(&to.ip);
    let sum = checksum(ip, 0);
    put16(ip, 10, sum);
    Some(ETH_HEADER + IP_HEADER)
}

/// An ICMP echo request (or reply) with `payload`; returns the frame's
/// length, or 0 if it does not fit in `buf`.
pub fn echo(
    buf: &mut [u8],
    reply: bool,
    from: Endpoint,
    to: Endpoint,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> usize {
    let Some(at) = ipv4(buf, from, to, PROTO_ICMP, 8 + payload.len()) else {
        return 0;
    };
    let icmp = &mut buf[at..at + 8 + payload.len()];
    icmp[0] = if reply { ICMP_ECHO_REPLY } else { ICMP_ECHO_REQUEST };
    icmp[1..4].fill(0);
    put16(icmp, 4, id);
    put16(icmp, 6, seq);
    icmp[8..].copy_from_slice(payload);
    let sum = checksum(icmp, 0);
    put16(icmp, 2, sum);
    (at + icmp.len()).max(ETH_MIN.min(buf.len()))
}

/// A UDP datagram whose payload (`payload_len` bytes, already in place at
/// offset [`UDP_PAYLOAD`]) is left as is; returns the frame's length, or 0
/// if it does not fit in `buf`.
pub fn udp(
    buf: &mut [u8],
    from: Endpoint,
    to: Endpoint,
    ports: (u16, u16),
    payload_len: usize,
) -> usize {
    let Some(at) = ipv4(buf, from, to, PROTO_UDP, 8 + payload_len) else {
        return 0;
    };
    let len = 8 + payload_len;
    let u = &mut buf[at..at + len];
    put16(u, 0, ports.0);
    put16(u, 2, ports.1);
    put16(u, 4, len as u16);
    put16(u, 6, 0);
    // The pseudo-header: source, destination, protocol, UDP length.
    let pseudo = pseudo_sum(from.ip, to.ip, PROTO_UDP, len as u16);
    let sum = match checksum(u, pseudo) {
        0 => 0xffff, // 0 means "no checksum"
        s => s,
    };
    put16(u, 6, sum);
    (at + len).max(ETH_MIN.min(buf.len()))
}

/// Where a UDP datagram's payload starts in a frame built by [`udp`].
pub const UDP_PAYLOAD: usize = ETH_HEADER + IP_HEADER + 8;

fn pseudo_sum(src: Ip, dst: Ip, protocol: u8, len: u16) -> u32 {
    let w = |b: [u8; 2]| u32::from(u16::from_be_bytes(b));
    w([src[0], src[1]])
        + w([src[2], src[3]])
        + w([dst[0], dst[1]])
        + w([dst[2], dst[3]])
        + u32::from(protocol)
        + u32::from(len)
}

/// Parses a received frame (see the module docs).
pub fn parse(frame: &[u8]) -> Option<Packet> {
    let src_mac: Mac = frame.get(6..12)?.try_into().ok()?;
    match get16(frame, 12)? {
        ETHERTYPE_ARP => parse_arp(frame.get(ETH_HEADER..)?),
        ETHERTYPE_IPV4 => parse_ipv4(frame, src_mac),
        _ => None,
    }
}

fn parse_arp(a: &[u8]) -> Option<Packet> {
    if a.get(0..6)? != [0, 1, 0x08, 0x00, 6, 4] {
        return None;
    }
    let sender =
        Endpoint { mac: a.get(8..14)?.try_into().ok()?, ip: a.get(14..18)?.try_into().ok()? };
    let target =
        Endpoint { mac: a.get(18..24)?.try_into().ok()?, ip: a.get(24..28)?.try_into().ok()? };
    match get16(a, 6)? {
        ARP_REQUEST => Some(Packet::ArpRequest { sender, target_ip: target.ip }),
        ARP_REPLY => Some(Packet::ArpReply { sender, target }),
        _ => None,
    }
}

fn parse_ipv4(frame: &[u8], src_mac: Mac) -> Option<Packet> {
    let ip = frame.get(ETH_HEADER..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    let total = usize::from(get16(ip, 2)?);
    if ip[0] >> 4 != 4 || ihl < IP_HEADER || total < ihl || total > ip.len() {
        return None;
    }
    if checksum(ip.get(..ihl)?, 0) != 0 || get16(ip, 6)? & 0x3fff != 0 {
        return None; // corrupt, or a fragment
    }
    let from = Endpoint { mac: src_mac, ip: ip.get(12..16)?.try_into().ok()? };
    let to_ip: Ip = ip.get(16..20)?.try_into().ok()?;
    let protocol = ip[9];
    let body = ip.get(ihl..total)?;
    if protocol == PROTO_ICMP && body.len() >= 8 && (body[0] == 0 || body[0] == 8) && body[1] == 0 {
        if checksum(body, 0) != 0 {
            return None;
        }
        let start = ETH_HEADER + ihl + 8;
        return Some(Packet::Echo {
            reply: body[0] == ICMP_ECHO_REPLY,
            from,
            to_ip,
            id: get16(body, 4)?,
            seq: get16(body, 6)?,
            payload: (start, start + body.len() - 8),
        });
    }
    Some(Packet::OtherIp { from, to_ip, protocol })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Endpoint = Endpoint { mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56], ip: [10, 0, 2, 15] };
    const PEER: Endpoint = Endpoint { mac: [2, 0, 0, 0, 0, 1], ip: [10, 0, 2, 1] };

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data, 0), !0xddf2);
        // An odd length pads with a zero byte; a buffer that holds its own
        // checksum sums to zero.
        assert_eq!(checksum(&[0xab], 0), !0xab00);
        let mut with = data.to_vec();
        with.extend_from_slice(&checksum(&data, 0).to_be_bytes());
        assert_eq!(checksum(&with, 0), 0);
    }

    #[test]
    fn addresses_parse_and_print() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(ME.mac));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("5:54:00:12:34:56"), None);
        assert_eq!(parse_cidr("10.0.2.15/24"), Some((ME.ip, 24)));
        assert_eq!(parse_cidr("10.0.2.15"), Some((ME.ip, 32)));
        assert_eq!(parse_cidr("10.0.2.15/33"), None);
        assert_eq!(parse_ip("10.0.2.256"), None);
        assert_eq!(MacDisplay(ME.mac).to_string(), "52:54:00:12:34:56");
        assert_eq!(IpDisplay(ME.ip).to_string(), "10.0.2.15");
    }

    #[test]
    fn arp_round_trips() {
        let mut buf = [0u8; 128];
        let n = arp_request(&mut buf, ME, PEER.ip);
        assert_eq!(n, ETH_MIN);
        assert_eq!(&buf[0..6], &BROADCAST);
        assert_eq!(parse(&buf[..n]), Some(Packet::ArpRequest { sender: ME, target_ip: PEER.ip }));
        let n = arp_reply(&mut buf, PEER, ME);
        assert_eq!(&buf[0..6], &ME.mac);
        assert_eq!(parse(&buf[..n]), Some(Packet::ArpReply { sender: PEER, target: ME }));
        assert_eq!(arp_request(&mut buf[..59], ME, PEER.ip), 0);
    }

    #[test]
    fn echo_round_trips_and_checks_checksums() {
        let mut buf = [0u8; 256];
        let payload = [7u8; 56];
        let n = echo(&mut buf, false, ME, PEER, 0x1234, 9, &payload);
        assert_eq!(n, 14 + 20 + 8 + 56);
        let p = parse(&buf[..n]).unwrap();
        let Packet::Echo { reply: false, from, to_ip, id: 0x1234, seq: 9, payload: (s, e) } = p
        else {
            panic!("{p:?}");
        };
        assert_eq!((from, to_ip), (ME, PEER.ip));
        assert_eq!(&buf[s..e], &payload);
        // A flipped bit in the ICMP data or the IP header is refused.
        buf[60] ^= 1;
        assert_eq!(parse(&buf[..n]), None);
        buf[60] ^= 1;
        buf[22] ^= 1; // TTL
        assert_eq!(parse(&buf[..n]), None);
        // Short echo frames are padded to the Ethernet minimum.
        assert_eq!(echo(&mut buf, true, ME, PEER, 1, 1, &[]), ETH_MIN);
        assert!(matches!(parse(&buf[..ETH_MIN]), Some(Packet::Echo { reply: true, .. })));
        assert_eq!(echo(&mut buf[..40], true, ME, PEER, 1, 1, &[]), 0);
    }

    #[test]
    fn udp_checksum_includes_the_pseudo_header() {
        let mut buf = [0u8; 1514];
        buf[UDP_PAYLOAD..UDP_PAYLOAD + 5].copy_from_slice(b"hello");
        let n = udp(&mut buf, ME, PEER, (4000, 9), 5);
        assert_eq!(n, ETH_MIN);
        let udp_part = &buf[34..34 + 13];
        assert_eq!(checksum(udp_part, pseudo_sum(ME.ip, PEER.ip, 17, 13)), 0);
        assert_eq!(
            parse(&buf[..n]),
            Some(Packet::OtherIp { from: ME, to_ip: PEER.ip, protocol: 17 })
        );
        assert_eq!(udp(&mut buf, ME, PEER, (1, 9), 1500), 0);
    }

    #[test]
    fn malformed_frames_are_refused() {
        let mut buf = [0u8; 128];
        let n = echo(&mut buf, false, ME, PEER, 1, 2, &[1, 2, 3]);
        assert_eq!(n, ETH_MIN); // padded: the real packet ends at 45
        for cut in 0..45 {
            // Any truncation inside the headers or data: refused or not an echo.
            assert!(!matches!(parse(&buf[..cut]), Some(Packet::Echo { .. })), "cut {cut}");
        }
        let mut bad_len = buf;
        bad_len[16..18].copy_from_slice(&500u16.to_be_bytes()); // total length too long
        assert_eq!(parse(&bad_len[..n]), None);
        let mut bad_ihl = buf;
        bad_ihl[14] = 0x44;
        assert_eq!(parse(&bad_ihl[..n]), None);
        assert_eq!(parse(&[0u8; 3]), None);
    }
}
