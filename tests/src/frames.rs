//! Frame builders with correct checksums, and checksum verification that
//! does not share code with the datapath.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// RFC 1071 one's-complement sum, folded and inverted.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word =
            if chunk.len() == 2 { u16::from_be_bytes([chunk[0], chunk[1]]) } else { u16::from_be_bytes([chunk[0], 0]) };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (with `options`, a multiple of 4 bytes) around `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut h = vec![0x40 | ihl as u8, 0, (total >> 8) as u8, total as u8, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// The TCP/UDP checksum of `segment` with its IPv4 pseudo-header.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    checksum(&pseudo)
}

pub fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    let c = l4_checksum(src, dst, IPPROTO_UDP, &s);
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

/// A TCP segment with `flags` (SYN = 0x02, ACK = 0x10, ...).
pub fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&1u32.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    let c = l4_checksum(src, dst, IPPROTO_TCP, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

pub fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP error message (`kind` 3 unreachable, 11 time exceeded) quoting
/// `quoted` (an IP header and the start of its payload). `mtu` fills the
/// next-hop MTU field of "fragmentation needed".
pub fn icmp_error(kind: u8, code: u8, mtu: u16, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(quoted);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Sets the identification and fragment fields of an IPv4 packet (no
/// Ethernet header) and fixes its header checksum: `more` is the MF flag,
/// `offset` counts 8-byte units.
pub fn set_fragment(packet: &mut [u8], id: u16, more: bool, offset: u16) {
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (if more { 0x2000 } else { 0 }) | offset;
    packet[6..8].copy_from_slice(&flags.to_be_bytes());
    let ihl = (packet[0] & 0x0f) as usize * 4;
    packet[10] = 0;
    packet[11] = 0;
    let c = checksum(&packet[..ihl]);
    packet[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Sets the TTL of an IPv4 packet (no Ethernet header) and recomputes its
/// header checksum from scratch.
pub fn set_ttl(packet: &mut [u8], ttl: u8) {
    packet[8] = ttl;
    let ihl = (packet[0] & 0x0f) as usize * 4;
    packet[10] = 0;
    packet[11] = 0;
    let c = checksum(&packet[..ihl]);
    packet[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Splits an IPv4 packet (no options) into two fragments of datagram `id`,
/// the first carrying `first_len` bytes of the payload (a multiple of 8).
pub fn split_ipv4(packet: &[u8], id: u16, first_len: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_len % 8, 0);
    let (header, payload) = packet.split_at(20);
    let piece = |data: &[u8], more: bool, offset: usize| {
        let mut p = header.to_vec();
        p.extend_from_slice(data);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        set_fragment(&mut p, id, more, (offset / 8) as u16);
        p
    };
    (piece(&payload[..first_len], true, 0), piece(&payload[first_len..], false, first_len))
}

pub fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa);
    a
}

/// Verifies the IPv4 header checksum and the TCP/UDP/ICMP checksum of an
/// Ethernet frame (a UDP checksum of 0 means none, RFC 768; a fragment's L4
/// checksum is not verified, it covers the whole datagram). Returns a
/// description of the first mismatch, or of what makes the frame
/// unverifiable (headers or datagram cut short).
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.len() < 34 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IPV4 {
        return Err("not an IPv4 frame".into());
    }
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 || ihl > ip.len() {
        return Err(format!("IPv4 header length {ihl} does not fit the frame"));
    }
    if checksum(&ip[..ihl]) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total < ihl || total > ip.len() {
        return Err(format!("IPv4 total length {total} does not fit the frame"));
    }
    // A fragment carries part of a datagram: its L4 checksum covers the
    // whole, so only the IP header checksum can be verified.
    let fragment = ip[6] & 0x20 != 0 || u16::from_be_bytes([ip[6] & 0x1f, ip[7]]) != 0;
    if fragment {
        return Ok(());
    }
    let l4 = &ip[ihl..total];
    let src: [u8; 4] = ip[12..16].try_into().unwrap_or_default();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap_or_default();
    let ok = match ip[9] {
        IPPROTO_UDP if l4.len() >= 8 && l4[6..8] == [0, 0] => true,
        IPPROTO_TCP | IPPROTO_UDP => l4_checksum(src, dst, ip[9], l4) == 0,
        IPPROTO_ICMP => checksum(l4) == 0,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("bad L4 checksum (protocol {})", ip[9]))
    }
}

// IPv6. No header checksum; the TCP, UDP and ICMPv6 checksums cover a
// pseudo-header of both addresses, the upper-layer length and the next
// header (RFC 8200 section 8.1).

pub const IPPROTO_ICMPV6: u8 = 58;

/// An IPv6 header (hop limit 64) around `payload`, whose first header is
/// `next`.
/// The EUI-64 link-local address (RFC 4291 appendix A) the kernel gives
/// an interface with `mac`: fe80::/64, the MAC split by ff:fe, the
/// universal/local bit flipped.
pub fn link_local(mac: [u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfe, 0x80]);
    a[8..11].copy_from_slice(&mac[..3]);
    a[8] ^= 0x02;
    a[11..13].copy_from_slice(&[0xff, 0xfe]);
    a[13..].copy_from_slice(&mac[3..]);
    a
}

pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    ipv6_hop_limit(src, dst, next, 64, payload)
}

pub fn ipv6_hop_limit(src: [u8; 16], dst: [u8; 16], next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, hop_limit]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// An extension header (hop-by-hop, destination options, routing: 8-byte
/// units) of 8 bytes before `rest`, whose own header is `next`. For a
/// routing header, `segments_left` is its fourth byte.
pub fn ipv6_ext(next: u8, segments_left: u8, rest: &[u8]) -> Vec<u8> {
    let mut e = vec![next, 0, 0, segments_left, 0, 0, 0, 0];
    e.extend_from_slice(rest);
    e
}

/// A fragment header before `rest`: `offset` in 8-byte units, `more` the M
/// flag.
pub fn ipv6_fragment(next: u8, offset: u16, more: bool, id: u32, rest: &[u8]) -> Vec<u8> {
    let word = (offset << 3) | more as u16;
    let mut e = vec![next, 0];
    e.extend_from_slice(&word.to_be_bytes());
    e.extend_from_slice(&id.to_be_bytes());
    e.extend_from_slice(rest);
    e
}

/// The checksum of an upper-layer `segment` with its IPv6 pseudo-header.
pub fn l4_checksum6(src: [u8; 16], dst: [u8; 16], next: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + segment.len());
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    pseudo.extend_from_slice(segment);
    checksum(&pseudo)
}

/// [`tcp`] over IPv6.
pub fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = tcp([0; 4], [0; 4], sport, dport, flags, payload);
    s[16..18].fill(0);
    let c = l4_checksum6(src, dst, IPPROTO_TCP, &s);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// [`udp`] over IPv6.
pub fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = udp([0; 4], [0; 4], sport, dport, payload);
    s[6..8].fill(0);
    let c = l4_checksum6(src, dst, IPPROTO_UDP, &s);
    s[6..8].copy_from_slice(&c.to_be_bytes());
    s
}

/// An ICMPv6 message: type, code, then `body` (for echo: identifier,
/// sequence, data; for neighbour discovery: reserved word and target).
pub fn icmp6(src: [u8; 16], dst: [u8; 16], kind: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0];
    m.extend_from_slice(body);
    let c = l4_checksum6(src, dst, IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMPv6 echo request (128) or reply (129) body.
pub fn echo6_body(id: u16, seq: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(b"ping");
    b
}

/// A neighbour solicitation's or advertisement's body: flags word, target.
pub fn nd_body(target: [u8; 16]) -> Vec<u8> {
    let mut b = vec![0; 4];
    b.extend_from_slice(&target);
    b
}

/// Checks the upper-layer checksum of an IPv6 frame without extension
/// headers (Ethernet header included), independently of the datapath.
pub fn verify_checksum6(frame: &[u8]) -> Result<(), String> {
    let ip = &frame[14..];
    let (src, dst) = (ip[8..24].try_into().unwrap(), ip[24..40].try_into().unwrap());
    let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let segment = &ip[40..40 + len];
    match l4_checksum6(src, dst, ip[6], segment) {
        0 => Ok(()),
        c => Err(format!("upper-layer checksum off by {c:#06x}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_produce_valid_checksums() {
        let a = [10, 0, 0, 2];
        let b = [10, 0, 0, 3];
        for l4 in [
            ipv4(a, b, IPPROTO_UDP, &[], &udp(a, b, 1234, 80, b"hello")),
            ipv4(a, b, IPPROTO_TCP, &[1, 1, 1, 0], &tcp(a, b, 1234, 80, 0x02, b"")),
            ipv4(a, b, IPPROTO_ICMP, &[], &icmp_echo(7, 1, b"ping!")),
        ] {
            let f = eth([1; 6], [2; 6], ETH_P_IPV4, &l4);
            verify_checksums(&f).unwrap();
            let mut bad = f.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
            assert!(verify_checksums(&bad).is_err());
        }
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2, checksum 220d.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
    }
}
